"""Chats to token ids for the LM stages, through the hf backend's `encode_chat`, so training and
evaluation see exactly the template that generation used."""

from __future__ import annotations

from typing import Any

from sublearn.backends.base import Chat
from sublearn.backends.hf import encode_chat, reply_ids

__all__ = ["prompt_ids", "example_ids", "reply_ids"]


def prompt_ids(tokenizer: Any, chat: Chat) -> list[int]:
    """Token ids of `chat` followed by the assistant header: what a model sees before it answers."""
    return encode_chat(tokenizer, chat, add_generation_prompt=True)


def example_ids(tokenizer: Any, chat: Chat, completion: str) -> tuple[list[int], int]:
    """Token ids of `chat` + the assistant's `completion` (with the template's end-of-turn), and the
    number of leading prompt tokens (which get no loss).

    The prompt part is exactly `prompt_ids(chat)`, so the student is trained on the same template it
    is evaluated with."""
    prompt = prompt_ids(tokenizer, chat)
    full = encode_chat(tokenizer, [*chat, {"role": "assistant", "content": completion}], add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        # Templates that re-render earlier turns differently once an answer follows: fall back to
        # prompt + tokenized completion + end of turn, which is what generation would produce.
        eos = tokenizer.eos_token_id
        full = prompt + list(tokenizer(completion, add_special_tokens=False).input_ids) + ([eos] if eos is not None else [])
    return full, len(prompt)
