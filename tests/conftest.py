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
