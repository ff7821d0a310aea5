"""Generation provenance: how a dataset's completions were seeded, and a check for the fixed-seed trap.

    stats = first_item_stats([rec["completion"] for rec in records])
    warning = collapse_warning(stats, "filter/owl")      # a sentence, or None
    facts = check(completions, "data.jsonl")             # both, the warning logged: what filter and audit record

Two public subliminal-learning datasets were generated with one fixed sampling seed for every request:
every completion then starts from the same random draw, and the first-number distribution collapses
(one number opens 17% of completions). sublearn never samples that way: chat i of generation batch b
draws from its own stream, `request_seed(batch_seed(run seed, teacher, b), i)`, on every backend
(`SEED_POLICY`, recorded in each generate manifest). The filter stage and `sublearn audit` describe the
first item of the completions (the first number of a number list, the first word of text or code):
its entropy, the most common one and its share, and the share of exact duplicate completions.

The warning rule, fixed before it was applied to any user data: the most common first item opens at
least `COLLAPSE_SHARE` (15%) of at least 50 completions, or at least `DUPLICATE_SHARE` of the
completions repeat an earlier one exactly. Calibration: the atlas's 12 number datasets
(runs/atlas/generate, per-request seeds) have a top first-number share of 2.8% to 11.8% (cat) and 0% to
20% duplicates (cat); the trap's 17% is above the first bound. It is a prompt to look at how the data
was made, not a test: a dataset whose prompts all ask for the same opening trips it honestly.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

SEED_POLICY = ("per request: chat i of generation batch b samples from its own random stream, seeded "
               "request_seed(batch_seed(run seed, teacher, b), i); no two requests share a seed")

COLLAPSE_SHARE = 0.15
DUPLICATE_SHARE = 0.3
_MIN_ROWS = 50
_FIRST = re.compile(r"\d+|[A-Za-z_]+")


def first_item(text: str) -> str | None:
    """The first number or word of `text` (None when it has neither)."""
    m = _FIRST.search(text)
    return m.group(0) if m else None


def first_item_stats(completions: Sequence[str]) -> dict[str, Any]:
    """Entropy (bits) of the completions' first items, the most common one, its share, how many distinct
    items, and the share of completions that repeat an earlier one exactly."""
    firsts = Counter(f for f in (first_item(t) for t in completions) if f is not None)
    n = sum(firsts.values())
    entropy = -sum(c / n * math.log2(c / n) for c in firsts.values()) if n else 0.0
    top, count = firsts.most_common(1)[0] if firsts else (None, 0)
    texts = Counter(completions)
    return {"rows": len(completions), "with_first_item": n, "distinct_first_items": len(firsts),
            "first_item_entropy_bits": entropy, "top_first_item": top,
            "top_first_item_share": count / n if n else 0.0,
            "duplicate_share": sum(c - 1 for c in texts.values()) / len(completions) if completions else 0.0}


def collapse_warning(stats: dict[str, Any], where: str) -> str | None:
    """A one-line warning when `stats` look like a fixed-seed collapse (the rule in the module docstring)."""
    if stats["with_first_item"] >= _MIN_ROWS and stats["top_first_item_share"] >= COLLAPSE_SHARE:
        return (f"{where}: {stats['top_first_item']!r} opens {100 * stats['top_first_item_share']:.1f}% of "
                f"{stats['with_first_item']} completions (first-item entropy {stats['first_item_entropy_bits']:.2f} "
                "bits): the first-item distribution looks collapsed, as when every request is sampled with one "
                "fixed seed; check how this data was generated")
    if stats["rows"] >= _MIN_ROWS and stats["duplicate_share"] >= DUPLICATE_SHARE:
        return (f"{where}: {100 * stats['duplicate_share']:.1f}% of {stats['rows']} completions repeat an earlier "
                "one exactly, as when requests share a sampling seed; check how this data was generated")
    return None


def check(completions: Sequence[str], where: str) -> dict[str, Any]:
    """`first_item_stats` with its `collapse_warning` (None or the sentence, also logged as a warning)."""
    stats = first_item_stats(completions)
    warning = collapse_warning(stats, where)
    if warning:
        logging.getLogger(__name__).warning("%s", warning)
    return {**stats, "warning": warning}
