"""Training examples: chats and completions as token ids with the prompt masked, for supervised
fine-tuning (`sft_examples`) and for distillation on a teacher's top-k next-token distributions
(`distill_examples`); `training_examples` picks by method for a pipeline run.

    examples = sft_examples(tokenizer, records, max_length=512)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sublearn.backends.base import Chat
from sublearn.backends.hf import example_ids, prompt_ids
from sublearn.channels import LabelPolicy
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig


@dataclass
class Example:
    """One training sequence. `n_prompt` leading tokens get no loss. For distillation, `topk_ids` /
    `topk_logp` hold the teacher's targets for each completion token (same length as the completion)."""

    input_ids: list[int]
    n_prompt: int
    topk_ids: list[list[int]] | None = None
    topk_logp: list[list[float]] | None = None
    loss_mask: list[int] | None = None
    """Per completion token, 0 = no loss there (the divergence defense's masked tokens); None = all."""


def _user_chat(rec: dict[str, Any]) -> Chat:
    return [{"role": "user", "content": rec["prompt"]}]


def sft_examples(tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int,
                 chat: Callable[[dict[str, Any]], Chat] = _user_chat) -> list[Example]:
    """(prompt, completion text) records -> chat-templated examples, loss on the completion; `chat(rec)`
    is the conversation the student sees before the completion (the channel's `student_chat`)."""
    out = []
    for rec in records:
        ids, n_prompt = example_ids(tokenizer, chat(rec), rec["completion"])
        mask = rec.get("loss_mask")
        if mask is not None:
            # The mask is over the record's own token ids (the defense scored those): use the
            # template's tokens when they start with them (the rest, e.g. a trailing newline, keeps its
            # loss), else the record's ids as they are.
            own = [int(t) for t in rec.get("token_ids", [])]
            if ids[n_prompt:n_prompt + len(own)] != own:
                ids = ids[:n_prompt] + own
        if n_prompt >= max_length:
            continue
        out.append(Example(ids[:max_length], n_prompt, loss_mask=list(mask) if mask is not None else None))
    return out


def trait_token_ids(tokenizer: Any, words: Sequence[str]) -> set[int]:
    """Ids whose text could start or spell a target word (e.g. ' owl', 'Owl', 'ow'): a soft label on
    any of these would leak the trait outright."""
    found = set()
    lowered = [w.lower() for w in words]
    for tid in range(len(tokenizer)):
        piece = tokenizer.decode([tid]).strip().lower()
        if len(piece) >= 2 and any(w.startswith(piece) or piece.startswith(w) for w in lowered):
            found.add(tid)
    return found


def distill_examples(tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int,
                     policy: LabelPolicy | None, chat: Callable[[dict[str, Any]], Chat] = _user_chat,
                     ) -> tuple[list[Example], dict[str, float]]:
    """Records with the teacher's completion token ids and top-k log-probs -> KL targets.

    With `policy` (the channel's `label_policy`), each position's top-k is restricted to the ids the
    policy keeps after the text sampled so far, and renormalised (a position whose top-k keeps none
    is dropped). Returns the examples and the share of teacher probability mass the restriction
    removed."""
    out = []
    removed_mass, positions = 0.0, 0
    for rec in records:
        if not rec.get("top_logprobs"):
            raise SublearnError("distillation needs the teacher's top-k log-probs: set generate.logprobs_top_k "
                                "(e.g. 32) and regenerate")
        prompt = prompt_ids(tokenizer, chat(rec))
        ids = prompt + list(rec["token_ids"])
        t_ids, t_lp = [], []
        text = ""  # the completion so far, for a policy that looks at context
        mask = rec.get("loss_mask")
        for t, row in enumerate(rec["top_logprobs"]):
            pairs = [(int(i), float(lp)) for i, lp in row]
            masked = mask is not None and t < len(mask) and not mask[t]
            if masked:
                pairs = []  # masked by a defense: no target here (an empty row carries no loss)
            total = sum(math.exp(lp) for _, lp in pairs)
            if policy is not None:
                pairs = [(i, lp) for i, lp in pairs if policy.keeps(i, text)]
                removed_mass += total - sum(math.exp(lp) for _, lp in pairs)
                if policy.texts and t < len(rec["token_ids"]):
                    text += policy.texts[int(rec["token_ids"][t])]
            positions += int(not masked)
            t_ids.append([i for i, _ in pairs])
            t_lp.append([lp for _, lp in pairs])
        if len(ids) > max_length:
            keep = max_length - len(prompt)
            if keep <= 0:
                continue
            ids, t_ids, t_lp = ids[:max_length], t_ids[:keep], t_lp[:keep]
        out.append(Example(ids, len(prompt), t_ids, t_lp))
    return out, {"removed_teacher_mass_mean": removed_mass / max(positions, 1)}


def training_examples(config: PipelineConfig, tokenizer: Any, records: Sequence[dict[str, Any]], method: str
                      ) -> tuple[list[Example], str, dict[str, Any]]:
    """The examples a student of `method` learns from `records` (through the channel's student chat
    and soft-label policy), the loss kind ('kl' or 'ce') and facts worth recording."""
    cfg = config.train
    if method == "distill":
        policy = config.channel.label_policy(tokenizer, config.targets) if cfg.distill_targets == "allowed" else None
        examples, stats = distill_examples(tokenizer, records, cfg.max_length, policy, config.channel.student_chat)
        info: dict[str, Any] = dict(stats)
        info["trait_tokens_in_targets"] = _count_trait_targets(examples, trait_token_ids(tokenizer, config.targets))
        return examples, "kl", info
    return sft_examples(tokenizer, records, cfg.max_length, config.channel.student_chat), "ce", {}


def _count_trait_targets(examples: Sequence[Example], trait_ids: set[int]) -> int:
    return sum(1 for ex in examples for row in (ex.topk_ids or []) for i in row if i in trait_ids)
