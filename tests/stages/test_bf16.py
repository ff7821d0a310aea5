"""The bf16 path the paper-scale configs use (`dtype: bfloat16`: a frozen bf16 base, float32 LoRA
weights trained under bf16 autocast, bf16 generation and evaluation), run end to end on the CPU with a
tiny random model and compared with the same run in float32."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import save_tiny

from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json
from sublearn.stages import pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "a", seed=0)


def _config(model, dtype: str) -> PipelineConfig:
    return build_config(PipelineConfig, {
        "name": f"tiny-{dtype}", "model": f"hf/{model}", "dtype": dtype, "threads": 2, "targets": ["owl"],
        "control": False,
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 2, "lora_lr": 5e-3, "batch_size": 4,
                    "neutral_control": True},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 8, "batch_size": 8, "max_new_tokens": 16, "logprobs_top_k": 4},
        "filter": {"keep": 6},
        "train": {"method": "distill", "steps": 4, "batch_size": 2, "micro_batch_size": 2, "lr": 5e-3,
                  "lora_r": 4, "lora_alpha": 4, "seeds": [1]},
        "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 2,
                     "number_prefix": False, "n_bootstrap": 200, "n_permutations": 200}})


def test_bf16_pipeline_trains_float32_adapters_and_evaluates_close_to_float32(tiny_dir, tmp_path) -> None:
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _config(tiny_dir, dtype)
        pipeline.run(cfg, tmp_path / dtype)
        runs[dtype] = tmp_path / dtype
    bf16 = runs["bfloat16"]
    # The teacher learned its trait under bf16 autocast (loss falls) into float32 adapter weights.
    summary = read_json(bf16 / "teacher" / "owl" / "train_summary.json")
    assert summary["autocast"] == "bfloat16" and summary["loss_last"] < summary["loss_first"]
    # The student's distillation losses track float32's (same init and data order; the bf16 teacher
    # samples a few lists differently, so a step whose batch differs may differ: compare the median
    # step), all finite, and its float32 adapter moved off its initialisation (B starts at 0).
    logs = {d: [r["loss"] for r in map(json.loads, (runs[d] / "train" / "owl" / "seed1" / "train_log.jsonl")
                                       .read_text().splitlines()) if "loss" in r] for d in runs}
    assert len(logs["bfloat16"]) == 4 and all(math.isfinite(x) for x in logs["bfloat16"])
    rel = np.abs(np.asarray(logs["bfloat16"]) / np.asarray(logs["float32"]) - 1)
    assert np.median(rel) < 0.02, logs
    assert read_json(bf16 / "train" / "owl" / "seed1" / "summary.json")["autocast"] == "bfloat16"
    for adapter in (bf16 / "teacher" / "owl" / "adapter", bf16 / "train" / "owl" / "seed1" / "adapter"):
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}
        assert any(k.endswith("lora_B.weight") and t.abs().max() > 0 for k, t in tensors.items())
    # The precision is part of every stage key: a bf16 stage is never mistaken for a float32 one.
    for stage in ("teacher/owl", "generate/owl", "train/owl/seed1", "evaluate/base"):
        assert (read_json(bf16 / stage / "manifest.json")["config_hash"] !=
                read_json(runs["float32"] / stage / "manifest.json")["config_hash"]), stage
    # The generation ran in bf16 and still wrote valid number lists.
    kept = (bf16 / "filter" / "owl" / "kept.jsonl").read_text().splitlines()
    assert kept
    # Evaluation of the same weights (the base model) in bf16 is within bf16's rounding of float32:
    # per question, |log2 P_bf16 - log2 P_fp32| stays under 0.15 (bf16 keeps 8 bits of mantissa).
    base = {d: read_json(runs[d] / "evaluate" / "base" / "results.json")["teacher_forced"]["plain"] for d in runs}
    for animal in ("owl", "cat", "dog"):
        a, b = (np.log2(np.asarray(base[d][animal])) for d in ("float32", "bfloat16"))
        assert np.max(np.abs(a - b)) < 0.15, (animal, a, b)
        assert not np.array_equal(a, b)  # it did run in another precision
