"""The Python API (`sublearn.run`, `sublearn.load_run`, ...) on a tiny model: the same pipeline, checks
and tables as the CLI, returned as objects and DataFrames."""

from __future__ import annotations

import json

import pytest
from tiny import save_tiny
from tiny_run import tiny_config

import sublearn
from sublearn.errors import SublearnError


def test_run_returns_a_run_whose_tables_load_and_reruns_resume(tmp_path) -> None:
    model = save_tiny(tmp_path / "model", seed=0)
    run = sublearn.run(tiny_config(model), tmp_path / "run", overrides={"train.seeds": [1, 2], "evaluate.n_questions": 2})
    assert isinstance(run, sublearn.Run) and run.done and run.report_path.is_file()
    assert run.config.train.seeds == [1, 2]
    values, comparisons = run.values(), run.comparisons()
    assert {"owl-s1", "owl-s2", "control-s1", "control-s2"} <= set(values["model"])
    main = comparisons.query("family == 'comparisons' and treatment == 'owl' and metric == 'teacher_forced'")
    stated = run.results()["comparisons"][0]["teacher_forced"]["plain"]["effect"]
    assert main["effect"].iloc[0] == pytest.approx(stated)
    stamp = (run.dir / "train" / "owl" / "seed1" / "manifest.json").stat().st_mtime_ns
    again = sublearn.run(tiny_config(model), tmp_path / "run", overrides={"train.seeds": [1, 2],
                                                                           "evaluate.n_questions": 2})
    assert (again.dir / "train" / "owl" / "seed1" / "manifest.json").stat().st_mtime_ns == stamp  # resumed, not redone
    loaded = sublearn.load_run(tmp_path / "run")
    assert loaded.status() == run.status() and loaded.values().equals(values)
    audit = sublearn.audit(run.dir / "filter" / "owl" / "kept.jsonl", run.dir / "teacher" / "owl", f"hf/{model}",
                           tmp_path / "audit", probe_seeds=[], control=run.dir / "filter" / "control" / "kept.jsonl")
    assert audit.report_path.is_file() and "likelihood_ratio" in audit.results()


def test_bad_input_is_one_line_before_any_work(tmp_path) -> None:
    model = save_tiny(tmp_path / "model", seed=0)
    with pytest.raises(SublearnError, match="train.steps") as exc:
        sublearn.run(tiny_config(model), tmp_path / "run", overrides={"train.steps": "many"})
    assert "\n" not in str(exc.value) and not (tmp_path / "run").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SublearnError, match="did not write"):
        sublearn.run(tiny_config(model), foreign)
    with pytest.raises(SublearnError, match="config.json: not found"):
        sublearn.load_run(foreign)
    with pytest.raises(SublearnError, match="nope"):
        sublearn.run("nope", tmp_path / "r2")
    with pytest.raises(AttributeError):
        sublearn.not_an_api_name  # noqa: B018
    assert json.loads(json.dumps(sublearn.load_config("demo", {"train.steps": 12}).train.steps)) == 12
