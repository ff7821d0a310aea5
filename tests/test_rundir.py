"""Run-directory files: torn and corrupt JSONL, manifests, config mismatches, disk-full errors."""

from __future__ import annotations

import errno

import pytest

from sublearn.errors import SublearnError
from sublearn.rundir import (
    JsonlAppender,
    check_config_matches,
    read_json,
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


def test_output_hash_follows_content_not_timings(tmp_path) -> None:
    from sublearn.rundir import output_hash

    d = tmp_path / "adapter"
    d.mkdir()
    (d / "w.safetensors").write_bytes(b"abc")
    first = output_hash(d)
    (d / ".w.tmp").write_bytes(b"half-written")  # temp files and checkpoints are not outputs
    (d / "ckpt.pt").write_bytes(b"state")
    assert output_hash(d) == first
    (d / "w.safetensors").write_bytes(b"abd")
    assert output_hash(d) != first
    (d / "w.safetensors").write_bytes(b"abc")
    assert output_hash(d) == first  # an identical redo has the same identity


def test_stage_states_and_begin_stage(tmp_path) -> None:
    from sublearn.rundir import begin_stage, finish_stage, stage_state

    stage = tmp_path / "stage"
    assert stage_state(stage, {"a": 1}, {"up": "x"}) == "missing"
    assert begin_stage(stage, {"a": 1}, {"up": "x"}) is False
    (stage / "out.txt").write_text("partial work")
    assert stage_state(stage, {"a": 1}, {"up": "x"}) == "partial"
    # Resuming from the same key keeps what was started.
    assert begin_stage(stage, {"a": 1}, {"up": "x"}) is False and (stage / "out.txt").is_file()
    # Another setting: refused, whether started or finished; nothing deleted.
    with pytest.raises(SublearnError, match="unfinished run here used a different config"):
        begin_stage(stage, {"a": 2}, {"up": "x"})
    digest = finish_stage(stage, {"a": 1}, {"up": "x"}, [stage / "out.txt"])
    assert read_json(stage / "manifest.json")["output_hash"] == digest
    assert stage_state(stage, {"a": 1}, {"up": "x"}) == "done" and begin_stage(stage, {"a": 1}, {"up": "x"})
    assert stage_state(stage, {"a": 2}, {"up": "x"}) == "stale-config"
    with pytest.raises(SublearnError, match="finished with a different config"):
        begin_stage(stage, {"a": 2}, {"up": "x"})
    assert (stage / "out.txt").is_file()
    # Other inputs (an upstream stage produced something else): stale, and begin_stage clears it.
    assert stage_state(stage, {"a": 1}, {"up": "y"}) == "stale"
    assert begin_stage(stage, {"a": 1}, {"up": "y"}) is False
    assert not (stage / "out.txt").exists() and not (stage / "manifest.json").exists()
    # A partial stage started from other inputs is cleared too (its checkpoint would be stale).
    (stage / "ckpt.pt").write_bytes(b"old")
    assert begin_stage(stage, {"a": 1}, {"up": "z"}) is False and not (stage / "ckpt.pt").exists()


def test_lock_state_names_what_differs_and_hashes_only_the_pins(tmp_path) -> None:
    import importlib.metadata as md

    from sublearn.rundir import LOCK, lock_state

    assert lock_state().endswith("(matches)")  # this environment was installed from the lock
    numpy = md.version("numpy")
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# header\nnumpy=={numpy}\nPyYAML=={md.version('pyyaml')}\nnot-installed-pkg==1.0\n")
    same = lock_state(lock)
    assert same.endswith("(matches)")
    lock.write_text(f"# another header\nnumpy=={numpy}  # pinned\nPyYAML=={md.version('pyyaml')}\n"
                    "not-installed-pkg==1.0\n")
    assert lock_state(lock).split()[0] == same.split()[0]  # comments are not the lock
    lock.write_text("numpy==0.0.1\n")
    state = lock_state(lock)
    assert state.split()[0] != same.split()[0] and f"(differs: numpy {numpy}, lock 0.0.1)" in state
    assert lock_state(tmp_path / "none.txt").startswith("none") and LOCK.is_file()


def test_cpu_bf16_reads_the_processor_flags(monkeypatch) -> None:
    from sublearn import rundir

    monkeypatch.setattr(rundir, "cpu_flags", lambda: {"avx2", "fma"})
    assert rundir.cpu_bf16() == "emulated"
    monkeypatch.setattr(rundir, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    assert rundir.cpu_bf16() == "native (amx_bf16)"
    monkeypatch.setattr(rundir, "cpu_flags", set)
    assert rundir.cpu_bf16() == "unknown"
    assert rundir.versions()["cpu_bf16"] == "unknown"
