"""What every backend offers: batched chat generation with a seed, optionally with top-k log-probs.

A chat is a list of {"role": ..., "content": ...} dicts (OpenAI message format). Backends are
addressed `backend/model` through `sublearn.backends.get_backend` (the one registry).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.errors import SublearnError

Chat = list[dict[str, str]]


def system_user_chat(system: str | None, user: str) -> Chat:
    """The chat [system turn if `system`, user turn]: what a teacher or an evaluated model is asked."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one completion per chat."""

    temperature: float = 1.0
    """0 means greedy decoding."""
    max_new_tokens: int = 64
    top_p: float = 1.0
    logprobs_top_k: int = 0
    """If > 0, store the top-k next-token log-probs (full softmax, before any constraint) at every
    completion position."""
    regex: str | None = None
    """If set, the completion's text must fully match this regular expression (Python/Rust syntax,
    no anchors): local backends mask every token that would leave the language and allow end of
    answer only on a full match (`sublearn.backends.constraint`); vLLM uses its structured outputs."""


@dataclass
class Completion:
    """One generated answer."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    """Completion token ids (local backends); empty where an API does not return them."""
    top_logprobs: list[list[tuple[int | str, float]]] | None = None
    """Per completion token, the model's top-k (token, log-prob), when requested: token ids for
    local backends (hf, vllm), token strings for APIs that only return text."""
    finish_reason: str = "stop"
    """"stop" (end of answer) or "length" (hit max_new_tokens)."""


class Backend(ABC):
    """A model that writes chat completions."""

    name: str = "backend"

    @abstractmethod
    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        """One completion per chat, in order. The same chats, params and seed give the same output
        (bit-for-bit on CPU for local backends)."""

    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        """For each chat, the log-probs of the `top_k` most likely first tokens of the reply, keyed by
        token text. Used by one-token LLM judges (e.g. P("no") for "does this mention an owl?")."""
        raise NotImplementedError(f"{self.name}: first-token log-probs are not supported by this backend")

    def continuation_logprobs(self, chats: Sequence[Chat], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        """For chat i and each text of `continuations[i]`, log P(the reply starts with that text) at
        temperature 1 (teacher-forced scoring). Local backends only (an API returns no prompt log-probs)."""
        raise NotImplementedError(f"{self.name}: teacher-forced scoring is not supported by this backend")

    def generate_batched(self, calls: Sequence[tuple[Sequence[Chat], int]], params: SamplingParams, job_dir: Path,
                         **poll: Any) -> int:
        """Answer every request of `generate(chats, params, seed)` for each (chats, seed) of `calls`
        through one resumable Batch API job recorded in `job_dir`, filling the request cache that those
        `generate` calls then read; returns the number of requests submitted. APIs with a Batch API only."""
        raise SublearnError(f"generate.api_batch: the generation backend {self.name} has no Batch API; use an "
                            "openai/... backend (generate.backend) or set generate.api_batch: false")

    @property
    def teacher_forces(self) -> bool:
        """Whether this backend implements `continuation_logprobs` (local models do, APIs do not)."""
        return type(self).continuation_logprobs is not Backend.continuation_logprobs

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""


def request_seed(seed: int, index: int) -> int:
    """The seed of sample (seed, index), chat `index` of a `generate(..., seed)` call, on every backend:
    a 31-bit int, so every provider accepts it."""
    return int(np.random.SeedSequence([seed, index, 0x0A11]).generate_state(1)[0]) & 0x7FFFFFFF


def batch_seed(seed: int, teacher: str, batch: int) -> int:
    """The seed of generation batch `batch` of teacher `teacher` in a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, zlib.crc32(teacher.encode()), batch]).generate_state(1)[0])
