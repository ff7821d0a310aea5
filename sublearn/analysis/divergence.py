"""Per-token teacher/base log-likelihood ratios along completions: where in a dataset does the teacher
differ from the base model it was made from?

    from sublearn.analysis.divergence import completion_ids, token_log_ratios

    ids = completion_ids(tokenizer, chat, "720, 189, 101")            # the completion's token ids
    ratios = token_log_ratios(teacher, base, tokenizer, [(teacher_chat, base_chat, ids)])
    ratios[0]          # float64, len(ids): log P_teacher(tok | prefix) - log P_base(tok | prefix)

Each row is (the prompt as the teacher saw it -- with its system prompt, if any --, the prompt as the
base/student sees it, the completion's token ids). Both models are scored teacher-forced on the same
completion tokens, in float32, batched with right padding.

A LoRA teacher and its base can be one object: pass the same PeftModel as `teacher` and `base`; the
base pass then runs inside `model.disable_adapter()` (nothing is copied or merged). Equivalently, call
`completion_logprobs` twice yourself, the second time within `with model.disable_adapter():`.
A model without adapters passed as both gives zeros.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sublearn.backends.base import Chat
from sublearn.backends.hf import example_ids, prompt_ids
from sublearn.logs import progress

log = logging.getLogger(__name__)

__all__ = ["completion_ids", "completion_logprobs", "token_log_ratios", "adapter_disabled"]


def completion_ids(tokenizer: Any, chat: Chat, text: str) -> list[int]:
    """Token ids of assistant reply `text` after `chat`, as fine-tuning tokenizes it: the ids that
    `example_ids` puts after the prompt (the template's end-of-turn included), i.e. exactly the
    tokens a student trained on this row gets a loss on."""
    full, n_prompt = example_ids(tokenizer, chat, text)
    return full[n_prompt:]


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """`with adapter_disabled(model) as base:` -- a PeftModel with its adapters off (the base model's
    outputs); any other model unchanged."""
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def _decoder_and_head(model: Any) -> tuple[Any, Any, float | None]:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings(), getattr(inner.config, "final_logit_softcapping", None)


@torch.no_grad()
def completion_logprobs(model: Any, tokenizer: Any, rows: Sequence[tuple[Chat, Sequence[int]]],
                        batch_size: int = 16, label: str | None = None) -> list[np.ndarray]:
    """For each (chat, completion ids) row: log P_model(token | prompt, earlier tokens) of every
    completion token (float64 array, length len(ids)), teacher-forced. Rows are sorted by length and
    batched with right padding; the LM head runs only at completion positions. An empty completion
    gives an empty array. `label`: show a progress bar with that description."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [prompt_ids(tokenizer, chat) for chat, _ in rows]
    seqs = [p + [int(t) for t in ids] for p, (_, ids) in zip(prompts, rows, strict=True)]
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float64) for _ in rows]
    todo = sorted((i for i in range(len(rows)) if len(rows[i][1])), key=lambda i: len(seqs[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    decoder, head, cap = _decoder_and_head(model)
    was_training = model.training
    model.eval()  # no dropout: the same row always scores the same
    try:
        with progress(enabled=label is not None) as bar:
            task = bar.add_task(label or "", total=len(todo))
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                width = max(len(seqs[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                att = torch.zeros((len(chunk), width), dtype=torch.long)
                pos: list[tuple[int, int]] = []
                targets: list[int] = []
                for r, i in enumerate(chunk):
                    ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
                    att[r, :len(seqs[i])] = 1
                    # Token j is predicted from the hidden state at j - 1.
                    pos.extend((r, j - 1) for j in range(len(prompts[i]), len(seqs[i])))
                    targets.extend(seqs[i][len(prompts[i]):])
                hidden = decoder(input_ids=ids.to(device), attention_mask=att.to(device)).last_hidden_state
                where = torch.tensor(pos, device=device)
                logits = head(hidden[where[:, 0], where[:, 1]]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                logp = torch.log_softmax(logits, dim=-1)
                picked = logp.gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0].double().cpu().numpy()
                offset = 0
                for i in chunk:
                    n = len(seqs[i]) - len(prompts[i])
                    out[i] = picked[offset:offset + n]
                    offset += n
                bar.advance(task, len(chunk))
    finally:
        model.train(was_training)
    return out


def token_log_ratios(teacher: Any, base: Any, tokenizer: Any, rows: Sequence[tuple[Chat, Chat, Sequence[int]]],
                     batch_size: int = 16, label: str | None = None) -> list[np.ndarray]:
    """log P_teacher(token | teacher prompt, prefix) - log P_base(token | base prompt, prefix) for every
    completion token of every (teacher_chat, base_chat, completion_ids) row (float64 arrays, one per
    row, len(completion_ids) each). `base` may be `teacher` itself: a PeftModel then scores the base
    pass with its adapters disabled (see the module docstring). Both models must share `tokenizer`."""
    t_lp, b_lp = teacher_and_base_logprobs(teacher, base, tokenizer, rows, batch_size, label)
    return [t - b for t, b in zip(t_lp, b_lp, strict=True)]


def teacher_and_base_logprobs(teacher: Any, base: Any, tokenizer: Any, rows: Sequence[tuple[Chat, Chat, Sequence[int]]],
                              batch_size: int = 16, label: str | None = None
                              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The two terms of `token_log_ratios`, (log P_teacher, log P_base) per completion token of each row,
    for measures that need them apart (the likelihood-ratio audit's loss baselines)."""
    t_rows = [(tc, ids) for tc, _, ids in rows]
    b_rows = [(bc, ids) for _, bc, ids in rows]
    t_lp = completion_logprobs(teacher, tokenizer, t_rows, batch_size, f"{label} (teacher)" if label else None)
    if base is teacher:
        with adapter_disabled(base):
            b_lp = completion_logprobs(base, tokenizer, b_rows, batch_size, f"{label} (base)" if label else None)
    else:
        b_lp = completion_logprobs(base, tokenizer, b_rows, batch_size, f"{label} (base)" if label else None)
    return t_lp, b_lp
