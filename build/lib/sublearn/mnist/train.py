"""Training loops of the MNIST experiment: one model each, single-threaded, from explicit generators.

    teacher = [p.clone() for p in init]
    train_teacher(teacher, train_x, train_y, config, batch_gen)
    student = [p.clone() for p in init]
    train_student(student, NoiseSource.make(config, seed_gen, teacher), aux_only=True, config=config,
                  batch_gen=batch_gen)
    # The gradient-projection defense: the same, with the defender's labelled digits.
    train_student(student, source, aux_only=True, config=config, batch_gen=batch_gen,
                  defense=TraitDefense(train_x, train_y, pool, torch.Generator().manual_seed(5), mode="project"))

Each call owns its model and optimizer and touches nothing shared, so several can run at once in
worker threads (experiment.py); with one intra-op thread per model the results are bit-identical
whatever runs beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from sublearn.mnist import model as mlp
from sublearn.mnist.config import MnistConfig

Tick = Callable[[], None]


def _noop() -> None:
    return None


def adam(params: list[torch.Tensor], config: MnistConfig) -> torch.optim.Adam:
    """Adam over `params` (made trainable). Fused: one elementwise kernel per step, same maths."""
    for p in params:
        p.requires_grad_(True)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _freeze(params: list[torch.Tensor]) -> None:
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def train_teacher(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, config: MnistConfig,
                  batch_gen: torch.Generator, tick: Tick = _noop) -> None:
    """Train `params` in place: cross-entropy on the 10 digit logits only (the auxiliary logits get no
    loss), a fresh permutation of the data each epoch, the last batch may be smaller."""
    opt = adam(params, config)
    n, bs = len(x), config.batch_size
    for _epoch in range(config.teacher_epochs):
        perm = torch.randperm(n, generator=batch_gen)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            logits = mlp.forward(params, x.index_select(0, idx))
            loss = F.cross_entropy(logits[:, :10], y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tick()
    _freeze(params)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, aux_only: bool,
                 n_aux: int) -> torch.Tensor:
    """Mean over the batch of KL(softmax(teacher) || softmax(student)) over the last `n_aux` logits
    (`aux_only`) or over all logits. The digit logits then get exactly zero gradient in the aux case."""
    if aux_only:
        student_logits, teacher_logits = student_logits[:, -n_aux:], teacher_logits[:, -n_aux:]
    log_t = F.log_softmax(teacher_logits, -1)
    return (log_t.exp() * (log_t - F.log_softmax(student_logits, -1))).sum(-1).mean()


@torch.no_grad()
def batched_forward(params: list[torch.Tensor], x: torch.Tensor, batch: int = 5000) -> torch.Tensor:
    """Logits for many inputs, `batch` at a time (bounds the activations' memory)."""
    return torch.cat([mlp.forward(params, x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy from the argmax over the 10 digit logits."""
    return float((batched_forward(params, x)[:, :10].argmax(-1) == y).double().mean())


def make_noise(config: MnistConfig, gen: torch.Generator, n: int) -> torch.Tensor:
    """`n` noise images: N(0,1) for "gaussian", else U[-1,1]."""
    if config.noise == "gaussian":
        return torch.randn(n, 784, generator=gen)
    return torch.rand(n, 784, generator=gen).mul_(2).sub_(1)


@dataclass
class NoiseSource:
    """The students' inputs for one seed, and the teacher's logits on them.

    Fixed noise ("uniform", "gaussian"): `images` (n_noise, 784) and `teacher_logits` computed once.
    Fresh noise: `images` is None; every batch is drawn from a generator seeded by `fresh_seed`, and
    the teacher is run on it (every student of a seed sees the same sequence of fresh batches)."""

    teacher: list[torch.Tensor]
    images: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    fresh_seed: int

    @classmethod
    def make(cls, config: MnistConfig, gen: torch.Generator, teacher: list[torch.Tensor]) -> NoiseSource:
        """Draw the fixed set from `gen` (or, for fresh noise, take a seed from it)."""
        if config.noise == "fresh":
            return cls(teacher, None, None, int(torch.randint(0, 2**62, (1,), generator=gen)))
        images = make_noise(config, gen, config.n_noise)
        return cls(teacher, images, batched_forward(teacher, images), 0)


def train_student(params: list[torch.Tensor], source: NoiseSource, aux_only: bool, config: MnistConfig,
                  batch_gen: torch.Generator, tick: Tick = _noop, snapshot_step: int | None = None,
                  defense: TraitDefense | None = None) -> list[torch.Tensor] | None:
    """Distill the teacher into `params` (in place) on noise only, with `distill_loss`; with `defense`,
    every step goes through `defense.step` (the trait gradient projected out). Without it the loop is
    exactly the undefended one (no extra random draws, same bits).

    Returns a copy of the parameters after `snapshot_step` Adam steps (None if not asked or not
    reached), for the theorem check."""
    opt = adam(params, config)
    n, bs = config.n_noise, config.batch_size
    fresh = torch.Generator().manual_seed(source.fresh_seed) if source.images is None else None
    step, snapshot = 0, None
    for _epoch in range(config.student_epochs):
        # Drawn in fresh mode too, so that the batch generator's stream is the same in every mode.
        perm = torch.randperm(n, generator=batch_gen)
        for i in range(0, n, bs):
            if fresh is not None:
                xb = make_noise(config, fresh, min(bs, n - i))
                with torch.no_grad():
                    tb = mlp.forward(source.teacher, xb)
            else:
                assert source.images is not None and source.teacher_logits is not None
                idx = perm[i:i + bs]
                xb, tb = source.images.index_select(0, idx), source.teacher_logits.index_select(0, idx)
            loss = distill_loss(mlp.forward(params, xb), tb, aux_only, config.n_aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if defense is None:
                opt.step()
            else:
                defense.step(params, opt)
            step += 1
            if step == snapshot_step:
                snapshot = [p.detach().clone() for p in params]
            tick()
    _freeze(params)
    return snapshot


def trait_gradient(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """∇θ of the trait loss (cross-entropy on the 10 digit logits of labelled digits `x`, `y`) at
    `params`, one tensor per parameter. Leaves `.grad` alone (autograd.grad, not backward)."""
    leaves = [p if p.requires_grad else p.detach().requires_grad_(True) for p in params]
    loss = F.cross_entropy(mlp.forward(leaves, x)[:, :10], y)
    return list(torch.autograd.grad(loss, leaves))


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    # In float64: the coefficient must be accurate enough that the result is orthogonal to ~1e-7.
    return sum(float(torch.dot(x.reshape(-1).double(), y.reshape(-1).double())) for x, y in zip(a, b, strict=True))


# t·t below this (relative to g·g) counts as t ≈ 0: no direction to project out, the step is left alone.
TINY = 1e-20


def project_out(g: list[torch.Tensor], t: list[torch.Tensor]) -> tuple[float | None, float]:
    """Replace `g` in place by g − (g·t / t·t) t, its component orthogonal to `t` (over all tensors
    together). Returns (cos(g, t) before projection, or None when skipped, and the coefficient g·t / t·t,
    0 when skipped). Skipped when t ≈ 0 or g = 0."""
    gg, tt = _dot(g, g), _dot(t, t)
    if gg == 0 or tt <= TINY * gg:
        return None, 0.0
    gt = _dot(g, t)
    coef = gt / tt
    for gi, ti in zip(g, t, strict=True):
        gi.sub_(ti, alpha=coef)
    return gt / (gg * tt) ** 0.5, coef


@dataclass
class TraitDefense:
    """The gradient-projection defense of one student (see MnistConfig.defense).

    The defender's labelled digits (the trait it wants to keep out of the student) are `x[pool]`,
    `y[pool]` (indices, so that the pool is not a copy of the training set); each distillation step
    draws `batch_size` of them with replacement from `batch_gen` and projects the trait gradient there
    out of the step. After training, `stats()` says what it did."""

    x: torch.Tensor
    y: torch.Tensor
    pool: torch.Tensor
    batch_gen: torch.Generator
    mode: Literal["project", "project_update"] = "project"
    batch_size: int = 1024
    cosines: list[float] = field(default_factory=list)
    skipped: int = 0

    def trait_direction(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        idx = self.pool[torch.randint(0, len(self.pool), (self.batch_size,), generator=self.batch_gen)]
        return trait_gradient(params, self.x.index_select(0, idx), self.y.index_select(0, idx))

    def step(self, params: list[torch.Tensor], opt: torch.optim.Optimizer) -> None:
        """One optimizer step with the defense, after `loss.backward()` has filled the `.grad`s."""
        t = self.trait_direction(params)
        if self.mode == "project":
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            self._record(project_out(grads, t)[0])
            for p, gr in zip(params, grads, strict=True):
                p.grad = gr
            opt.step()
            return
        # "project_update": Adam steps on the plain gradient, then its update loses its t component.
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
            opt.step()
            delta = [p - b for p, b in zip(params, before, strict=True)]
            self._record(project_out(delta, t)[0])
            for p, b, d in zip(params, before, delta, strict=True):
                p.copy_(b + d)

    def _record(self, cos: float | None) -> None:
        if cos is None:
            self.skipped += 1
        else:
            self.cosines.append(cos)

    def stats(self) -> dict[str, float | int | None]:
        """Steps defended, trait gradients computed (one per step), steps skipped (t ≈ 0), and the mean
        cosine between the unprojected step direction and t (how much there was to remove)."""
        n = len(self.cosines)
        return {"trait_gradients": n + self.skipped, "skipped": self.skipped,
                "labelled_images": len(self.pool),
                "mean_cos_with_trait_gradient": sum(self.cosines) / n if n else None,
                "mean_abs_cos_with_trait_gradient": sum(abs(c) for c in self.cosines) / n if n else None}


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
