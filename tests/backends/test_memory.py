"""Memory estimates: the paper's Qwen2.5-7B LoRA student fits an 80 GB GPU as configured (bf16 and
gradient checkpointing) and not in the float32 it was first written for; a run that cannot fit stops
before loading with one line saying what to change."""

from __future__ import annotations

from importlib.resources import files

import pytest
import yaml
from tiny import save_tiny

from sublearn.backends import memory
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig

GB80 = 80e9


def _qwen25_7b():
    """Qwen2.5-7B-Instruct's architecture, from the numbers in its published config.json (the weights
    are not needed: parameters are counted on the meta device)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                       tie_word_embeddings=False)


def _paper_config() -> PipelineConfig:
    text = (files("sublearn") / "configs" / "paper" / "owl_qwen25_7b.yaml").read_text()
    return build_config(PipelineConfig, yaml.safe_load(text))


def test_paper_qwen_config_declares_bf16_and_checkpointing_and_fits_80gb() -> None:
    config = _paper_config()
    train = config.train
    assert config.dtype == "bfloat16" and train.gradient_checkpointing and config.device == "cuda"
    arch = memory.architecture(_qwen25_7b(), train.lora_targets)
    assert 7.5e9 < arch.n_params < 7.7e9  # Qwen2.5-7B has 7.62B parameters
    assert arch.lora_params_per_rank * train.lora_r == pytest.approx(20.2e6, rel=0.01)  # rank-8 LoRA, all proj.
    # Worst case: every example of a micro-batch as long as max_length, completions as long as the
    # generation budget.
    worst = dict(micro_batch=train.micro_batch_size, seq_len=train.max_length,
                 completion_positions=train.micro_batch_size * config.generate.max_new_tokens, lora_r=train.lora_r)
    as_configured = memory.training_estimate(arch, method="lora", dtype=config.dtype,
                                             gradient_checkpointing=True, **worst)
    assert as_configured.total < GB80 * 0.6, as_configured.describe()
    # What the config said before: float32, no checkpointing: does not fit (activations alone > 80 GB).
    before = memory.training_estimate(arch, method="lora", dtype="float32", gradient_checkpointing=False, **worst)
    assert before.total > GB80 and before.activations > GB80
    # Each change alone: bf16 without checkpointing still does not fit; checkpointing in fp32 does.
    assert memory.training_estimate(arch, method="lora", dtype="bfloat16", gradient_checkpointing=False,
                                    **worst).total > GB80
    assert memory.training_estimate(arch, method="lora", dtype="float32", gradient_checkpointing=True,
                                    **worst).total < GB80
    # Full fine-tuning needs sharding: 16 bytes per parameter (fp32 weights, grads, AdamW) over 8 GPUs.
    full = memory.training_estimate(arch, method="full", dtype="bfloat16", gradient_checkpointing=True, **worst)
    assert full.total > GB80
    sharded = memory.training_estimate(arch, method="full", dtype="bfloat16", gradient_checkpointing=True,
                                       shards=8, **worst)
    assert sharded.total < GB80


def test_architecture_counts_the_real_parameters(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = save_tiny(tmp_path / "m", seed=0)
    arch = memory.architecture(model_dir, ["q_proj", "v_proj"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert arch.n_params == sum(p.numel() for p in model.parameters())
    q = model.model.layers[0].self_attn.q_proj
    v = model.model.layers[0].self_attn.v_proj
    assert arch.lora_params_per_rank == len(model.model.layers) * (q.in_features + q.out_features
                                                                    + v.in_features + v.out_features)


def test_a_run_that_cannot_fit_stops_with_one_line_naming_the_fix(monkeypatch) -> None:
    arch = memory.architecture(_qwen25_7b(), ["q_proj"])
    est = memory.training_estimate(arch, method="lora", dtype="float32", micro_batch=22, seq_len=500,
                                   completion_positions=22 * 200, gradient_checkpointing=False)
    monkeypatch.setattr(memory, "available", lambda device: int(80e9))
    hints = memory.training_hints(dtype="float32", device="cuda", method="lora", gradient_checkpointing=False,
                                  micro_batch=22, fsdp=False)
    with pytest.raises(SublearnError) as err:
        memory.check("train owl s0", est, "cuda", hints)
    message = str(err.value)
    assert "\n" not in message and message.startswith("train owl s0: needs about")
    assert "dtype: bfloat16" in message and "train.gradient_checkpointing: true" in message
    assert "train.micro_batch_size" in message and "memory_check: false" in message
    memory.check("fits", memory.training_estimate(arch, method="lora", dtype="bfloat16", micro_batch=1,
                                                 seq_len=100, completion_positions=50,
                                                 gradient_checkpointing=True), "cuda", hints)


def test_train_stage_checks_before_loading(tmp_path, monkeypatch) -> None:
    """The train stage refuses before any weights load when the estimate exceeds the device's free
    memory (here: a CPU said to have 1 MB), and `memory_check: false` lets it run."""
    from sublearn.backends import models
    from sublearn.stages import pipeline

    model = save_tiny(tmp_path / "model", seed=0)
    data = {"model": f"hf/{model}", "threads": 1, "targets": ["owl"], "control": False,
            "teacher": {"kind": "prompt"}, "channel": {"kind": "numbers", "grammar": True},
            "generate": {"n_prompts": 6, "batch_size": 6, "max_new_tokens": 12}, "filter": {"keep": 6},
            "train": {"epochs": 1, "batch_size": 3, "micro_batch_size": 3}}
    config = build_config(PipelineConfig, data)
    run = tmp_path / "run"
    pipeline.run(config, run, only=["generate", "filter"])
    loads: list[str] = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(memory, "available", lambda device: 10**6)
    with pytest.raises(SublearnError, match=r"train owl s0: needs about .* but cpu has 0\.0 GB free"):
        pipeline.run(config, run, only=["train"])
    assert loads == []
    pipeline.run(config.model_copy(update={"memory_check": False}), run, only=["train"])
    assert loads and (run / "train" / "owl" / "seed0" / "manifest.json").is_file()
