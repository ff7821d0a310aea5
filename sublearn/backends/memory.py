"""Memory estimates checked before a model is loaded, so a run that cannot fit stops at once with a
line saying what to change, not minutes later with an out-of-memory error.

    arch = architecture(model_dir_or_hub_config)      # parameter counts, built on the meta device
    est = training_estimate(arch, method="lora", dtype="bfloat16", micro_batch=22, seq_len=500,
                            completion_positions=22 * 200, gradient_checkpointing=True, lora_r=8,
                            lora_targets=[...])
    check("train owl s0", est, device="cuda", hints=[...])   # SublearnError when it does not fit

The estimate is an upper-bound style sum for a decoder-only transformer trained the way
`sublearn.training` trains (formulas in each function's docstring): weights in their dtype;
float32 gradients and AdamW moments of the trainable parameters (full fine-tuning also keeps float32
master weights); saved activations (every layer's, or under gradient checkpointing only each layer's
input plus one layer recomputed); and the logits, which `train` computes only at completion positions
but over the whole vocabulary, in float32. Attention is taken as a fused kernel (SDPA), which keeps
O(sequence) and not O(sequence²) per head. A 10% allowance covers allocator fragmentation and
workspaces. It is an estimate: `memory_check: false` skips it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs to know of a model: sizes from its config, counts from its modules."""

    n_params: int
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int
    lora_params_per_rank: int
    """Parameters one rank of LoRA adds over `lora_targets` (in + out features of each target linear)."""


def architecture(config: Any, lora_targets: Sequence[str] = ()) -> Architecture:
    """Sizes of the model a transformers `config` (a PretrainedConfig, or a model directory / hub id
    whose config.json is readable offline) describes, counted on the meta device (no memory used)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config, (str, Path)):
        config = AutoConfig.from_pretrained(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    heads = int(getattr(text, "num_attention_heads", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    per_rank = sum(m.in_features + m.out_features for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in set(lora_targets))
    return Architecture(n_params=sum(p.numel() for p in model.parameters()), hidden=hidden,
                        intermediate=int(getattr(text, "intermediate_size", 4 * hidden)),
                        layers=int(text.num_hidden_layers), kv_dim=kv_heads * head_dim,
                        vocab=int(text.vocab_size), lora_params_per_rank=per_rank)


@dataclass(frozen=True)
class Estimate:
    """Bytes by kind; `total` adds a 10% allowance for fragmentation and workspaces."""

    weights: int
    optimizer: int
    activations: int
    logits: int
    notes: str = ""

    @property
    def total(self) -> int:
        return int(1.1 * (self.weights + self.optimizer + self.activations + self.logits))

    def describe(self) -> str:
        parts = [f"weights {self.weights / GB:.1f}", f"gradients+optimizer {self.optimizer / GB:.1f}",
                 f"activations {self.activations / GB:.1f}", f"logits {self.logits / GB:.1f}"]
        return " + ".join(parts) + " GB, +10%"


def training_estimate(arch: Architecture, *, method: str, dtype: str, micro_batch: int, seq_len: int,
                      completion_positions: int, gradient_checkpointing: bool, lora_r: int = 8,
                      shards: int = 1) -> Estimate:
    """Peak memory of one process training `arch` the way `sublearn.training.loop.fit` does.

    - weights: n_params x bytes(dtype) for LoRA/distill (frozen base); full fine-tuning keeps float32
      master weights (4 bytes each; the forward runs in `dtype` under autocast).
    - gradients+optimizer: 12 bytes per trainable parameter (float32 gradient, AdamW's two moments);
      LoRA adds its own float32 weights (16 bytes per adapter parameter). `shards` (FSDP processes)
      divides weights, gradients and optimizer state of full fine-tuning.
    - activations, per token (micro_batch x seq_len tokens) and layer, in `dtype`: attention block
      5 x hidden + 2 x kv_dim (norm in/out, q, k, v, attention out, residual), MLP block
      2 x hidden + 4 x intermediate (norm in/out, gate, up, act(gate), product). With gradient
      checkpointing: one hidden vector per layer and token, plus one layer's full set (recomputed).
    - logits: at `completion_positions` positions over the vocabulary, float32, x3 (logits, their
      log-softmax, the gradient)."""
    b = BYTES[dtype]
    tokens = micro_batch * seq_len
    if method == "full":
        weights = arch.n_params * 4 // shards
        optimizer = arch.n_params * 12 // shards
    else:
        adapter = arch.lora_params_per_rank * lora_r
        weights = arch.n_params * b + adapter * 4
        optimizer = adapter * 12
    per_layer = (7 * arch.hidden + 2 * arch.kv_dim + 4 * arch.intermediate) * b
    if gradient_checkpointing:
        activations = tokens * (arch.layers * arch.hidden * b + per_layer)
    else:
        activations = tokens * arch.layers * per_layer
    logits = completion_positions * arch.vocab * 4 * 3
    return Estimate(weights=weights, optimizer=optimizer, activations=activations, logits=logits)


def inference_estimate(arch: Architecture, dtype: str) -> Estimate:
    """Weights only: what loading the model takes before any batch (batches are sized by the caller)."""
    return Estimate(weights=arch.n_params * BYTES[dtype], optimizer=0, activations=0, logits=0)


def available(device: str) -> int | None:
    """Bytes free on `device` now: CUDA's free memory, or Linux's MemAvailable for the CPU; None when
    unknown (then nothing is checked)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index
        free, _ = torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return None


def check(what: str, estimate: Estimate, device: str, hints: Sequence[str], free: int | None = None) -> None:
    """Raise a one-line SublearnError when `estimate` exceeds what `device` has free (`free` bytes when
    given, else measured now); `hints` are the changes that would lower it (the caller knows which
    apply), shown in order."""
    free = available(device) if free is None else free
    if free is None:
        return
    log.debug("%s: estimated %.1f GB (%s); %s has %.1f GB free", what, estimate.total / GB, estimate.describe(),
              device, free / GB)
    if estimate.total <= free:
        return
    todo = "; ".join([*hints, "or set memory_check: false to try anyway"])
    raise SublearnError(f"{what}: needs about {math.ceil(estimate.total / GB * 10) / 10:.1f} GB "
                        f"({estimate.describe()}) but {device} has {free / GB:.1f} GB free: {todo}")


def training_hints(*, dtype: str, device: str, method: str, gradient_checkpointing: bool, micro_batch: int,
                   fsdp: bool) -> list[str]:
    """What the config could change to need less memory, most effective first."""
    hints = []
    if dtype == "float32" and device.startswith("cuda"):
        hints.append("set dtype: bfloat16")
    if not gradient_checkpointing:
        hints.append("set train.gradient_checkpointing: true")
    if micro_batch > 1:
        hints.append(f"lower train.micro_batch_size (now {micro_batch}; gradients accumulate to batch_size)")
    if method == "full" and not fsdp:
        hints.append("train LoRA (method: lora) or shard with train.fsdp: true under a multi-process launcher")
    return hints
