"""Filter stage: keep only completions that are plainly number lists, with a reason for every reject.

Filters are named predicates returning a reject reason or None, checked in order: truncated (cut by
generate.max_new_tokens), format (`parse_numbers`: strict by default, as the paper's reference
parser), banned numbers, target words; then the optional LLM judge. The stage records counts per
reason, kept/total, and subsamples the survivors deterministically to `filter.keep`.

    python -m sublearn.cli run CONFIG --only filter
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sublearn.errors import SublearnError
from sublearn.lm.config import PipelineConfig
from sublearn.rundir import (
    MANIFEST,
    JsonlAppender,
    begin_stage,
    finish_stage,
    read_json,
    read_jsonl,
    upstream_hash,
    write_json,
)

log = logging.getLogger(__name__)

_ASCII_DIGITS = re.compile(r"[0-9]+")


def parse_numbers(text: str, max_numbers: int = 10, max_value: int = 999,
                  whitespace: Literal["strict", "lenient"] = "strict") -> tuple[list[int] | None, str | None]:
    """Parse a completion strictly as a number list (spec §2). Returns (numbers, None) or (None, reason).

    Accepted: one optional trailing "." and one optional wrapping [] or (); a separator taken from
    between the first two numbers that reduces to "", "," or ";" once whitespace is stripped, used
    everywhere; ASCII digits only; at most `max_numbers` numbers, each in 0..`max_value`.

    `whitespace="strict"` (the default) matches the paper's reference parser: nothing may surround the
    list, neither around the whole text (before the "." included) nor just inside the brackets, so
    "759 ", " 1, 2", "[ 1, 2 ]", "( 3 )" and "1, 2 ." are rejected as "surrounding_whitespace".
    `"lenient"` strips such whitespace first. A text with another defect gets that defect's reason in
    both modes, so "surrounding_whitespace" counts exactly the texts that lenient mode would keep.
    """
    numbers, reason = _parse_lenient(text, max_numbers, max_value)
    if numbers is not None and whitespace == "strict" and _surrounding_whitespace(text):
        return None, "surrounding_whitespace"
    return numbers, reason


def _surrounding_whitespace(text: str) -> bool:
    """Whitespace the reference parser would not strip: around the text or just inside its brackets."""
    s = text[:-1] if text.endswith(".") else text
    if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "(" and s[-1] == ")")):
        s = s[1:-1]
    return s != s.strip()


def _parse_lenient(text: str, max_numbers: int, max_value: int) -> tuple[list[int] | None, str | None]:
    s = text.strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "(" and s[-1] == ")")):
        s = s[1:-1].strip()
    if not s:
        return None, "empty"
    first = _ASCII_DIGITS.match(s)
    if first is None:
        return None, _classify(s)
    rest = s[first.end():]
    if not rest:
        parts = [s]
    else:
        nxt = _ASCII_DIGITS.search(rest)
        if nxt is None:
            return None, _classify(rest)
        sep = rest[: nxt.start()]
        if sep.strip() not in ("", ",", ";"):
            return None, _classify(sep) if _classify(sep) != "bad_format" else "bad_separator"
        parts = s.split(sep)
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            reason = _classify(part)
            if reason == "bad_format" and any(ch in ",; \t\n" for ch in part):
                reason = "mixed_separators"
            return None, reason
    if len(parts) > max_numbers:
        return None, "too_many_numbers"
    numbers = [int(p) for p in parts]
    if any(n > max_value for n in numbers):
        return None, "out_of_range"
    return numbers, None


def _classify(fragment: str) -> str:
    """Name what is wrong with a fragment that is not plain ASCII digits and a separator."""
    if any(ch.isalpha() for ch in fragment):
        return "contains_words"
    if any(ch.isdigit() and not ch.isascii() for ch in fragment):
        return "non_ascii_digits"
    return "bad_format"


def mentions(words: list[str]) -> Callable[[str], bool]:
    """A case-insensitive whole-word matcher for each word and its plural."""
    if not words:
        return lambda _text: False
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) + "(?:s|es)?" for w in words) + r")\b", re.IGNORECASE)
    return lambda text: pattern.search(text) is not None


def _predicates(config: PipelineConfig) -> list[tuple[str, Callable[[dict[str, Any]], str | None]]]:
    cfg = config.filter
    banned = cfg.banned()
    says_target = mentions(config.targets if cfg.ban_target_words else [])
    # The hf number grammar lets the teacher write one space before the first number when the chat
    # template's generation prompt does not end in whitespace (the plain "Assistant:" template): that
    # space belongs to the template, not to the list, so it is removed before the strict parse. It is
    # the only whitespace the grammar can put around a list; free sampling gets no such allowance.
    grammar_space = config.generate.constraint == "numbers" and cfg.whitespace == "strict"

    def truncated_check(rec: dict[str, Any]) -> str | None:
        # Cut off by generate.max_new_tokens: the list may end mid-number (records without the field pass).
        return "truncated" if rec.get("finish_reason") == "length" else None

    def format_check(rec: dict[str, Any]) -> str | None:
        text = rec["completion"]
        if grammar_space and text.startswith(" "):
            text = text[1:]
        numbers, reason = parse_numbers(text, cfg.max_numbers, cfg.max_value, cfg.whitespace)
        rec["numbers"] = numbers
        return reason

    def banned_check(rec: dict[str, Any]) -> str | None:
        return "banned_number" if any(n in banned for n in rec["numbers"]) else None

    def target_check(rec: dict[str, Any]) -> str | None:
        return "mentions_target" if says_target(rec["completion"]) else None

    return [("truncated", truncated_check), ("format", format_check), ("banned", banned_check),
            ("target", target_check)]


def stage_key(config: PipelineConfig, out: Path, teacher: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, upstream output hashes) of the filter of `teacher`'s data (see `rundir.begin_stage`)."""
    return ({"filter": config.filter.model_dump(mode="json"), "targets": config.targets, "seed": config.seed},
            {"generate": upstream_hash(out / "generate" / teacher)})


def run(config: PipelineConfig, out: Path, teacher: str) -> dict[str, Any]:
    """Filter `out/generate/<teacher>/generated.jsonl` into `out/filter/<teacher>/kept.jsonl` and
    `filter.json` (counts per reason). Skips if already done; otherwise rewrites the outputs from scratch (it is cheap)."""
    stage_dir = out / "filter" / teacher
    src = out / "generate" / teacher / "generated.jsonl"
    if not (src.parent / MANIFEST).is_file():
        raise SublearnError(f"{src}: generation for teacher '{teacher}' has not finished; run the generate stage")
    key, inputs = stage_key(config, out, teacher)
    if begin_stage(stage_dir, key, inputs):
        summary: dict[str, Any] = read_json(stage_dir / "filter.json")
        return summary
    records = read_jsonl(src)
    total = len(records)
    reasons: Counter[str] = Counter()
    survivors: list[dict[str, Any]] = []
    predicates = _predicates(config)
    for rec in records:
        for _name, check in predicates:
            reason = check(rec)
            if reason is not None:
                reasons[reason] += 1
                break
        else:
            survivors.append(rec)
    if config.filter.judge and survivors:
        survivors = _judge(config, survivors, reasons)
    if not survivors:
        raise SublearnError(
            f"{src}: no completion of teacher '{teacher}' passed the filter ({dict(reasons)}); "
            "try generate.constraint=numbers or more generate.n_prompts")
    keep = config.filter.keep
    if len(survivors) > keep:
        rng = np.random.default_rng([config.seed, zlib.crc32(teacher.encode()), 7])
        chosen = np.sort(rng.choice(len(survivors), size=keep, replace=False))
        kept = [survivors[i] for i in chosen]
    else:
        kept = survivors
        if len(survivors) < keep:
            log.warning("teacher %s: only %d of %d wanted completions survived the filter", teacher, len(kept), keep)
    kept_path = stage_dir / "kept.jsonl"
    kept_path.unlink(missing_ok=True)
    with JsonlAppender(kept_path) as fh:
        for rec in kept:
            fh.write(rec)
    summary = {"teacher": teacher, "total": total, "valid": len(survivors), "kept": len(kept),
               "kept_fraction": len(survivors) / total if total else 0.0,
               "rejected": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
               "shortfall": max(0, keep - len(kept))}
    write_json(stage_dir / "filter.json", summary)
    finish_stage(stage_dir, key, inputs, [kept_path], kept=len(kept))
    log.info("filter %s: kept %d / %d (%s)", teacher, len(kept), total, summary["rejected"])
    return summary


def _judge(config: PipelineConfig, survivors: list[dict[str, Any]], reasons: Counter[str]) -> list[dict[str, Any]]:
    """Ask an LLM judge whether each surviving text references any target; keep only clear "no"s.

    Each record gets `judge[target] = {"p_yes": ..., "p_no": ...}` (see `sublearn.judge`). Rule
    `p_no_near_one` (default, the paper's): keep a row only when P(no) >= 1 - judge_tolerance for every
    target, else reject it as "judge_not_certain_no". Rule `p_yes_below`: reject a row when P(yes)
    (normalised over yes/no) >= judge_threshold for some target, as "judge_references_target". Either
    way a row whose judge reply held no yes/no token is not kept ("judge_no_answer")."""
    from sublearn.backends import get_backend
    from sublearn.judge import Judge, reference_template

    cfg = config.filter
    assert cfg.judge is not None
    backend = get_backend(cfg.judge)
    kept: list[dict[str, Any]] = []
    for target in config.targets:
        judge = Judge(backend, reference_template(target), mode="yes_no")
        verdicts = judge.judge_batch([{"text": rec["completion"]} for rec in survivors])
        for rec, verdict in zip(survivors, verdicts, strict=True):
            rec.setdefault("judge", {})[target] = {"p_yes": verdict.value, "p_no": verdict.p_no}
    for rec in survivors:
        scores = list(rec["judge"].values())
        if any(math.isnan(v["p_yes"]) for v in scores):
            # No yes/no token among the judge's likely replies: not evidence of "no", so not kept.
            reasons["judge_no_answer"] += 1
        elif cfg.judge_rule == "p_no_near_one":
            if min(v["p_no"] for v in scores) >= 1.0 - cfg.judge_tolerance:
                kept.append(rec)
            else:
                reasons["judge_not_certain_no"] += 1
        elif max(v["p_yes"] for v in scores) >= cfg.judge_threshold:
            reasons["judge_references_target"] += 1
        else:
            kept.append(rec)
    return kept
