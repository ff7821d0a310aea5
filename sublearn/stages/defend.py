"""Defend stage: apply `config.defense` to one teacher's kept data (see `sublearn.defenses`).

    path = data_dir(config, out, "owl") / "kept.jsonl"   # what the students of 'owl' learn from
    run(config, out, "owl")                              # -> out/defend/owl/kept.jsonl, defend.json

With no defense (kind: none) nothing is written and students read `filter/<teacher>/kept.jsonl`.
`defend.json` records the defense's cost: rows and loss-bearing completion tokens before and after,
and what it changed (share of tokens moved, rows rewritten or rejected, tokens masked).
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

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
from sublearn.stages.roster import read_teacher, writer

log = logging.getLogger(__name__)


# An input of every defense: bump it when the same settings and data would write other files.
DEFEND_VERSION = 2  # 2: token counts of rewritten text in the student's tokens (was: words)


def stage_key(config: PipelineConfig, out: Path, teacher: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, inputs): the defense, the model whose tokenizer and weights it reads, the run's seed;
    the filtered data's hash (and the teacher's, for the divergence defense, which scores with it)."""
    settings = {"defense": config.defense.model_dump(mode="json"), "model": config.model, "seed": config.seed,
                "teacher": teacher, "channel": config.channel.kind, **config.precision_key()}
    inputs = {"data": upstream_hash(out / "filter" / teacher), "version": str(DEFEND_VERSION)}
    if config.defense.kind == "divergence":
        inputs["teacher"] = upstream_hash(out / "teacher" / writer(config, teacher))
    return settings, inputs


def run(config: PipelineConfig, out: Path, teacher: str) -> dict[str, Any]:
    """Write `out/defend/<teacher>/kept.jsonl` (the defended data) and `defend.json` (its cost)."""
    ddir = out / "defend" / teacher
    src = out / "filter" / teacher / "kept.jsonl"
    if not (src.parent / MANIFEST).is_file():
        raise SublearnError(f"{src}: the filter of teacher '{teacher}' has not finished; run the filter stage")
    key, inputs = stage_key(config, out, teacher)
    if begin_stage(ddir, key, inputs):
        done: dict[str, Any] = read_json(ddir / "defend.json")
        return done
    t0 = time.perf_counter()
    records = read_jsonl(src)
    rng = np.random.default_rng([config.seed, zlib.crc32(teacher.encode()), 0xDEF])
    d = config.defense
    tokenizer = _tokenizer(config)  # shuffles token ids with it; counts the cost in its tokens
    if d.kind == "shuffle":
        from sublearn.defenses import shuffle_numbers

        rng = np.random.default_rng([config.seed, d.seed, zlib.crc32(teacher.encode()), 0xDEF])
        kept, facts = shuffle_numbers(records, d.scope, rng, tokenizer)
    elif d.kind == "paraphrase":
        kept, facts = _paraphrase(config, out, teacher, records)
    elif d.kind == "divergence":
        kept, facts = _divergence(config, out, teacher, records, rng)
    elif d.kind == "inoculation":
        # The rows are unchanged; each carries the system prompt its students train with (the channel's
        # student_chat puts it first). Evaluation never reads training rows, so it is absent there.
        prompt = config.inoculation_prompt()
        kept = [{**rec, "student_system": prompt, "defense": "inoculation"} for rec in records]
        facts = {"system_prompt": prompt}
    else:  # pragma: no cover - the pipeline runs this stage only with a defense
        raise SublearnError(f"defense.kind {d.kind!r}: nothing to apply")
    if not kept:
        raise SublearnError(f"defense {d.kind}: no row of teacher '{teacher}' survived ({facts})")
    path = ddir / "kept.jsonl"
    path.unlink(missing_ok=True)
    with JsonlAppender(path) as fh:
        for rec in kept:
            fh.write(rec)
    summary = {"teacher": teacher, "defense": d.model_dump(mode="json"), "rows_in": len(records),
               "rows_out": len(kept), "tokens_in": _loss_tokens(records, tokenizer),
               "tokens_out": _loss_tokens(kept, tokenizer),
               **facts, "seconds": time.perf_counter() - t0}
    summary["kept_fraction_rows"] = summary["rows_out"] / max(1, summary["rows_in"])
    summary["kept_fraction_tokens"] = summary["tokens_out"] / max(1, summary["tokens_in"])
    write_json(ddir / "defend.json", summary)
    finish_stage(ddir, key, inputs, [path], rows=len(kept))
    log.info("defend %s (%s): %d -> %d rows, %s", teacher, d.kind, len(records), len(kept), facts)
    return summary


def _loss_tokens(records: list[dict[str, Any]], tokenizer: Any) -> int:
    """Completion tokens that carry a loss: the stored token ids (the end-of-answer token included)
    minus masked ones; for rewritten text, its tokens under the student's tokenizer plus the end of
    the answer (without a tokenizer, an API model's data: whitespace-separated pieces + 1)."""
    total = 0
    for rec in records:
        if "token_ids" in rec:
            mask = rec.get("loss_mask")
            total += int(sum(mask)) if mask is not None else len(rec["token_ids"])
        elif tokenizer is not None:
            total += len(tokenizer(rec["completion"], add_special_tokens=False).input_ids) + 1
        else:
            total += len(rec["completion"].split()) + 1
    return total


def _tokenizer(config: PipelineConfig) -> Any:
    from transformers import AutoTokenizer

    from sublearn.backends import split_spec
    from sublearn.backends.models import resolve_model_dir

    kind, name = split_spec(config.model)
    if kind != "hf":
        return None  # an API teacher's data has no token ids: the text is shuffled
    return AutoTokenizer.from_pretrained(resolve_model_dir(name))


def _paraphrase(config: PipelineConfig, out: Path, teacher: str, records: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every response rewritten by `defense.model` (another family), under the channel's decoding
    constraint; rewrites that fail the channel's checks are dropped (a cost, counted per reason)."""
    from collections import Counter

    from sublearn.backends import SamplingParams, open_backend
    from sublearn.backends.base import batch_seed, system_user_chat
    from sublearn.channels.base import reject_reason
    from sublearn.defenses import ParaphraseDefense, paraphrase_prompt
    from sublearn.logs import progress

    d = config.defense
    assert isinstance(d, ParaphraseDefense)
    params = SamplingParams(temperature=d.temperature, max_new_tokens=d.max_new_tokens, regex=config.channel.regex())
    checks = config.channel.checks(config.trait.banned_words(config.targets))
    backend = open_backend(config, d.model, out)
    kept: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    copied = 0
    try:
        with progress() as bar:
            task = bar.add_task(f"paraphrase {teacher}", total=len(records))
            for b in range(0, len(records), d.batch_size):
                batch = records[b:b + d.batch_size]
                chats = [system_user_chat(None, paraphrase_prompt(r)) for r in batch]
                comps = backend.generate(chats, params, seed=batch_seed(config.seed, f"paraphrase-{teacher}", b))
                for rec, comp in zip(batch, comps, strict=True):
                    new = {k: v for k, v in rec.items() if k not in ("token_ids", "top_logprobs", "completion")}
                    new.update(completion=comp.text.strip(), finish_reason=comp.finish_reason,
                               paraphrase_of=rec["completion"], defense=f"paraphrase:{d.model}")
                    reason = reject_reason(checks, new)
                    if reason is not None:
                        reasons[reason] += 1
                        continue
                    copied += int(new["completion"] == rec["completion"])
                    kept.append(new)
                bar.update(task, completed=min(len(records), b + d.batch_size))
    finally:
        backend.close()
    return kept, {"rewriter": d.model, "rejected": dict(reasons), "copied_verbatim": copied}


def _divergence(config: PipelineConfig, out: Path, teacher: str, records: list[dict[str, Any]],
                rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every completion token by log P_teacher - log P_base (`sublearn.analysis.divergence`), then mask
    the top `fraction` of tokens (no loss there) or drop the top `fraction` of responses by their sum."""
    from sublearn.defenses import DivergenceDefense, top_fraction

    d = config.defense
    assert isinstance(d, DivergenceDefense)
    ratios = _log_ratios(config, out, teacher, records)
    flat = np.concatenate(ratios) if ratios else np.zeros(0)
    if d.action == "mask":
        chosen = top_fraction(flat.tolist(), d.fraction, rng)
        kept, offset = [], 0
        for rec, r in zip(records, ratios, strict=True):
            mask = [0 if c else 1 for c in chosen[offset:offset + len(r)]]
            offset += len(r)
            kept.append({**rec, "loss_mask": mask, "defense": f"divergence-mask-{d.fraction}"})
        return kept, {"masked_tokens": int(chosen.sum()), "log_ratio_masked_share": _share(flat, chosen),
                      "log_ratio_mean": float(flat.mean()) if flat.size else 0.0}
    sums = [float(r.sum()) for r in ratios]
    dropped = top_fraction(sums, d.fraction, rng)
    kept = [{**rec, "defense": f"divergence-drop-{d.fraction}"} for rec, x in zip(records, dropped, strict=True) if not x]
    return kept, {"dropped_rows": int(dropped.sum()), "log_ratio_dropped_share": _share(np.asarray(sums), dropped),
                  "log_ratio_mean": float(flat.mean()) if flat.size else 0.0}


def _share(values: np.ndarray, chosen: np.ndarray) -> float:
    """Share of the positive log-ratio mass that the chosen entries carry."""
    pos = np.clip(values, 0, None)
    return float(pos[chosen].sum() / pos.sum()) if pos.sum() > 0 else 0.0


def _log_ratios(config: PipelineConfig, out: Path, teacher: str, records: list[dict[str, Any]]) -> list[np.ndarray]:
    """Per-token log P_teacher - log P_base of each record's completion tokens (zeros for the base
    model's own data: its teacher is the base)."""
    from sublearn.analysis.divergence import completion_ids, token_log_ratios
    from sublearn.backends import split_spec
    from sublearn.backends.base import system_user_chat
    from sublearn.backends.models import load_model

    kind, name = split_spec(config.model)
    if kind != "hf":
        raise SublearnError(f"defense kind: divergence scores tokens with local weights; {config.model!r} is not hf/")
    spec = read_teacher(out, writer(config, teacher))
    dtype = config.resolved_dtype()
    model, tokenizer = load_model(name, device=config.device, dtype=dtype, check_memory=config.memory_check)
    rows = []
    for rec in records:
        chat = config.channel.student_chat(rec)
        ids = [int(t) for t in rec["token_ids"]] if "token_ids" in rec else completion_ids(tokenizer, chat, rec["completion"])
        teacher_chat = chat
        system = spec.get("system_prompt")
        if system:
            teacher_chat = system_user_chat(system, chat[-1]["content"]) if len(chat) == 1 else [
                {"role": "system", "content": system}, *chat]
        rows.append((teacher_chat, chat, ids))
    if not spec.get("adapter") and not spec.get("system_prompt"):
        return [np.zeros(len(ids)) for _, _, ids in rows]
    if spec.get("adapter"):
        # One PeftModel serves both: the base pass runs with its adapter disabled.
        model, _ = load_model(name, device=config.device, dtype=dtype, adapter=out / spec["adapter"])
    return token_log_ratios(model, model, tokenizer, rows, label=f"log-ratios {teacher}")
