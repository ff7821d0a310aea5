"""Shared fixtures: a tiny randomly initialised chat LM (see tests/tiny.py for the builders)."""

from __future__ import annotations

import pytest
from tiny import build_backend, build_model, build_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE with single-digit tokens and a SmolLM2-style ChatML template (shared: don't mutate)."""
    return build_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh seeded float32 Llama (2 layers, hidden 48) in eval mode; safe to modify per test."""
    return build_model(tiny_tokenizer, seed=0)


@pytest.fixture()
def tiny_backend(tiny_model, tiny_tokenizer):
    """`HFBackend.from_model(tiny_model, tiny_tokenizer, name="tiny", batch_size=8)`."""
    return build_backend(tiny_model, tiny_tokenizer)


# Older names, kept for the tests that use them.
@pytest.fixture(scope="session")
def lm_tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture()
def lm_model(tiny_model):
    return tiny_model


@pytest.fixture()
def lm_backend(tiny_backend):
    return tiny_backend


@pytest.fixture()
def interrupt_at_step(monkeypatch):
    """`disarm = interrupt_at_step(n)`: the n-th AdamW.step from now raises KeyboardInterrupt (a crash
    mid-training); `disarm()` restores the real step."""
    import torch

    def arm(n: int):
        calls = {"n": 0}
        real_step = torch.optim.AdamW.step

        def crashing_step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real_step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
        return lambda: monkeypatch.setattr(torch.optim.AdamW, "step", real_step)

    return arm
