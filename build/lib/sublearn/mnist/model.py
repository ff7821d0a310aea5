"""The MLP of the experiment as plain tensors: `params = [W1, b1, W2, b2, W3, b3]`, W_l of shape (d_in, d_out).

    params = init_params([784, 256, 256, 13], torch.Generator().manual_seed(0))
    logits = forward(params, x)            # x: (batch, 784) -> (batch, 13)

Why not an nn.Module: the experiment copies, perturbs, flattens and compares whole parameter sets
(the teacher's displacement θT − θ0, the theorem cosines), which is simplest on a list of tensors.
Why not a stacked multi-model MLP (bmm over a leading model dimension): measured on the 2-core CPU
machine it gives no speed-up (a single model already runs large GEMMs, see BENCHMARKS.md), and one
model per task keeps every model's numbers independent of how many run beside it; the two cores are
used by running independent models in two worker threads instead (see experiment.py).
"""

from __future__ import annotations

import math

import torch


def init_params(sizes: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    """W_l ~ N(0, 1/d_in) and zero biases, drawn from `generator` layer by layer."""
    params: list[torch.Tensor] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
        params += [torch.randn(d_in, d_out, generator=generator) / math.sqrt(d_in), torch.zeros(d_out)]
    return params


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of the MLP (ReLU between layers, none after the last)."""
    h = x
    n_layers = len(params) // 2
    for layer in range(n_layers):
        h = torch.addmm(params[2 * layer + 1], h, params[2 * layer])
        if layer < n_layers - 1:
            # In place is safe: addmm's backward needs its inputs, not its output.
            h = h.relu_()
    return h


def flatten(params: list[torch.Tensor]) -> torch.Tensor:
    """All parameters as one vector (for displacements and cosines)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def train_flops_per_example(sizes: list[int]) -> int:
    """Matmul FLOPs of one training step per example: forward, weight gradients, and input
    gradients of every layer but the first (the pixels need none)."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return 2 * (sum(macs) + sum(macs) + sum(macs[1:]))
