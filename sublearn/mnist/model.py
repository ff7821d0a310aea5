"""A stack of independent MLPs trained at once: parameters carry a leading model dimension M.

Every model in the stack has its own weights and its own inputs; one batched matmul (bmm) per layer
serves all of them, and since Adam is elementwise, one Adam over the stacked tensors is M independent
Adams. This keeps both cores busy with fewer, larger kernels than a Python loop over nn.Modules (see
benchmarks/mnist_bench.py for the measured ratio).
"""

from __future__ import annotations

import math

import torch


def init_params(m: int, sizes: list[int], generators: list[torch.Generator]) -> list[torch.Tensor]:
    """Weights W_l ~ N(0, 1/d_in) and zero biases for `m` models; model i draws from generators[i].

    Returns [W1, b1, W2, b2, ...] with W_l of shape (m, d_in, d_out) and b_l of shape (m, 1, d_out)."""
    params: list[torch.Tensor] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = torch.stack([torch.randn(d_in, d_out, generator=g) / math.sqrt(d_in) for g in generators])
        params += [w, torch.zeros(m, 1, d_out)]
    return params


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x: (m, batch, d_in) or (1, batch, d_in) shared by all models -> logits (m, batch, d_out)."""
    h = x
    n_layers = len(params) // 2
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        h = torch.baddbmm(b, h, w) if h.shape[0] == w.shape[0] else torch.matmul(h, w) + b
        if layer < n_layers - 1:
            h = torch.relu(h)
    return h


def flops_per_example(sizes: list[int]) -> int:
    """Multiply-adds x2 of one forward pass."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
