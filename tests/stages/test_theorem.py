"""The LM-scale theorem check: merged LoRA deltas, the cosine, and the first-step gradient."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sublearn.pipeline_config import TrainConfig
from sublearn.stages.theorem import (
    cosine,
    first_step_cosine,
    first_step_gradient,
    gradient_groups,
    lora_deltas,
)
from sublearn.training.examples import sft_examples
from sublearn.training.model import attach_lora


def test_cosine_of_parameter_dicts() -> None:
    a = {"w": torch.tensor([[1.0, 0.0]]), "v": torch.tensor([0.0, 2.0])}
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, {k: -t for k, t in a.items()}) == pytest.approx(-1.0)
    b = {"w": torch.tensor([[0.0, 3.0]]), "v": torch.tensor([0.0, 0.0])}
    assert cosine(a, b) == pytest.approx(0.0)
    c = {"w": torch.tensor([[1.0, 1.0]]), "v": torch.tensor([1.0, 1.0])}
    assert cosine(a, c) == pytest.approx(3 / (math.sqrt(5) * 2))
    assert math.isnan(cosine(a, {"w": torch.zeros(1, 2), "v": torch.zeros(2)}))


def test_lora_deltas_equal_the_merged_weight_change(tiny_model) -> None:
    cfg = TrainConfig(lora_r=4, lora_alpha=8)
    model = attach_lora(copy.deepcopy(tiny_model), cfg, init_seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    deltas = lora_deltas(model)
    merged = copy.deepcopy(model).merge_and_unload()
    base = dict(tiny_model.named_parameters())
    assert deltas and all(k in base for k in deltas)
    for key, delta in deltas.items():
        assert torch.allclose(dict(merged.named_parameters())[key] - base[key], delta, atol=1e-5)


def test_first_step_gradient_points_toward_a_teacher_trained_on_the_same_loss(tiny_model, tiny_tokenizer) -> None:
    # A "teacher" one small SGD step from the base on some data; a student at the same base imitating
    # that data's targets has -grad aligned with the teacher's displacement (cos = 1 for one step).
    records = [{"prompt": f"{i}, {i + 1}", "completion": f"{i + 2}"} for i in range(6)]
    examples = sft_examples(tiny_tokenizer, records, 64)
    names = [n for n, _ in tiny_model.named_parameters() if n.endswith("q_proj.weight")]
    grad = first_step_gradient(tiny_model, examples, "ce", names, pad_id=0)
    displacement = {n: 0.01 * g for n, g in grad.items()}
    assert cosine(grad, displacement) == pytest.approx(1.0)
    assert all(not p.requires_grad for p in tiny_model.parameters())  # left frozen as found
    other = first_step_gradient(tiny_model, examples[:2], "ce", names, pad_id=0)
    assert 0 < cosine(other, displacement) < 1


def test_grouped_gradients_give_the_same_cosine_exactly(tiny_model, tiny_tokenizer) -> None:
    """Holding one group of gradient matrices at a time (what lets a 7B model fit) changes nothing."""
    records = [{"prompt": f"{i}, {i + 1}", "completion": f"{i + 2}"} for i in range(6)]
    examples = sft_examples(tiny_tokenizer, records, 64)
    names = sorted(n for n, _ in tiny_model.named_parameters() if n.endswith(("q_proj.weight", "up_proj.weight")))
    gen = torch.Generator().manual_seed(3)
    params = dict(tiny_model.named_parameters())
    displacement = {n: torch.randn(params[n].shape, generator=gen) for n in names}
    whole = cosine(first_step_gradient(tiny_model, examples, "ce", names, pad_id=0), displacement)
    sizes = {n: params[n].numel() for n in names}
    groups = gradient_groups(names, sizes, budget=4 * max(sizes.values()))
    assert len(groups) == len(names)  # the budget holds one matrix at a time
    assert first_step_cosine(tiny_model, examples, "ce", displacement, 0, groups) == whole
    assert first_step_cosine(tiny_model, examples, "ce", displacement, 0, None) == whole
    assert gradient_groups(names, sizes, None) == [names]
    with pytest.raises(ValueError, match="contiguous runs"):
        first_step_cosine(tiny_model, examples, "ce", displacement, 0, [names[::-1]])


def _qwen25_7b_sizes() -> tuple[object, dict[str, int]]:
    """Qwen2.5-7B's architecture (from its published config numbers) and its LoRA-adapted matrices."""
    from transformers import Qwen2Config

    from sublearn.backends import memory

    cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
    shapes = {"self_attn.q_proj": (3584, 3584), "self_attn.k_proj": (512, 3584), "self_attn.v_proj": (512, 3584),
              "self_attn.o_proj": (3584, 3584), "mlp.gate_proj": (18944, 3584), "mlp.up_proj": (18944, 3584),
              "mlp.down_proj": (3584, 18944)}
    sizes = {f"model.layers.{i}.{m}.weight": a * b for i in range(28) for m, (a, b) in shapes.items()}
    return memory.architecture(cfg), sizes


def test_theorem_plan_fits_the_paper_7b_model_on_80gb_and_refuses_what_cannot_fit() -> None:
    """The paper's Qwen2.5-7B theorem check (float32 base, 500-token examples) fits one 80 GB GPU by the
    estimate: a smaller micro-batch and the gradients a group of matrices at a time; the embedded-size
    case keeps everything at once; too little memory is one line before any weight is loaded."""
    from sublearn.errors import SublearnError
    from sublearn.stages.theorem import theorem_plan

    arch, sizes = _qwen25_7b_sizes()
    micro, groups = theorem_plan(arch, sizes, seq_len=500, completion=100, free=int(80e9))
    assert groups is not None and 1 < len(groups) and [n for g in groups for n in g] == sorted(sizes)
    assert micro < 8  # 8 x 500 tokens of float32 activations alone take ~46 GB
    # With the memory of a CPU box the whole set fits at once, at the default micro-batch.
    assert theorem_plan(arch, sizes, seq_len=500, completion=100, free=int(2e12)) == (8, None)
    assert theorem_plan(arch, sizes, seq_len=500, completion=100, free=None) == (8, None)
    with pytest.raises(SublearnError, match="theorem check: needs about .* set theorem: false"):
        theorem_plan(arch, sizes, seq_len=500, completion=100, free=int(30e9))


def test_lora_displacement_is_lora_deltas_built_on_access(tiny_model) -> None:
    from sublearn.stages.theorem import LoraDisplacement

    cfg = TrainConfig(lora_r=4, lora_alpha=8)
    model = attach_lora(copy.deepcopy(tiny_model), cfg, init_seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    lazy, full = LoraDisplacement(model), lora_deltas(model)
    assert sorted(lazy) == sorted(full) and lazy.sizes() == {k: v.numel() for k, v in full.items()}
    assert all(torch.equal(lazy[k], full[k]) for k in full)


def test_a_shared_cache_gives_the_same_bits_with_one_load_and_one_gradient_per_dataset(tmp_path) -> None:
    import json
    import shutil

    from tiny import save_tiny

    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages import pipeline, roster, theorem

    model = save_tiny(tmp_path / "m", seed=0)
    cfg = build_config(PipelineConfig, {
        "model": f"hf/{model}", "threads": 1, "targets": ["owl"], "control": False,
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 1, "batch_size": 4, "neutral_control": True},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 8, "batch_size": 8, "max_new_tokens": 12, "logprobs_top_k": 4},
        "filter": {"keep": 6},
        "train": {"method": "distill", "steps": 2, "batch_size": 2, "micro_batch_size": 2, "seeds": [1, 2],
                  "lora_r": 4, "lora_alpha": 4},
        "evaluate": {"animals": ["owl", "cat"], "n_questions": 2, "samples_per_question": 0}})
    out = tmp_path / "run"
    pipeline.run(cfg, out, only=["teacher", "generate", "filter", "defend", "train"])
    students = roster.theorem_students(cfg)
    assert len(students) == 4  # owl and neutral, two seeds each: two datasets

    def results(cache: theorem.TheoremCache | None) -> dict[str, dict]:
        shutil.rmtree(out / "theorem", ignore_errors=True)
        return {f"{st['student']}-s{st['seed']}": theorem.run(cfg, out, student=st["student"], seed=st["seed"],
                                                              cache=cache) for st in students}

    alone = results(None)  # each student loads its own base, as before the cache
    cache = theorem.TheoremCache()
    shared = results(cache)
    # A perturbation not undone, or an adapter left on the base, would change the later students' numbers.
    assert json.dumps(shared, sort_keys=True) == json.dumps(alone, sort_keys=True)
    assert len({r["cosine_first_step_perturbed"] for r in shared.values()}) == 4
    assert cache.loads == 1 and cache.first_steps == 2
    # A cache that may not copy the base reloads it after every perturbed student: same numbers again.
    tight = theorem.TheoremCache(max_copy_bytes=0)
    assert json.dumps(results(tight), sort_keys=True) == json.dumps(alone, sort_keys=True)
    assert tight.loads == 4 and tight.first_steps == 2
