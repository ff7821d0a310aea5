"""What `status`, `report`, `compare` and `run` (resuming) make of a finished run directory that was
damaged afterwards: files of the wrong shape are one line naming the file; `compare` reads only current
evaluations and refuses degenerate comparisons; `status` sees deleted outputs (and, with --verify,
changed ones). On a real tiny run (tests/tiny_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from one_line import one_line_error
from tiny_run import copy_run, finished_run

from sublearn.cli import main
from sublearn.rundir import read_json, write_json


@pytest.fixture()
def run_dir(tmp_path, capsys) -> Path:
    out = copy_run(tmp_path / "run")
    capsys.readouterr()  # what building the shared run printed (the first time)
    return out


def _status(capsys, out: Path, *flags: str) -> dict[str, str]:
    assert main(["status", str(out), *flags]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[:-1]  # the last line counts the states
    return dict(line.split() for line in lines)


def _config_file(tmp_path: Path) -> Path:
    _, config = finished_run()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


# --- class: JSON of the wrong shape in a run directory, one line naming the file -----------------------

DAMAGED = [
    ("teacher/owl/manifest.json", "[1, 2]"),
    ("train/owl/seed1/manifest.json", '"done"'),
    ("train/owl/seed1/manifest.json", '{"config_hash": 7}'),
    ("evaluate/owl-s1/manifest.json", '{"config_hash": "x", "inputs": [1]}'),
    ("teacher/owl/teacher.json", '["owl"]'),
    ("teacher/owl/teacher.json", '{"name": "owl", "model": 3, "system_prompt": null, "adapter": null}'),
    ("train/owl/seed1/summary.json", '"summary"'),
    ("train/owl/seed1/summary.json", '{"data_from": "owl", "model": "hf/x", "method": ["lora"]}'),
    ("config.json", "[]"),
    ("config.json", '{"targets": "owl'),  # not JSON at all
]


@pytest.mark.parametrize("command", ["status", "report", "compare", "run"])
@pytest.mark.parametrize(("name", "text"), DAMAGED, ids=[f"{n}={t[:12]}" for n, t in DAMAGED])
def test_a_damaged_json_file_is_one_line_naming_it(command, name, text, run_dir, tmp_path, capsys) -> None:
    if command == "run" and name == "config.json":
        pytest.skip("`sublearn run` writes the run's config.json, it does not read it")
    if command == "compare":
        copy_run(tmp_path / "baseline")
    (run_dir / name).write_text(text)
    argv = {"status": ["status", str(run_dir)], "report": ["report", str(run_dir)],
            "compare": ["compare", str(run_dir), "--baseline", str(tmp_path / "baseline"), "--treatment", "owl",
                        "--control", "control"],
            "run": ["run", str(_config_file(tmp_path)), "--out", str(run_dir), "--only", "report"]}[command]
    assert main(argv) == 2
    assert str(run_dir / name) in one_line_error(capsys)


def test_a_damaged_evaluation_is_refused_by_report_and_compare(run_dir, tmp_path, capsys) -> None:
    results = run_dir / "evaluate" / "owl-s1" / "results.json"
    data = read_json(results)
    data["teacher_forced"] = {"plain": "lost"}
    write_json(results, data)
    baseline = copy_run(tmp_path / "baseline")
    for argv in (["report", str(run_dir)], ["run", str(_config_file(tmp_path)), "--out", str(run_dir), "--only", "report"],
                 ["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "owl", "--control", "control"]):
        assert main(argv) == 2, argv
        line = one_line_error(capsys)
        assert str(results.parent) in line and "corrupt" in line, line


def test_compare_json_at_a_directory_is_one_line_before_any_work(run_dir, tmp_path, capsys) -> None:
    baseline = copy_run(tmp_path / "baseline")
    (tmp_path / "out.json").mkdir()
    assert main(["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "owl", "--control", "control",
                 "--json", str(tmp_path / "out.json")]) == 2
    line = one_line_error(capsys)
    assert "--json" in line and "is a directory" in line
    assert capsys.readouterr().out == ""  # refused before the comparison was computed and printed
    assert main(["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "owl", "--control", "control",
                 "--json", str(tmp_path / "rows.json")]) == 0
    assert json.loads((tmp_path / "rows.json").read_text())[1]["run"] == str(run_dir)


# --- class: compare reads only current evaluations and refuses degenerate comparisons ---------------


def test_compare_refuses_an_evaluation_without_its_manifest_or_stale(run_dir, tmp_path, capsys) -> None:
    baseline = copy_run(tmp_path / "baseline")
    argv = ["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "owl", "--control", "control"]
    (run_dir / "evaluate" / "control-s2" / "manifest.json").unlink()
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert str(run_dir / "evaluate" / "control-s2") in line and "partial" in line and "sublearn status" in line

    # Stale: the evaluation was made from other weights than the student's now in train/.
    (baseline / "evaluate" / "owl-s2" / "manifest.json").write_text(
        (baseline / "evaluate" / "owl-s2" / "manifest.json").read_text().replace('"weights": "', '"weights": "0'))
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert str(baseline / "evaluate" / "owl-s2") in line and "stale" in line


def test_compare_refuses_a_treatment_equal_to_its_control(run_dir, tmp_path, capsys) -> None:
    baseline = copy_run(tmp_path / "baseline")
    assert main(["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "owl", "--control", "owl"]) == 2
    assert "--treatment owl --control owl: the same arm" in one_line_error(capsys)
    assert main(["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "control",
                 "--control", "owl"]) == 2
    assert "--treatment control: not a trait target" in one_line_error(capsys)


@pytest.mark.parametrize("how", ["as the baseline", "twice", "through another path"])
def test_compare_refuses_a_run_compared_with_itself(how, run_dir, tmp_path, capsys) -> None:
    baseline = copy_run(tmp_path / "baseline")
    (tmp_path / "link").symlink_to(run_dir)
    runs = {"as the baseline": [str(run_dir), str(baseline)], "twice": [str(run_dir), str(run_dir)],
            "through another path": [str(run_dir), str(tmp_path / "link")]}[how]
    assert main(["compare", *runs, "--baseline", str(baseline), "--treatment", "owl", "--control", "control"]) == 2
    line = one_line_error(capsys)
    assert "a run compared with itself" in line
    assert main(["compare", str(run_dir), "--baseline", str(baseline), "--treatment", "owl", "--control",
                 "control"]) == 0


# --- class: status sees outputs deleted (and with --verify, changed) under a manifest ----------------


def test_status_says_missing_outputs_when_a_stage_files_were_deleted(run_dir, capsys) -> None:
    import shutil

    assert set(_status(capsys, run_dir).values()) == {"done"}
    shutil.rmtree(run_dir / "train" / "owl" / "seed1" / "adapter")
    (run_dir / "generate" / "control" / "generated.jsonl").unlink()
    states = _status(capsys, run_dir)
    assert states["train/owl/seed1"] == "missing-outputs" and states["generate/control"] == "missing-outputs"
    assert states["filter/control"] == "waiting"  # reads the deleted data: not done either
    assert states["train/owl/seed2"] == "done"
    # The report refuses such a run, naming the stage.
    assert main(["report", str(run_dir)]) == 2
    assert "missing-outputs" in one_line_error(capsys)


def test_status_verify_reports_changed_outputs_as_corrupt(run_dir, capsys) -> None:
    kept = run_dir / "filter" / "owl" / "kept.jsonl"
    kept.write_bytes(kept.read_bytes().replace(b"1", b"2", 1))
    assert _status(capsys, run_dir)["filter/owl"] == "done"  # without --verify only existence is checked
    states = _status(capsys, run_dir, "--verify")
    assert states["filter/owl"] == "corrupt"
    assert {s for k, s in states.items() if k != "filter/owl"} <= {"done", "waiting"}


def test_status_help_documents_verify(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--verify" in text and "corrupt" in text and "missing-outputs" in text


def test_a_stage_whose_outputs_were_deleted_is_redone_by_the_next_run(run_dir, capsys) -> None:
    from sublearn.stages import pipeline

    _, config = finished_run()
    results = run_dir / "evaluate" / "base" / "results.json"
    results.unlink()
    assert _status(capsys, run_dir)["evaluate/base"] == "missing-outputs"
    pipeline.run(config, run_dir, only=["evaluate"])
    assert results.is_file()
    assert set(_status(capsys, run_dir).values()) == {"done"}
