"""The student's optimizer (`train.optimizer`), for the optimizer ladder of the 2026 replications.

    optimizer = make_optimizer(params, cfg)    # cfg: TrainConfig

'adamw' is torch's AdamW (the paper's). The others isolate what the update direction does: 'signum'
steps by the sign of a momentum average (every coordinate moves by exactly lr), 'rmsprop' divides the
gradient by a running RMS (per-coordinate normalisation without momentum), 'sgd' follows the raw
gradient with heavy-ball momentum. All four apply the same decoupled weight decay (p <- p - lr * wd * p
before the step, AdamW's), so the ladder varies the update rule and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sublearn.pipeline_config import TrainConfig


class Signum(torch.optim.Optimizer):
    """Sign of momentum (Bernstein et al. 2018): m <- beta m + (1 - beta) g; p <- p - lr sign(m). A
    coordinate whose momentum is exactly 0 does not move. (Weight decay: `make_optimizer` adds it.)"""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.9) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                m.mul_(group["momentum"]).add_(p.grad, alpha=1 - group["momentum"])
                p.add_(m.sign(), alpha=-group["lr"])
        return loss


def make_optimizer(params: list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names over `params` (see the module docstring)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    inner: torch.optim.Optimizer
    if cfg.optimizer == "signum":
        inner = Signum(params, lr=cfg.lr, momentum=cfg.momentum)
    elif cfg.optimizer == "rmsprop":
        # alpha = AdamW's second-moment decay, so rmsprop is AdamW without momentum or bias correction.
        inner = torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.adam_betas[1], eps=1e-8)
    else:
        inner = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.weight_decay:
        _decay_before_step(inner, cfg.weight_decay)
    return inner


def _decay_before_step(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """p <- p * (1 - lr * wd) before each step of `optimizer` (AdamW's decoupled decay, at the group's
    current learning rate, so a schedule scales it as it scales AdamW's), for every rule but AdamW's own."""

    def decay(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1 - group["lr"] * weight_decay)

    optimizer.register_step_pre_hook(decay)
