"""One place that turns chats into token ids, so training and evaluation use the identical template."""

from __future__ import annotations

from typing import Any

from sublearn.backends.base import Chat


def render(tokenizer: Any, chat: Chat, add_generation_prompt: bool) -> str:
    text: str = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text


def prompt_ids(tokenizer: Any, chat: Chat) -> list[int]:
    """Token ids of `chat` followed by the assistant header: what a model sees before it answers."""
    return list(tokenizer(render(tokenizer, chat, True), add_special_tokens=False).input_ids)


def example_ids(tokenizer: Any, chat: Chat, completion: str) -> tuple[list[int], int]:
    """Token ids of `chat` + the assistant's `completion` (with the template's end-of-turn), and the
    number of leading prompt tokens (which get no loss).

    The prompt part is exactly `prompt_ids(chat)`, so the student is trained on the same template it
    is evaluated with."""
    prompt = prompt_ids(tokenizer, chat)
    full_text = render(tokenizer, [*chat, {"role": "assistant", "content": completion}], False)
    full = list(tokenizer(full_text, add_special_tokens=False).input_ids)
    if full[: len(prompt)] != prompt:
        # Templates that re-render earlier turns differently once an answer follows: fall back to
        # prompt + tokenized completion + end of turn, which is what generation would produce.
        eos = tokenizer.eos_token_id
        full = prompt + list(tokenizer(completion, add_special_tokens=False).input_ids) + ([eos] if eos is not None else [])
    return full, len(prompt)
