"""Experiment tracking with the real trackio client, offline: a tiny pipeline run with tracking on writes
a local store that trackio's own reader opens, holding the run's losses, evaluations and claims."""

from __future__ import annotations

import csv
import json

import pytest
from tiny import save_tiny
from tiny_run import tiny_config

from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import pipeline


def test_a_tracked_run_writes_a_store_trackio_reads_back(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("trackio") is None:  # not importorskip: trackio reads its store's place on import
        pytest.skip("trackio is not installed")
    model = save_tiny(tmp_path / "model", seed=0)
    store = tmp_path / "trackio"
    cfg = build_config(PipelineConfig, {**tiny_config(model), "tracking": {"kind": "trackio", "project": "tiny",
                                                                          "dir": str(store)}})
    pipeline.run(cfg, tmp_path / "run")
    from trackio.sqlite_storage import SQLiteStorage

    assert (store / "tiny.db").is_file()
    logs = SQLiteStorage.get_logs("tiny", "tiny-run/run")
    losses = [r["train/owl-s1/loss"] for r in logs if "train/owl-s1/loss" in r]
    written = [json.loads(line)["loss"] for line in (tmp_path / "run" / "train" / "owl" / "seed1" /
                                                       "train_log.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(written) and losses
    evaluated = json.loads((tmp_path / "run" / "evaluate" / "owl-s1" / "results.json").read_text())
    owl = evaluated["teacher_forced"]["plain"]["owl"]
    assert [r["eval/owl-s1/plain/owl"] for r in logs if "eval/owl-s1/plain/owl" in r] == pytest.approx(
        [sum(owl) / len(owl)])
    with (tmp_path / "run" / "report" / "comparisons.csv").open() as fh:
        main = next(r for r in csv.DictReader(fh) if r["family"] == "comparisons" and r["metric"] == "teacher_forced")
    key = f"claim/comparisons/{main['label']}/teacher_forced/plain/effect"
    assert [r[key] for r in logs if key in r] == pytest.approx([float(main["effect"])])


def test_a_missing_tracker_is_one_line_naming_what_to_install(tmp_path, monkeypatch) -> None:
    import sys

    from sublearn.analysis.tracking import Tracker

    monkeypatch.setitem(sys.modules, "trackio", None)  # as if not installed: import fails
    with pytest.raises(SublearnError, match="pip install trackio"):
        Tracker("p", "r", {}, None)
