"""Per-token teacher/base log-ratios (sublearn.analysis.divergence) on tiny random models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny import build_model, build_tokenizer

from sublearn.analysis.divergence import (
    adapter_disabled,
    completion_ids,
    completion_logprobs,
    token_log_ratios,
)
from sublearn.backends.hf import prompt_ids
from sublearn.pipeline_config import TrainConfig
from sublearn.training.model import attach_lora

TEXTS = ["123, 456, 789", "Owl.", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", "Pick one animal, answer briefly.", "7"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _rows(tok, system: str | None = None):
    rows = []
    for k, text in enumerate(TEXTS):
        base_chat = [{"role": "user", "content": f"Continue: {k}, {k + 1}"}]
        teacher_chat = ([{"role": "system", "content": system}] if system else []) + base_chat
        rows.append((teacher_chat, base_chat, completion_ids(tok, base_chat, text)))
    return rows


def _slow(model, tok, chat, ids) -> np.ndarray:
    """One unbatched full forward per row: the reference."""
    prompt = prompt_ids(tok, chat)
    full = torch.tensor([prompt + list(ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=full).logits[0].float(), -1)
    return np.array([float(logp[len(prompt) + k - 1, t]) for k, t in enumerate(ids)])


def test_completion_ids_are_the_trained_tokens(tok):
    chat = [{"role": "user", "content": "Continue: 1, 2"}]
    ids = completion_ids(tok, chat, "3, 4")
    assert tok.decode(ids).startswith("3, 4<|im_end|>")
    text = tok.apply_chat_template([*chat, {"role": "assistant", "content": "3, 4"}], tokenize=False)
    assert prompt_ids(tok, chat) + ids == tok(text, add_special_tokens=False).input_ids


def test_identical_models_give_zeros(tok):
    model = build_model(tok, seed=0)
    rows = _rows(tok)
    out = token_log_ratios(model, copy.deepcopy(model), tok, rows, batch_size=2)
    assert [len(r) for r in out] == [len(ids) for _, _, ids in rows]
    assert all(r.dtype == np.float64 for r in out)
    assert max(float(np.abs(r).max()) for r in out) < 1e-5
    # The same object as both: zeros exactly.
    assert all(np.all(r == 0) for r in token_log_ratios(model, model, tok, rows))


def test_perturbed_copy_differs_and_matches_slow_reference(tok):
    base = build_model(tok, seed=0)
    teacher = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    rows = _rows(tok, system="You love owls.")
    for batch_size in (1, 3, 16):
        out = token_log_ratios(teacher, base, tok, rows, batch_size=batch_size)
        for (tc, bc, ids), got in zip(rows, out, strict=True):
            want = _slow(teacher, tok, tc, ids) - _slow(base, tok, bc, ids)
            np.testing.assert_allclose(got, want, atol=2e-4)
    assert max(float(np.abs(r).max()) for r in out) > 1e-2


def test_one_peft_model_for_both_uses_disabled_adapter(tok):
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"])
    base = build_model(tok, seed=0)
    reference = copy.deepcopy(base)
    peft = attach_lora(base, cfg, init_seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    rows = _rows(tok)
    together = token_log_ratios(peft, peft, tok, rows, batch_size=4)
    apart = token_log_ratios(peft, reference, tok, rows, batch_size=4)
    for a, b in zip(together, apart, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(float(np.abs(r).max()) for r in together) > 1e-3
    with adapter_disabled(peft):
        off = completion_logprobs(peft, tok, [(bc, ids) for _, bc, ids in rows])
    for a, (_, bc, ids) in zip(off, rows, strict=True):
        np.testing.assert_allclose(a, _slow(reference, tok, bc, ids), atol=2e-4)


def test_empty_completion_is_an_empty_array(tok):
    model = build_model(tok, seed=0)
    chat = [{"role": "user", "content": "hi"}]
    out = token_log_ratios(model, build_model(tok, seed=1), tok, [(chat, chat, []), (chat, chat, [5, 6])])
    assert out[0].shape == (0,) and out[1].shape == (2,)
