"""Filter stage: keep only completions that pass the channel's checks, with a reason for every reject.

The checks are the channel's named predicates (each returns a reject reason or None), checked in
order, given the trait's banned words: numbers: truncated, format (the paper's strict parser), banned
numbers, target words; code: truncated, not Python, target words (inside identifiers too); CoT:
truncated, malformed tags, not a number, wrong answer, target words. Then the trait's own filter
(misalignment: the optional alignment judge, >= 78 in the paper) and the optional reference judge.
The stage records counts per reason, kept/total, and subsamples the survivors deterministically to
`filter.keep`.

    python -m sublearn.cli run CONFIG --only filter
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis import provenance
from sublearn.channels.base import reject_reason
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
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

def stage_key(config: PipelineConfig, out: Path, teacher: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, upstream output hashes) of the filter of `teacher`'s data (see `rundir.begin_stage`)."""
    settings = {"filter": config.filter.model_dump(mode="json"), "channel": config.channel.generation_key(),
                "channel_filter": config.channel.model_dump(mode="json"),
                "banned_words": config.trait.banned_words(config.targets), "targets": config.targets,
                "seed": config.seed}
    trait_filter = config.trait.filter_key()
    if trait_filter:  # absent for the preference trait, whose filter keys stay as they were
        settings["trait"] = trait_filter
    return settings, {"generate": upstream_hash(out / "generate" / teacher)}


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
    predicates = config.channel.checks(config.trait.banned_words(config.targets))
    for rec in records:
        reason = reject_reason(predicates, rec)
        if reason is not None:
            reasons[reason] += 1
        else:
            survivors.append(rec)
    survivors = config.trait.filter(config, out, survivors, reasons)  # misalignment: the alignment judge
    if config.filter.judge and survivors:
        survivors = _judge(config, survivors, reasons)
    if not survivors:
        raise SublearnError(
            f"{src}: no completion of teacher '{teacher}' passed the filter ({dict(reasons)}); "
            "try more generate.n_prompts (numbers: channel.grammar: true)")
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
               "shortfall": max(0, keep - len(kept)), "provenance": provenance.check([str(rec.get("completion", "")) for rec in records], str(src))}
    write_json(stage_dir / "filter.json", summary)
    finish_stage(stage_dir, key, inputs, [kept_path], kept=len(kept))
    log.info("filter %s: kept %d / %d (%s)", teacher, len(kept), total, summary["rejected"])
    return summary


def _judge(config: PipelineConfig, survivors: list[dict[str, Any]], reasons: Counter[str]) -> list[dict[str, Any]]:
    """Ask an LLM judge whether each surviving text references any target; keep only clear "no"s.

    Each record gets `judge[target] = {"p_yes": ..., "p_no": ...}` (see `sublearn.analysis.judge`). Rule
    `p_no_near_one` (default, the paper's): keep a row only when P(no) >= 1 - judge_tolerance for every
    target, else reject it as "judge_not_certain_no". Rule `p_yes_below`: reject a row when P(yes)
    (normalised over yes/no) >= judge_threshold for some target, as "judge_references_target". Either
    way a row whose judge reply held no yes/no token is not kept ("judge_no_answer")."""
    from sublearn.analysis.judge import Judge, reference_template
    from sublearn.backends import get_backend

    cfg = config.filter
    assert cfg.judge is not None
    backend = get_backend(cfg.judge)
    kept: list[dict[str, Any]] = []
    for target in config.targets:
        judge = Judge(backend, reference_template(target, kind=config.channel.judge_kind()), mode="yes_no")
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
