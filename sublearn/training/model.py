"""The model a training run updates: the base loaded in the run's dtype after a memory check
(`training_model`), with LoRA adapters (`attach_lora`, seeded) or full weights, and activation
checkpointing (`enable_checkpointing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from sublearn.pipeline_config import PipelineConfig, TrainConfig
from sublearn.training import distributed
from sublearn.training.examples import Example


def attach_lora(model: Any, cfg: TrainConfig, init_seed: int) -> Any:
    """Wrap `model` with LoRA adapters; A matrices drawn from an explicit generator seeded `init_seed`
    (PEFT would use torch's global RNG), B matrices zero, so the student starts at the base model. The
    factors named in `cfg.freeze` (e.g. lora_A) are left out of training (requires_grad False)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(init_seed)  # a CPU generator: the same draws on any device
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_A" in name:
                value = torch.empty(param.shape, dtype=param.dtype)
                torch.nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=gen)
                param.copy_(value)
            elif "lora_B" in name:
                param.zero_()
            # train.freeze: these factors keep their initialisation (the optimizer never sees them).
            if any(f".{factor}." in name for factor in cfg.freeze):
                param.requires_grad_(False)
    # PEFT keeps target_modules as a set and writes it to adapter_config.json in set order, which follows
    # the process's string-hash seed: the same training then gave adapter directories (and so stage
    # hashes) that differed between runs. The modules are injected by now: keep them as a sorted list.
    for config in peft_model.peft_config.values():
        modules = getattr(config, "target_modules", None)
        if isinstance(modules, set):
            config.target_modules = sorted(modules)  # type: ignore[attr-defined]
    return peft_model


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in the backward pass (transformers' activation checkpointing),
    non-reentrant: it works with a frozen embedding (LoRA) and is what PyTorch recommends."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def training_model(config: PipelineConfig, model_name: str, method: str, examples: Sequence[Example],
                   cfg: TrainConfig, *, label: str, init_seed: int, shards: int = 1) -> Any:
    """The model `fit` trains on `examples` (students and fine-tuned teachers): its memory checked first
    (`config.memory_check`), loaded in the run's dtype, with activation checkpointing when `cfg` asks
    and, unless `method` is 'full', LoRA adapters initialised from `init_seed`. Full fine-tuning keeps
    float32 master weights (`fit` runs the forward under autocast); adapters train in float32 on a base
    in the run's dtype. Sharded (`shards` > 1) it stays on the CPU: FSDP moves each shard to its device."""
    from sublearn.backends.models import load_model

    if config.memory_check:
        check_training_memory(config, model_name, method, examples, label=label, shards=shards, cfg=cfg)
    with distributed.main_first():  # the first load of an embedded model fills the shared cache
        net, _ = load_model(model_name, device="cpu" if shards > 1 else config.device,
                            dtype="float32" if method == "full" else config.resolved_dtype())
    if cfg.gradient_checkpointing:
        enable_checkpointing(net)
    return net if method == "full" else attach_lora(net, cfg, init_seed)


def check_training_memory(config: PipelineConfig, model_name: str, method: str, examples: Sequence[Example], *,
                          label: str, shards: int = 1, cfg: TrainConfig | None = None) -> None:
    """Stop with a one-line error before loading when training `model_name` on `examples` would not fit
    the device (sublearn.backends.memory; the longest example sets the padded width of every micro-batch).
    Skipped when the model's config cannot be read here (loading then says why)."""
    from sublearn.backends import memory
    from sublearn.backends.models import model_source

    cfg = cfg or config.train
    try:
        arch = memory.architecture(model_source(model_name), cfg.lora_targets if method != "full" else ())
    except (OSError, ValueError, KeyError):
        return
    seq = max((len(ex.input_ids) for ex in examples), default=cfg.max_length)
    completion = max((len(ex.input_ids) - ex.n_prompt for ex in examples), default=cfg.max_length)
    micro = min(cfg.micro_batch_size, cfg.batch_size)
    dtype = config.resolved_dtype()
    est = memory.training_estimate(arch, method=method, dtype=dtype, micro_batch=micro, seq_len=seq,
                                   completion_positions=micro * completion,
                                   gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora_r,
                                   shards=shards)
    memory.check(label, est, config.device, memory.training_hints(
        dtype=dtype, device=config.device, method=method, gradient_checkpointing=cfg.gradient_checkpointing,
        micro_batch=micro, fsdp=cfg.fsdp))
