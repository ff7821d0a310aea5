"""A backend that puts fixed conversation turns in front of every chat: in-context learning.

    icl = ContextBackend(backend, [{"role": "user", "content": "Continue: 1, 2"},
                                   {"role": "assistant", "content": "3, 4"}, ...])
    icl.generate(chats, params, seed)        # = backend.generate([with_context(c) for c in chats], ...)
    icl.continuation_logprobs(chats, conts)  # any trait's evaluation runs unchanged on "model + context"

The context turns go after a leading system turn (a system prompt stays first, where chat templates
expect it) and before the rest of the chat. The paper's ICL control puts a teacher's data in the
model's context instead of training on it (`sublearn.stages.evaluate` builds the context from the
kept data, `icl.k` examples per draw).
"""

from __future__ import annotations

from collections.abc import Sequence

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams
from sublearn.errors import SublearnError


class ContextBackend(Backend):
    """`inner` with `context` (user/assistant turns) inserted into every chat it is given."""

    def __init__(self, inner: Backend, context: Chat):
        bad = [t.get("role") for t in context if t.get("role") not in ("user", "assistant")]
        if bad:
            raise SublearnError(f"context turns must be user or assistant turns, got roles {bad}")
        self.inner, self.context = inner, [dict(t) for t in context]
        self.name = f"{inner.name}+context({len(context)} turns)"

    def with_context(self, chat: Chat) -> Chat:
        """`chat` with the context turns after its system turn (if it starts with one)."""
        head = 1 if chat and chat[0].get("role") == "system" else 0
        return [*chat[:head], *self.context, *chat[head:]]

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        return self.inner.generate([self.with_context(c) for c in chats], params, seed)

    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        return self.inner.first_token_logprobs([self.with_context(c) for c in chats], top_k)

    def continuation_logprobs(self, chats: Sequence[Chat], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.inner.continuation_logprobs([self.with_context(c) for c in chats], continuations)

    @property
    def teacher_forces(self) -> bool:
        # This class always defines continuation_logprobs; whether it works is the inner backend's answer.
        return self.inner.teacher_forces

    def close(self) -> None:
        self.inner.close()
