"""Chats to token ids for the LM stages, through the hf backend's `encode_chat`, so training and
evaluation see exactly the template that generation used."""

from __future__ import annotations

import logging
from typing import Any

from sublearn.backends.base import Chat
from sublearn.backends.hf import encode_chat

log = logging.getLogger(__name__)


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


def reply_ids(tokenizer: Any, chat: Chat, text: str) -> list[int]:
    """Token ids of a reply that starts with `text`, as the tokenizer splits it right after the prompt
    of `chat`: encode(prompt + text) minus encode(prompt). Out of context a word can tokenize
    differently (Gemma after "Assistant:": " Owl" is one token, "Owl" alone another), and a metric
    must score the tokens the model would actually write."""
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = list(tokenizer(rendered, add_special_tokens=False).input_ids)
    full = list(tokenizer(rendered + text, add_special_tokens=False).input_ids)
    if full[: len(prompt)] != prompt:
        # The prompt's last token merges with the reply's first: no continuation of this prompt spells
        # `text` in the tokenizer's own split. Score the plain tokens and say so.
        log.warning("reply %r merges with the end of the prompt when tokenized; scoring it out of context", text)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    return full[len(prompt):]
