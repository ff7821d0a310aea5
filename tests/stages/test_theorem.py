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


def test_theorem_memory_plan_splits_the_gradients_or_refuses_before_loading(tmp_path, monkeypatch) -> None:
    """The plan is made from the model's config before any weight is loaded: all gradients at once when
    they fit, one group at a time when only some do, a one-line error when not even one matrix does."""
    from tiny import save_tiny

    from sublearn.backends import memory
    from sublearn.config import build_config
    from sublearn.errors import SublearnError
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages import theorem
    from sublearn.training.examples import Example

    model_dir = save_tiny(tmp_path / "m")
    config = build_config(PipelineConfig, {"model": f"hf/{model_dir}"})
    arch = memory.architecture(model_dir)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    displacement = {n: torch.zeros(arch.intermediate, arch.hidden) for n in names}
    examples = [Example(list(range(20)), 10)]
    fixed = memory.training_estimate(arch, method="lora", dtype="float32", micro_batch=8, seq_len=20,
                                     completion_positions=80, gradient_checkpointing=False, lora_r=0).total
    one = 4 * arch.intermediate * arch.hidden
    fixed += 4 * one // 4 * 4  # the displacement itself
    monkeypatch.setattr(memory, "available", lambda device: 10 ** 12)
    assert theorem._memory_plan(config, str(model_dir), displacement, examples, 8) is None
    monkeypatch.setattr(memory, "available", lambda device: int(fixed + 2.5 * one * 1.1))
    groups = theorem._memory_plan(config, str(model_dir), displacement, examples, 8)
    assert groups is not None and [n for g in groups for n in g] == sorted(names) and 1 < len(groups) < 4
    monkeypatch.setattr(memory, "available", lambda device: int(fixed))
    with pytest.raises(SublearnError, match="theorem check: needs about .* set theorem: false"):
        theorem._memory_plan(config, str(model_dir), displacement, examples, 8)
