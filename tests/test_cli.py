"""CLI checks that refuse bad arguments in one line before any work: `--out` naming a file, and
`--only evaluate` / `--only report` before the students are trained."""

from __future__ import annotations

import pytest

from sublearn.cli import main
from sublearn.rundir import MANIFEST


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("targets: [owl]\ntrain:\n  seeds: [0, 1]\n")
    return path


@pytest.fixture()
def no_pipeline(monkeypatch):
    """Any call that gets past the checks into a stage is recorded instead of run."""
    import sublearn.mnist.experiment
    import sublearn.stages.pipeline

    calls: list[tuple[str, object]] = []

    def fake_run(config, out, only=None, mnist_dir=None):
        calls.append(("lm", only))
        return out / "report" / "report.html"

    def fake_mnist(config, out):
        calls.append(("mnist", out))
        raise AssertionError("MNIST must not start")

    monkeypatch.setattr(sublearn.stages.pipeline, "run", fake_run)
    monkeypatch.setattr(sublearn.mnist.experiment, "run", fake_mnist)
    return calls


@pytest.mark.parametrize("command", ["run", "train", "demo", "mnist"])
def test_out_naming_a_file_is_refused_before_any_work(command, tmp_path, config_file, capsys, no_pipeline) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    args = [command, str(config_file)] if command in ("run", "train") else [command]
    assert main([*args, "--out", str(target)]) == 2
    line = _one_line_error(capsys)
    assert f"--out {target}: is a file" in line and "expected a run directory" in line
    assert no_pipeline == [] and target.read_text() == "keep me\n"


def test_out_inside_a_file_is_refused(tmp_path, config_file, capsys, no_pipeline) -> None:
    (tmp_path / "f").write_text("")
    assert main(["run", str(config_file), "--out", str(tmp_path / "f" / "run")]) == 2
    assert f"would be created inside {tmp_path / 'f'}, which is a file" in _one_line_error(capsys)
    assert no_pipeline == []


def test_out_directory_new_or_existing_is_accepted(tmp_path, config_file, capsys, no_pipeline) -> None:
    (tmp_path / "existing").mkdir()
    assert main(["run", str(config_file), "--out", str(tmp_path / "existing")]) == 0
    assert main(["run", str(config_file), "--out", str(tmp_path / "new" / "run")]) == 0
    assert no_pipeline == [("lm", None), ("lm", None)]


@pytest.mark.parametrize("only", [["evaluate"], ["report"], ["evaluate", "report"]])
def test_only_evaluate_before_training_is_refused(only, tmp_path, config_file, capsys, no_pipeline) -> None:
    out = tmp_path / "run"
    # One of the four students (owl, control x seeds 0, 1) has finished.
    done = out / "train" / "owl" / "seed0"
    done.mkdir(parents=True)
    (done / MANIFEST).write_text("{}")
    flags = [a for stage in only for a in ("--only", stage)]
    assert main(["run", str(config_file), "--out", str(out), *flags]) == 2
    line = _one_line_error(capsys)
    assert f"--only {only[0]}: 3 of 4 students are not trained" in line
    assert str(out / "train" / "owl" / "seed1" / MANIFEST) in line and "--only train" in line
    assert no_pipeline == []


def test_only_evaluate_runs_once_every_student_is_trained(tmp_path, config_file, no_pipeline) -> None:
    out = tmp_path / "run"
    for student in ("owl", "control"):
        for seed in (0, 1):
            sdir = out / "train" / student / f"seed{seed}"
            sdir.mkdir(parents=True)
            (sdir / MANIFEST).write_text("{}")
    assert main(["run", str(config_file), "--out", str(out), "--only", "evaluate"]) == 0
    assert no_pipeline == [("lm", ["evaluate"])]


def test_only_train_and_evaluate_together_need_no_trained_students(tmp_path, config_file, no_pipeline) -> None:
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--only", "train", "--only", "evaluate"]) == 0
    assert main(["run", str(config_file), "--out", str(out), "--only", "filter"]) == 0
    assert no_pipeline == [("lm", ["train", "evaluate"]), ("lm", ["filter"])]
