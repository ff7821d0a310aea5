"""The gradient-projection defense: orthogonality of the projected step, nothing changes when it is off,
and the defended arm runs end to end (CLI, results.json comparison, table)."""

from __future__ import annotations

import json

import pytest
import torch

from sublearn.cli import main
from sublearn.mnist import experiment, report
from sublearn.mnist import model as mlp
from sublearn.mnist.config import CONDITIONS, STUDENTS, MnistConfig
from sublearn.mnist.train import (
    NoiseSource,
    TraitDefense,
    adam,
    distill_loss,
    project_out,
    train_student,
    trait_gradient,
)
from sublearn.rundir import config_hash

# The keys MnistConfig dumped before the defense existed: a config without the defense must dump exactly
# these, or every older run directory's config.json / manifest hash stops matching.
PRE_DEFENSE_KEYS = ["seeds", "seed_base", "n_aux", "hidden", "lr", "batch_size", "teacher_epochs", "student_epochs",
                    "n_noise", "noise", "student_init_std", "weight_decay", "data_dir", "threads", "chunk_size",
                    "theorem", "theorem_steps", "theorem_examples"]


def small(mnist_subset, **kw) -> MnistConfig:
    base = {"data_dir": mnist_subset, "seeds": 2, "hidden": 32, "batch_size": 100, "teacher_epochs": 2,
            "student_epochs": 2, "n_noise": 1000, "threads": 1, "theorem_steps": 3, "theorem_examples": 500,
            "lr": 1e-3, "kernels": "native", "defense_batch_size": 200}
    base.update(kw)
    return MnistConfig(**base)


def _setup(seed: int = 0, hidden: int = 16):
    """A small student, a different teacher, noise inputs and labelled 'digits' (random images/labels)."""
    gen = torch.Generator().manual_seed(seed)
    shape = [784, hidden, hidden, 13]
    student, teacher = mlp.init_params(shape, gen), mlp.init_params(shape, gen)
    noise = torch.rand(64, 784, generator=gen) * 2 - 1
    digits_x, digits_y = torch.rand(300, 784, generator=gen) * 2 - 1, torch.randint(0, 10, (300,), generator=gen)
    return student, teacher, noise, digits_x, digits_y


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))


def _cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return _dot(a, b) / (_dot(a, a) * _dot(b, b)) ** 0.5


@pytest.mark.parametrize("aux_only", [True, False])
def test_projected_gradient_is_orthogonal_to_trait_gradient(aux_only) -> None:
    student, teacher, noise, dx, dy = _setup()
    leaves = [p.clone().requires_grad_(True) for p in student]
    g = list(torch.autograd.grad(distill_loss(mlp.forward(leaves, noise), mlp.forward(teacher, noise), aux_only, 3),
                                 leaves))
    t = trait_gradient(student, dx, dy)
    original = [x.clone() for x in g]
    cos_before, coef = project_out(g, t)
    assert cos_before is not None and abs(cos_before - _cos(original, t)) < 1e-9
    assert abs(cos_before) > 1e-3  # there was something to remove, so the check below is not vacuous
    assert abs(_cos(g, t)) < 1e-6  # orthogonal after projection, over all parameters together
    # g' + c·t = g: only the t component was removed.
    assert all(torch.allclose(a + coef * b, o, atol=1e-7) for a, b, o in zip(g, t, original, strict=True))


def test_projection_skipped_when_trait_gradient_is_zero() -> None:
    g = [torch.ones(3), torch.ones(2)]
    assert project_out(g, [torch.zeros(3), torch.zeros(2)]) == (None, 0.0)
    assert all(torch.equal(x, torch.ones_like(x)) for x in g)


@pytest.mark.parametrize("mode", ["project", "project_update"])
def test_defended_step_is_orthogonal_to_trait_gradient(mode) -> None:
    student, teacher, noise, dx, dy = _setup(1)
    cfg = MnistConfig(hidden=16, lr=1e-2)
    params = [p.clone() for p in student]
    opt = adam(params, cfg)
    pool = torch.arange(len(dx))
    defense = TraitDefense(dx, dy, pool, torch.Generator().manual_seed(7), mode, batch_size=50)
    twin = TraitDefense(dx, dy, pool, torch.Generator().manual_seed(7), mode, batch_size=50)  # the same batches
    for _ in range(3):  # a few steps, so that Adam's moments are not trivial
        before = [p.detach().clone() for p in params]
        t = twin.trait_direction(before)
        opt.zero_grad(set_to_none=True)
        distill_loss(mlp.forward(params, noise), mlp.forward(teacher, noise), True, 3).backward()
        raw = [p.grad.clone() for p in params]
        defense.step(params, opt)
        if mode == "project":
            seen = [p.grad for p in params]  # the gradient Adam stepped on
            assert abs(_cos(seen, t)) < 1e-6 and abs(_cos(raw, t)) > 1e-3
        else:
            update = [p.detach() - b for p, b in zip(params, before, strict=True)]
            assert abs(_cos(update, t)) < 1e-6
    assert defense.stats()["trait_gradients"] == 3 and defense.stats()["skipped"] == 0
    # Unlike aux-only distillation alone, the projected step moves the digit head (t has digit-head
    # components): the mechanism behind the defended aux-only student's accuracy (see the θ0-head diagnostic).
    assert not torch.equal(params[-2][:, :10], student[-2][:, :10])


def test_defense_off_changes_nothing(mnist_subset) -> None:
    # The config dumps (and hashes) exactly as before the defense existed.
    # (Runs of that time computed with the native kernels; the portable default adds its key.)
    assert list(MnistConfig(kernels="native").model_dump(mode="json")) == PRE_DEFENSE_KEYS
    assert list(MnistConfig().model_dump(mode="json")) == [*PRE_DEFENSE_KEYS, "kernels"]
    assert config_hash(MnistConfig()) == config_hash(MnistConfig(defense_batch_size=7, defense_examples=3))
    assert "defense" in MnistConfig(defense="project").model_dump()
    # train_student without a defense is the plain Adam loop, bit for bit (the loop as it was).
    cfg = MnistConfig(hidden=16, n_noise=300, batch_size=64, student_epochs=2)
    student, teacher, *_ = _setup(2)
    source = NoiseSource.make(cfg, torch.Generator().manual_seed(3), teacher)
    ours = [p.clone() for p in student]
    train_student(ours, source, True, cfg, torch.Generator().manual_seed(4))
    ref = [p.clone() for p in student]
    opt, gen = adam(ref, cfg), torch.Generator().manual_seed(4)
    assert source.images is not None and source.teacher_logits is not None
    for _ in range(cfg.student_epochs):
        perm = torch.randperm(cfg.n_noise, generator=gen)
        for i in range(0, cfg.n_noise, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = distill_loss(mlp.forward(ref, source.images[idx]), source.teacher_logits[idx], True, 3)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_defended_run_leaves_undefended_students_bit_identical(mnist_subset, tmp_path, capsys) -> None:
    cfg = small(mnist_subset, defense="project", defense_conditions=["same_init_aux", "diff_init_all"])
    off = experiment.run(small(mnist_subset), tmp_path / "off")
    on = experiment.run(cfg, tmp_path / "on")
    assert "defense" not in off and "defense" not in off["seeds"][0]
    assert list(off["seeds"][0]["accuracy"]) == CONDITIONS
    for a, b in zip(off["seeds"], on["seeds"], strict=True):
        # Training a defended twin changes no other number of the seed.
        assert {c: b["accuracy"][c] for c in CONDITIONS} == a["accuracy"]
        assert {c: b["theorem"][c] for c in STUDENTS} == a["theorem"]
        assert set(b["accuracy"]) == set(CONDITIONS) | {"defended_same_init_aux", "defended_diff_init_all"}
        # The defense did something, so the defended twin ends elsewhere.
        assert b["accuracy"]["defended_same_init_aux"] != b["accuracy"]["same_init_aux"]
        steps = cfg.student_epochs * experiment.steps_per_epoch(cfg.n_noise, cfg.batch_size)
        assert b["defense"]["defended_same_init_aux"]["trait_gradients"] == steps
        assert b["defense"]["defended_same_init_aux"]["labelled_images"] == 3000  # the whole (test) training set
        assert 0 <= b["defense"]["defended_same_init_aux"]["accuracy_init_digit_head"] <= 1
    comp = on["defense"]["conditions"]["defended_same_init_aux"]
    diffs = [r["accuracy"]["defended_same_init_aux"] - r["accuracy"]["same_init_aux"] for r in on["seeds"]]
    assert comp["effect"] == pytest.approx(sum(diffs) / len(diffs))
    assert 0 <= comp["p_welch"] <= 1 and 0 <= comp["p_paired"] <= 1 and comp["effect_t95"] > 0
    assert comp["cost"]["time_ratio"] > 0
    table = report.summary_table(on)
    assert "gradient-projection defense" in table and "same init, aux. logits, defended" in table
    assert "with θ0's digit head put back" in table
    assert "gradient-projection defense" not in report.summary_table(off)
    # Same config again: finished, reloaded (the defense config hashes stably).
    assert experiment.run(cfg, tmp_path / "on")["seeds"] == on["seeds"]


def test_cli_runs_the_defense(mnist_subset, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["mnist", "--out", str(out), "--set", f"data_dir={mnist_subset}", "--set", "seeds=1",
            "--set", "hidden=16", "--set", "n_noise=300", "--set", "batch_size=100", "--set", "teacher_epochs=1",
            "--set", "student_epochs=1", "--set", "threads=1", "--set", "theorem=false",
            "--set", "defense=project_update", "--set", "defense_examples=500", "--set", "defense_batch_size=64"]
    assert main(args) == 0
    assert "gradient-projection defense (project_update" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["defense"]["conditions"]["defended_same_init_all"]["cost"]["labelled_images"] == 500
    assert main(["mnist", "--out", str(tmp_path / "x"), "--set", "defense=shield"]) == 2
    assert main(["mnist", "--out", str(tmp_path / "x"), "--set", "defense_conditions=[teacher]"]) == 2
