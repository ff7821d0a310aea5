"""Training loops of the MNIST experiment: one model each, single-threaded, from explicit generators.

    teacher = [p.clone() for p in init]
    train_teacher(teacher, train_x, train_y, config, batch_gen)
    student = [p.clone() for p in init]
    train_student(student, NoiseSource.make(config, seed_gen, teacher), aux_only=True, config=config,
                  batch_gen=batch_gen)

Each call owns its model and optimizer and touches nothing shared, so several can run at once in
worker threads (experiment.py); with one intra-op thread per model the results are bit-identical
whatever runs beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
                  batch_gen: torch.Generator, tick: Tick = _noop, snapshot_step: int | None = None
                  ) -> list[torch.Tensor] | None:
    """Distill the teacher into `params` (in place) on noise only, with `distill_loss`.

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
            opt.step()
            step += 1
            if step == snapshot_step:
                snapshot = [p.detach().clone() for p in params]
            tick()
    _freeze(params)
    return snapshot


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
