"""Run-directory files: torn and corrupt JSONL, manifests, config mismatches, disk-full errors."""

from __future__ import annotations

import errno

import pytest

from sublearn.errors import SublearnError
from sublearn.rundir import (
    JsonlAppender,
    check_config_matches,
    read_jsonl,
    stage_done,
    write_json,
    write_manifest,
)


def test_torn_last_line_is_dropped_only_when_repairing(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    with pytest.raises(SublearnError, match="incomplete"):
        read_jsonl(path)
    assert read_jsonl(path, repair_tail=True) == [{"a": 1}, {"a": 2}]
    with JsonlAppender(path) as fh:
        fh.write({"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_corrupt_middle_line_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(SublearnError, match=r"x.jsonl:2: corrupt JSONL line"):
        read_jsonl(path, repair_tail=True)
    assert path.read_text().count("\n") == 3  # nothing was dropped


def test_manifest_and_config_checks(tmp_path) -> None:
    assert not stage_done(tmp_path)
    check_config_matches(tmp_path, {"a": 1})
    check_config_matches(tmp_path, {"a": 1})
    with pytest.raises(SublearnError, match="different config"):
        check_config_matches(tmp_path, {"a": 2})
    write_manifest(tmp_path, {"a": 1})
    assert stage_done(tmp_path, {"a": 1})
    with pytest.raises(SublearnError, match="different config"):
        stage_done(tmp_path, {"a": 2})


def test_disk_full_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    import os

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SublearnError, match="disk full"):
        write_json(tmp_path / "a.json", {"x": 1})
    assert not list(tmp_path.glob(".a.json*"))  # no temp file left behind
