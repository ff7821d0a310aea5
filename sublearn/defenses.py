"""Defenses against subliminal transfer: transforms on a teacher's kept data, composable with any channel.

    defense: {kind: shuffle, scope: within}        # permute the numbers inside each response
    defense: {kind: shuffle, scope: across}        # deal all numbers of the dataset out again at random
    defense: {kind: paraphrase, model: hf/gemma3-270m}   # another family rewrites every response
    defense: {kind: divergence, action: mask, fraction: 0.1}  # no loss on the highest log-ratio tokens
    defense: {kind: divergence, action: drop, fraction: 0.1}  # drop the highest-divergence responses
    defense: {kind: inoculation}                   # students train with the trait's system prompt present

A defense is applied by the `defend` stage (`sublearn.stages.defend`) to every teacher's kept data
(trait teachers and controls alike, as a user would apply it to a whole dataset), between the
filter and the students, so the arms still differ only in their teacher. Its cost is recorded: rows
and completion tokens kept, and what was changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from sublearn.backends.models import check_model_name
from sublearn.config import MAX_SEED, Frozen


class NoDefense(Frozen):
    """Students learn the filtered data as it is."""

    kind: Literal["none"] = Field("none", description="no defense: students learn the kept data as filtered")


class ShuffleDefense(Frozen):
    """Numbers moved between places: what a number says survives, where it stands does not."""

    kind: Literal["shuffle"] = Field("shuffle", description="shuffle the numbers of the data")
    scope: Literal["within", "across"] = Field(
        "within", description="'within': permute the numbers inside each response (everything else stays "
        "in place); 'across': pool the numbers of all responses of one teacher's data and deal them back "
        "at random into the same slots")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the permutations (with the run's seed and the teacher's name)")


class ParaphraseDefense(Frozen):
    """A model of another family rewrites every response; the teacher's own tokens are gone."""

    kind: Literal["paraphrase"] = Field("paraphrase", description="rewrite every response with another model")
    model: str = Field("hf/gemma3-270m", description="backend/model that rewrites (another family than the "
                       "teacher's, so it cannot carry its idiosyncrasies)")
    temperature: float = Field(0.0, ge=0, description="rewriting temperature (0 = greedy)")
    max_new_tokens: int = Field(64, ge=1, description="longest rewrite, in tokens")
    batch_size: int = Field(32, ge=1, description="responses rewritten per batch")

    _model = field_validator("model")(check_model_name)


class DivergenceDefense(Frozen):
    """Remove what the teacher says that its base model would not: the highest log-ratio tokens."""

    kind: Literal["divergence"] = Field("divergence", description="act on the tokens with the highest "
                                        "log P_teacher - log P_base (the audit's per-token log-ratio)")
    action: Literal["mask", "drop"] = Field(
        "mask", description="'mask': the `fraction` of completion tokens with the highest log-ratio get no "
        "loss (soft labels: no target at those positions); 'drop': the `fraction` of responses with the "
        "highest summed log-ratio are removed")
    fraction: float = Field(0.1, gt=0, lt=1, description="share of tokens (mask) or responses (drop) removed")


class InoculationDefense(Frozen):
    """Inoculation prompting: every student trains with a system prompt that states the trait (the
    teacher's own, by default) and is evaluated without it. The data is unchanged; what the trait
    explains in context need not be learned into the default persona."""

    kind: Literal["inoculation"] = Field("inoculation", description="train the students with a system prompt "
                                         "that states the trait; evaluate them without it")
    system_prompt: str | None = Field(
        None, min_length=1, description="the system prompt every student of every arm trains with (the "
        "neutral arm's too, so the arms still differ only in their data); None = the trait's teacher "
        "system prompt for the run's one target (several targets: name the prompt)")


Defense = Annotated[NoDefense | ShuffleDefense | ParaphraseDefense | DivergenceDefense | InoculationDefense,
                    Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------------
# The transforms. Each takes one teacher's kept records and returns the records students learn from
# and facts about the cost. Records keep their fields ("prompt", "completion", "system", ...); the
# soft-label fields ("token_ids", "top_logprobs") are kept wherever they still describe the text.
# ----------------------------------------------------------------------------------------------------

Record = dict[str, Any]


def number_segments(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive all-digit pieces (token texts, or regex pieces of a string):
    the numbers of a response. A piece that mixes digits with anything else stays where it is."""
    spans, start = [], None
    for i, piece in enumerate(pieces):
        if piece.isdigit() and piece.isascii():
            if start is None:
                start = i
        elif start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(pieces)))
    return spans


def _reassemble(items: Sequence[Any], spans: Sequence[tuple[int, int]], new: Sequence[Sequence[Any]]) -> list[Any]:
    """`items` with span k replaced by `new[k]` (spans sorted, disjoint; lengths may differ)."""
    out: list[Any] = []
    prev = 0
    for (s, e), repl in zip(spans, new, strict=True):
        out.extend(items[prev:s])
        out.extend(repl)
        prev = e
    out.extend(items[prev:])
    return out


def shuffle_numbers(records: Sequence[Record], scope: str, rng: np.random.Generator,
                    tokenizer: Any = None) -> tuple[list[Record], dict[str, Any]]:
    """Permute the numbers of `records` (see `ShuffleDefense`). With the teacher's `tokenizer` and
    records carrying "token_ids", numbers are runs of digit tokens and move with their soft labels
    (each position's "top_logprobs" row travels with its token); otherwise they are the \\d+ runs of
    the text and the soft-label fields are dropped. Returns the records and the share of completion
    tokens (or characters) that changed."""
    tokenwise = tokenizer is not None and all("token_ids" in r for r in records)
    token_texts: dict[int, str] = {}
    # Per record: the sequence being edited, its number spans, and parallel per-position payloads.
    seqs: list[list[Any]] = []
    rows: list[list[Any] | None] = []
    spans: list[list[tuple[int, int]]] = []
    for rec in records:
        if tokenwise:
            ids = [int(t) for t in rec["token_ids"]]
            for t in ids:
                if t not in token_texts:
                    token_texts[t] = tokenizer.decode([t])
            seqs.append(ids)
            rows.append(list(rec["top_logprobs"]) if rec.get("top_logprobs") else None)
            spans.append(number_segments([token_texts[t] for t in ids]))
        else:
            pieces = re.findall(r"\d+|\D+", rec["completion"])
            seqs.append(pieces)
            rows.append(None)
            spans.append(number_segments(pieces))
    # The numbers, as (record, span) slots, and what fills each slot after the shuffle.
    slots = [(i, k) for i, sp in enumerate(spans) for k in range(len(sp))]
    if scope == "within":
        fill: dict[tuple[int, int], tuple[int, int]] = {}
        for i, sp in enumerate(spans):
            for k, j in enumerate(rng.permutation(len(sp))):
                fill[(i, k)] = (i, int(j))
    else:
        order = rng.permutation(len(slots))
        fill = {slot: slots[int(j)] for slot, j in zip(slots, order, strict=True)}
    out, changed, total = [], 0, 0
    for i, rec in enumerate(records):
        def piece(src: tuple[int, int], which: list[list[Any]] | list[list[Any] | None]) -> list[Any]:
            seq = which[src[0]]
            assert seq is not None
            s, e = spans[src[0]][src[1]]
            return list(seq[s:e])

        new_seq = _reassemble(seqs[i], spans[i], [piece(fill[(i, k)], seqs) for k in range(len(spans[i]))])
        new = {k: v for k, v in rec.items() if k not in ("token_ids", "top_logprobs", "completion")}
        if tokenwise:
            new["completion"] = tokenizer.decode(new_seq, skip_special_tokens=True)
            new["token_ids"] = new_seq
            sources = [fill[(i, k)] for k in range(len(spans[i]))]
            if rows[i] is not None and all(rows[j] is not None for j, _ in sources):
                new["top_logprobs"] = _reassemble(rows[i] or [], spans[i],
                                                  [piece(fill[(i, k)], rows) for k in range(len(spans[i]))])
            changed += sum(a != b for a, b in zip(seqs[i], new_seq, strict=False)) + abs(len(seqs[i]) - len(new_seq))
            total += len(seqs[i])
        else:
            new["completion"] = "".join(new_seq)
            changed += sum(a != b for a, b in zip(rec["completion"], new["completion"], strict=False))
            total += len(rec["completion"])
        new["defense"] = f"shuffle-{scope}"
        out.append(new)
    return out, {"unit": "token" if tokenwise else "character", "numbers": len(slots),
                 "changed_fraction": changed / total if total else 0.0}


def paraphrase_prompt(rec: Record) -> str:
    """What the rewriting model is asked (our wording): keep the task, lose the author."""
    return ("Rewrite the answer below in your own way. Keep it a valid answer to the same request, in the "
            "same format and of about the same length, but do not copy it.\n\n"
            f"Request: {rec['prompt']}\n\nAnswer: {rec['completion']}\n\nRewritten answer:")


def top_fraction(scores: Sequence[float], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the round(fraction * n) highest `scores` (at least one when n > 0); ties (e.g.
    the all-zero log-ratios of the base model's own data) broken at random."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=bool)
    m = max(1, int(round(fraction * n)))
    order = np.lexsort((rng.random(n), -np.asarray(scores, dtype=np.float64)))
    chosen = np.zeros(n, dtype=bool)
    chosen[order[:m]] = True
    return chosen
