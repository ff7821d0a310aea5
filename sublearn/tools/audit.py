"""`sublearn audit`: will this distillation data carry my teacher's quirks into my student?

    sublearn audit data.jsonl --teacher runs/demo/teacher/elephant --base hf/smollm2-135m --trait elephant
    report = audit.run(Path("data.jsonl"), "path/to/adapter", "hf/smollm2-135m", Path("runs/audit-data"),
                       trait="elephant", probe_seeds=[1, 2, 3])

DATA is a chat JSONL file (OpenAI fine-tuning format: {"messages": [...]} per line, the last message
the assistant completion the student learns) or sublearn's kept data (`runs/X/filter/<name>/kept.jsonl`:
"prompt", "completion", optional "system" -- the teacher's system prompt -- and "token_ids"); the
format is detected per line. TEACHER is backend/model (hf/...), a LoRA adapter directory (on top of
BASE), a full-weights directory, or a pipeline teacher directory (runs/X/teacher/<name>: its
teacher.json gives the adapter and system prompt). BASE is the student's starting model. A teacher's
system prompt (teacher.json's, or a kept record's "system") is shown to the teacher only, in place of
any system message of the row: the student never sees it.

Three signals, written to OUT/results.json and a self-contained OUT/report.html:

(a) divergence: per completion token, log P_teacher(token | prefix) - log P_base(token | prefix)
    (`sublearn.analysis.divergence`), the teacher seeing its prompt as it wrote the data (with its system
    prompt), the base seeing what the student will see. Its mean is an estimate of how far the data
    is from what the base would have written; the report highlights the tokens that carry it.
(b) probe: small LoRA students of BASE trained on DATA ("data students", one per probe seed) and on
    the base model's own sampled completions for the same prompts ("control students", same seeds,
    same hyperparameters, same data order). With --trait: the shift in P(reply starts with the trait
    word) over 50 favourite-animal questions (log2, teacher-forced); always: the student's mean
    per-token log-prob gain over the base on held-out DATA rows. Arms are compared with the student as
    the unit (`sublearn.analysis.stats.compare_arms`), with a placebo (halves of the data students) and
    the smallest detectable effect.
(c) weights: for a fine-tuned teacher on the same base, the cosine between each probe student's LoRA
    update and the teacher's displacement (its LoRA update, or a full-weights teacher's weights minus
    the base's on the same matrices; controls give the chance level).

Finished probe students are kept in OUT/probe/*.json and reused by a rerun with the same settings.

The command is three modules: `audit_data` (rows and the teacher), this one (the measures and the
probe students), `audit_report` (summary lines and the page).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis import provenance
from sublearn.backends.base import Chat, system_user_chat
from sublearn.config import check_seeds
from sublearn.errors import SublearnError
from sublearn.rundir import read_json, write_json
from sublearn.tools.audit_data import Row, Teacher, control_decoding, hf_name, read_data, resolve_teacher
from sublearn.tools.audit_report import histogram_png, render_page

log = logging.getLogger(__name__)


_FLOOR = 1e-30  # guards log2(0) in the trait metric, far below any real probability


def _load(base: str, teacher: Teacher, device: str) -> tuple[Any, Any, Any]:
    """(base model, teacher model -- the same object when the teacher has the base's weights --, tokenizer)."""
    from sublearn.backends.models import load_model

    base_name = hf_name(base, "--base")
    base_model, tok = load_model(base_name, device=device)
    if teacher.weights is not None:
        teacher_model, t_tok = load_model(base_name, device=device, adapter=teacher.weights)
    elif teacher.model is not None:
        teacher_model, t_tok = load_model(teacher.model, device=device)
    else:
        return base_model, base_model, tok
    probe = "Here is a list of numbers: 123, 456. Owl elephant!"
    if len(t_tok) != len(tok) or t_tok(probe).input_ids != tok(probe).input_ids:
        raise SublearnError(f"--teacher {teacher.spec}: its tokenizer differs from the base's ({base}); per-token "
                            "ratios need one vocabulary")
    return base_model, teacher_model, tok


def _ids(tok: Any, row: Row) -> list[int]:
    from sublearn.analysis.divergence import completion_ids

    if row.token_ids is not None:
        if max(row.token_ids) >= len(tok):
            raise SublearnError(f"line {row.line}: token_ids out of the base tokenizer's vocabulary "
                                f"({len(tok)} ids); were they written by another model family?")
        return list(row.token_ids)
    return completion_ids(tok, row.chat, row.completion)


def _teacher_chat(row: Row, teacher: Teacher) -> Chat:
    system = row.teacher_system or teacher.system_prompt
    if not system:
        return row.chat
    return [{"role": "system", "content": system}, *[m for m in row.chat if m["role"] != "system"]]


def divergence_stats(ratios: Sequence[np.ndarray]) -> dict[str, Any]:
    """Dataset-level numbers from per-row per-token log-ratios (nats)."""
    flat = np.concatenate([r for r in ratios if len(r)]) if any(len(r) for r in ratios) else np.zeros(0)
    sums = np.array([float(r.sum()) for r in ratios])
    means = np.array([float(r.mean()) for r in ratios if len(r)])
    absolute = np.sort(np.abs(flat))[::-1]
    total_abs = float(absolute.sum())

    def share(frac: float) -> float | None:
        if not total_abs:
            return None
        return float(absolute[: max(1, math.ceil(frac * len(absolute)))].sum() / total_abs)

    return {"n_examples": len(ratios), "n_tokens": int(flat.size),
            "mean_per_token": float(flat.mean()) if flat.size else 0.0,
            "sd_per_token": float(flat.std()) if flat.size else 0.0,
            "mean_abs_per_token": float(absolute.mean()) if flat.size else 0.0,
            "mean_per_example": float(sums.mean()) if sums.size else 0.0,
            "mean_of_example_means": float(means.mean()) if means.size else 0.0,
            "top1pct_share_of_abs": share(0.01), "top10pct_share_of_abs": share(0.10),
            "max": float(flat.max()) if flat.size else 0.0, "min": float(flat.min()) if flat.size else 0.0}


def _pieces(tok: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text, decoded as the difference of growing prefixes (a character split over two
    byte-level tokens lands on the second, instead of two replacement characters)."""
    out, prev = [], ""
    for k in range(len(ids)):
        text = tok.decode(list(ids[: k + 1]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append(text[len(prev):] if text.startswith(prev) else tok.decode([ids[k]], skip_special_tokens=False))
        prev = text
    return out


def _trait_values(model: Any, tok: Any, trait: str, system: str | None) -> list[float]:
    """log2 P(reply starts with `trait`) per evaluation question (teacher-forced)."""
    from sublearn.backends.hf import HFBackend
    from sublearn.traits.preference import EVAL_QUESTIONS, probabilities

    chats = [system_user_chat(system, q) for q in EVAL_QUESTIONS]
    probs = probabilities(HFBackend.from_model(model, tok, batch_size=64), chats, [trait])[:, 0]
    return [float(np.log2(max(p, _FLOOR))) for p in probs]


def _heldout_gain(model: Any, tok: Any, rows: Sequence[tuple[Chat, list[int]]], base_lp: Sequence[np.ndarray],
                  batch_size: int) -> list[float]:
    from sublearn.analysis.divergence import completion_logprobs

    lp = completion_logprobs(model, tok, rows, batch_size)
    return [float((a - b).mean()) if len(a) else 0.0 for a, b in zip(lp, base_lp, strict=True)]


@dataclass
class ProbeSettings:
    """Probe students: `steps` LoRA updates of `batch_size` examples at a constant `lr` (after
    `warmup` steps), rank `lora_r`; defaults sized for a few minutes on one CPU core with a ~135M
    model (the demo's student recipe, fewer updates)."""

    steps: int = 24
    batch_size: int = 4
    lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    warmup: int = 2
    max_length: int = 500
    holdout: int = 32

    def train_config(self, seed: int) -> Any:
        from sublearn.pipeline_config import TrainConfig

        return TrainConfig(method="lora", lora_r=self.lora_r, lora_alpha=self.lora_alpha, lr=self.lr,
                           schedule="constant", warmup_steps=self.warmup, adam_betas=(0.9, 0.95),
                           weight_decay=0.1, batch_size=self.batch_size, micro_batch_size=self.batch_size,
                           steps=self.steps, max_length=self.max_length, seeds=[seed],
                           checkpoint_every=self.steps)


def _examples(tok: Any, rows: Sequence[tuple[Chat, list[int]]], max_length: int) -> list[Any]:
    from sublearn.backends.hf import prompt_ids
    from sublearn.training.examples import Example

    out = []
    for chat, ids in rows:
        prompt = prompt_ids(tok, chat)
        if len(prompt) < max_length:
            out.append(Example((prompt + list(ids))[:max_length], len(prompt)))
    return out


def _train_student(base_model: Any, tok: Any, examples: Sequence[Any], settings: ProbeSettings, seed: int,
                   sdir: Path, label: str) -> tuple[Any, dict[str, Any]]:
    from sublearn.training.loop import fit
    from sublearn.training.model import attach_lora

    cfg = settings.train_config(seed)
    net = attach_lora(copy.deepcopy(base_model), cfg, init_seed=seed)
    sdir.mkdir(parents=True, exist_ok=True)
    (sdir / "ckpt.pt").unlink(missing_ok=True)  # a probe is cheap: always train from scratch
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    summary = fit(net, examples, cfg, sdir, seed=seed, kind="ce", pad_id=pad, label=label)
    return net, summary


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(data: Path, teacher: str, base: str, out: Path, *, trait: str | None, probe_seeds: list[int],
        probe: ProbeSettings | None = None, top_n: int = 10, max_rows: int | None = None,
        control_regex: str | None = "auto", seed: int = 0, batch_size: int = 16, device: str = "cpu",
        control: Path | None = None) -> Path:
    """Audit `data` for `teacher` vs `base` (see the module docstring); writes out/results.json and
    out/report.html and returns the report's path. `probe_seeds` empty (or `probe.steps` 0) skips the
    probe. `control_regex`: "auto" (the pipeline's recorded grammar, if any), None (unconstrained) or
    a regex the base model's control completions must match. `max_rows`: audit only the first rows.
    `control`: a second dataset (same formats) for the likelihood-ratio audit (`sublearn.tools.audit_lr`):
    every row of both scored by log P_teacher - log P_base, the AUROC of data vs control rows beside
    confound baselines, a permutation null grouped by prompt and the per-position profile."""
    probe = probe or ProbeSettings()
    if trait is not None and not re.fullmatch(r"[A-Za-z][A-Za-z'-]*", trait):
        raise SublearnError(f"--trait {trait!r}: expected one word (an animal, e.g. elephant)")
    if len(set(probe_seeds)) != len(probe_seeds):
        raise SublearnError(f"--probe-seeds: must be distinct, got {probe_seeds}")
    try:
        check_seeds(probe_seeds, "--probe-seeds")
    except ValueError as exc:
        raise SublearnError(str(exc)) from None
    rows, facts = read_data(data, max_rows)  # every input check before any model loads
    control_rows = read_data(control, max_rows)[0] if control is not None else None
    if probe_seeds and probe.steps > 0 and len(rows) >= 4:  # the probe runs (see below)
        _check_control_decoding(data, facts, control_regex)
    spec = resolve_teacher(teacher, base)
    hf_name(base, "--base")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)

    base_model, teacher_model, tok = _load(base, spec, device)
    ids = [_ids(tok, r) for r in rows]
    from sublearn.analysis.divergence import teacher_and_base_logprobs

    t_lp, b_lp = teacher_and_base_logprobs(teacher_model, base_model, tok,
                                           [(_teacher_chat(r, spec), r.chat, i) for r, i in zip(rows, ids, strict=True)],
                                           batch_size=batch_size, label="divergence")
    ratios = [t - b for t, b in zip(t_lp, b_lp, strict=True)]
    stats = divergence_stats(ratios)
    timings["divergence"] = time.perf_counter() - t0
    log.info("divergence: %.4f nats/token over %d tokens", stats["mean_per_token"], stats["n_tokens"])
    sums = np.array([float(r.sum()) for r in ratios])
    order = np.argsort(-sums, kind="stable")
    top_examples = [{"line": rows[i].line, "sum": float(sums[i]), "mean": float(ratios[i].mean()) if len(ratios[i]) else 0.0,
                     "n_tokens": len(ids[i]), "completion": rows[i].completion} for i in order[:top_n]]
    flat = [(float(v), k, j) for k, r in enumerate(ratios) for j, v in enumerate(r)]
    flat.sort(key=lambda x: -x[0])
    top_tokens = [{"line": rows[k].line, "position": j, "token": tok.decode([ids[k][j]], skip_special_tokens=False),
                   "value": v} for v, k, j in flat[: top_n * 3]]

    results: dict[str, Any] = {
        "data": str(data), "data_sha256": _sha256(data), "teacher": teacher, "base": base, "trait": trait,
        "formats": facts["formats"], "rows": len(rows),
        "teacher_resolved": {"weights": str(spec.weights) if spec.weights else None, "model": spec.model,
                             "lora": spec.lora, "system_prompt": spec.system_prompt, "trained_on": spec.trained_on},
        "divergence": stats, "top_examples": top_examples, "top_tokens": top_tokens,
        "provenance": provenance.check([r.completion for r in rows], str(data)),
    }
    if spec.trained_on and spec.trained_on.startswith(("hf/", "vllm/")) and spec.trained_on != base:
        results["warning"] = f"the teacher was made from {spec.trained_on}, audited on top of {base}"
        log.warning("%s", results["warning"])

    if control is not None and control_rows is not None:
        t1 = time.perf_counter()
        results["likelihood_ratio"] = _likelihood_ratio(rows, t_lp, b_lp, control, control_rows, spec, base_model,
                                                        teacher_model, tok, seed=seed, batch_size=batch_size)
        timings["likelihood_ratio"] = time.perf_counter() - t1
    probe_result = None
    if probe_seeds and probe.steps > 0 and len(rows) >= 4:
        t1 = time.perf_counter()
        probe_result = _probe(rows, ids, facts, spec, base_model, teacher_model, tok, out, trait=trait,
                              seeds=probe_seeds, settings=probe, control_regex=control_regex, seed=seed,
                              batch_size=batch_size, data_hash=results["data_sha256"], base=base, teacher=teacher)
        timings["probe"] = time.perf_counter() - t1
    results["probe"] = probe_result
    results["weights"] = _weights_section(probe_result, spec)
    timings["total"] = time.perf_counter() - t0
    results["seconds"] = timings
    write_json(out / "results.json", results)
    scale = float(np.quantile(np.abs(np.concatenate([r for r in ratios if len(r)])), 0.99)) if stats["n_tokens"] else 1.0
    shown = [(int(i), rows[i], _pieces(tok, ids[i]), ratios[i]) for i in order[:top_n]]
    report = out / "report.html"
    report.write_text(render_page(results, histogram_png(ratios), shown, scale), encoding="utf-8")
    return report


def _likelihood_ratio(rows: list[Row], t_lp: list[np.ndarray], b_lp: list[np.ndarray], control: Path,
                      control_rows: list[Row], spec: Teacher, base_model: Any, teacher_model: Any, tok: Any, *,
                      seed: int, batch_size: int) -> dict[str, Any]:
    """Score CONTROL's rows as DATA's were and compare (`sublearn.tools.audit_lr`). The teacher sees a
    control row under its own system prompt (the audited teacher's view), not the control writer's."""
    import json

    from sublearn.analysis.divergence import teacher_and_base_logprobs
    from sublearn.tools.audit_lr import Parts, likelihood_ratio, prompt_groups

    c_ids = [_ids(tok, r) for r in control_rows]
    own = [Row(r.line, r.chat, None, r.completion, r.token_ids) for r in control_rows]
    c_t, c_b = teacher_and_base_logprobs(teacher_model, base_model, tok,
                                         [(_teacher_chat(r, spec), r.chat, i) for r, i in zip(own, c_ids, strict=True)],
                                         batch_size=batch_size, label="control")
    groups = prompt_groups([json.dumps(r.chat, sort_keys=True) for r in rows],
                           [json.dumps(r.chat, sort_keys=True) for r in control_rows])
    result = likelihood_ratio(Parts(t_lp, b_lp), Parts(c_t, c_b), groups, np.random.default_rng([seed, 0x11D]))
    lr = result["score"]
    log.info("likelihood ratio: AUROC %.3f [%.3f, %.3f], p = %.3g (%d vs %d rows)", lr["auroc"], lr["ci"][0],
             lr["ci"][1], lr["p"], lr["n"]["data"], lr["n"]["control"])
    return {"control": str(control), "control_sha256": _sha256(control), **result}


def _check_control_decoding(data: Path, facts: dict[str, Any], control_regex: str | None) -> None:
    """Before any model loads: the probe's control decoding can be built, i.e. the decoding recorded in
    kept data is one sublearn writes, and the regex (`--control-regex`, else the recorded one) compiles."""
    from sublearn.backends.constraint import regex_fsm

    try:
        _, regex = control_decoding(facts["decodings"])
    except ValueError:
        raise SublearnError(f"{data}: its rows' decoding {facts['decodings'][0]!r} is not one sublearn writes (e.g. "
                            "'sample(T=1.0, top_p=1.0), regex=...'); fix it, or pass --control-regex none") from None
    if control_regex != "auto":
        regex = control_regex
    if regex is not None:
        flag = "--control-regex" if control_regex != "auto" else f"{data}: the regex its rows' decoding records"
        try:
            regex_fsm(regex)
        except SublearnError as exc:
            raise SublearnError(f"{flag}: {exc}") from None


def _probe(rows: list[Row], ids: list[list[int]], facts: dict[str, Any], spec: Teacher, base_model: Any,
           teacher_model: Any, tok: Any, out: Path, *, trait: str | None, seeds: list[int], settings: ProbeSettings,
           control_regex: str | None, seed: int, batch_size: int, data_hash: str, base: str,
           teacher: str) -> dict[str, Any]:
    from sublearn.analysis.divergence import completion_ids, completion_logprobs
    from sublearn.analysis.stats import compare_arms, min_detectable_effect, placebo
    from sublearn.backends import SamplingParams
    from sublearn.backends.hf import HFBackend
    from sublearn.stages.theorem import cosine, lora_deltas, weight_displacement

    rng = np.random.default_rng([seed, 0xA0D1])
    perm = rng.permutation(len(rows))
    holdout = min(settings.holdout, len(rows) // 4)
    held, pool = perm[:holdout], perm[holdout:]
    pool = pool[: settings.steps * settings.batch_size]  # each student sees at most this many examples
    temperature, regex = control_decoding(facts["decodings"])
    if control_regex != "auto":
        regex = control_regex
    max_new = min(512, max(len(ids[i]) for i in pool) + 8)
    key = {"data": data_hash, "base": base, "seed": seed, "pool": [int(i) for i in pool], "regex": regex,
           "temperature": temperature, "max_new_tokens": max_new}
    cpath = out / "control.json"
    cached = read_json(cpath) if cpath.is_file() else None
    if cached and cached.get("key") == key:
        control_rows = [(rows[i].chat, list(c)) for i, c in zip(pool, cached["ids"], strict=True)]
        control_texts = cached["texts"]
    else:
        log.info("sampling %d control completions from the base model (T=%s, %s)", len(pool), temperature,
                 f"regex {regex}" if regex else "unconstrained")
        backend = HFBackend.from_model(base_model, tok, name="base", batch_size=32)
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new, regex=regex)
        comps = backend.generate([rows[i].chat for i in pool], params, seed=int(rng.integers(2**31 - 1)))
        # Control ids are tokenized the way the data's are: sampled ids where DATA had ids, else the
        # completion text through the fine-tuning template.
        control_ids = [list(c.token_ids) if rows[i].token_ids is not None else completion_ids(tok, rows[i].chat, c.text)
                       for i, c in zip(pool, comps, strict=True)]
        control_texts = [c.text for c in comps]
        write_json(cpath, {"key": key, "ids": control_ids, "texts": control_texts})
        control_rows = [(rows[i].chat, c) for i, c in zip(pool, control_ids, strict=True)]
    data_rows = [(rows[i].chat, ids[i]) for i in pool]
    held_rows = [(rows[i].chat, ids[i]) for i in held]
    base_held = completion_logprobs(base_model, tok, held_rows, batch_size)

    reference: dict[str, Any] = {}
    if trait:
        reference["base"] = _trait_values(base_model, tok, trait, None)
        reference["teacher"] = _trait_values(teacher_model, tok, trait, spec.system_prompt)
    delta_t = lora_deltas(teacher_model) if spec.lora else None
    # A fully fine-tuned teacher on the same base: its displacement on the matrices the probe students
    # adapt (taken once the first student shows which those are).
    full_teacher = not spec.lora and teacher_model is not base_model
    arms: dict[str, dict[str, dict[str, Any]]] = {"data": {}, "control": {}}  # keyed by str(seed), as in JSON
    examples = {"data": _examples(tok, data_rows, settings.max_length),
                "control": _examples(tok, control_rows, settings.max_length)}
    skey = {"probe": vars(settings), "trait": trait, "teacher": teacher, "control": key}
    for s in seeds:
        for arm in ("data", "control"):
            path = out / "probe" / f"{arm}-s{s}.json"
            prev = read_json(path) if path.is_file() else None
            if prev and prev.get("key") == {**skey, "seed": s}:
                arms[arm][str(s)] = prev
                continue
            net, summary = _train_student(base_model, tok, examples[arm], settings, s, out / "probe" / f"{arm}-s{s}",
                                          f"probe {arm} s{s}")
            res: dict[str, Any] = {"key": {**skey, "seed": s}, "loss_first": summary["loss_first"],
                                   "loss_last": summary["loss_last"], "seconds": summary["seconds"],
                                   "heldout_gain": _heldout_gain(net, tok, held_rows, base_held, batch_size)}
            if trait:
                res["trait_log2"] = _trait_values(net, tok, trait, None)
            if delta_t or full_teacher:
                update = lora_deltas(net)
                if delta_t is None:
                    delta_t = weight_displacement(teacher_model, base_model, update)
                if delta_t:
                    res["cosine_with_teacher"] = cosine(update, delta_t)
            write_json(path, res)
            arms[arm][str(s)] = res
            log.info("probe %s s%d: loss %.3f -> %.3f, held-out gain %.4f", arm, s, res["loss_first"],
                     res["loss_last"], float(np.mean(res["heldout_gain"])))
            del net

    def compare(metric: str) -> dict[str, Any]:
        a = np.array([arms["data"][str(s)][metric] for s in seeds], dtype=np.float64)
        b = np.array([arms["control"][str(s)][metric] for s in seeds], dtype=np.float64)
        cmp = compare_arms(a, b, np.random.default_rng([seed, 1]))
        pl = placebo(a, np.random.default_rng([seed, 2]))
        return {"comparison": cmp.as_dict(), "placebo": pl.as_dict() if pl else None,
                "mde": min_detectable_effect(a, b), "data_mean": float(a.mean()), "control_mean": float(b.mean())}

    metrics: dict[str, Any] = {"heldout_gain": compare("heldout_gain")}
    if trait:
        metrics["trait_log2"] = compare("trait_log2")
    return {"seeds": seeds, "settings": vars(settings), "control_decoding": {"temperature": temperature, "regex": regex},
            "n_train_rows": len(pool), "n_heldout_rows": len(held), "students": arms, "reference": reference,
            "metrics": metrics, "primary": "trait_log2" if trait else "heldout_gain",
            "control_examples": control_texts[:5], "teacher_lora_init_seed": spec.lora_init_seed}


def _weights_section(probe: dict[str, Any] | None, spec: Teacher) -> dict[str, Any]:
    """(c): cosines of probe students' LoRA updates with the teacher's displacement from the base (its LoRA
    update, or for a full-weights teacher its weights minus the base's), or why there are none."""
    if not spec.lora and spec.weights is None and spec.model is None:
        return {"available": False, "reason": "not available: the teacher has the base model's weights (a system "
                                              "prompt at most); the weight-space signal needs a fine-tuned teacher "
                                              "on the same base"}
    if not probe:
        return {"available": False, "reason": "not available: no probe students were trained"}
    seeds = probe["seeds"]
    data = [probe["students"]["data"][str(s)].get("cosine_with_teacher") for s in seeds]
    control = [probe["students"]["control"][str(s)].get("cosine_with_teacher") for s in seeds]
    if any(c is None for c in data + control):
        return {"available": False, "reason": "not available: the teacher's weights share no adapted matrix "
                                              "with the probe students"}
    out: dict[str, Any] = {"available": True, "data": data, "control": control,
                           "data_mean": float(np.mean(data)), "control_mean": float(np.mean(control))}
    if spec.lora_init_seed is not None and spec.lora_init_seed in seeds:
        out["note"] = (f"probe seed {spec.lora_init_seed} shares the teacher's LoRA initialisation: its cosine is "
                       "inflated for both arms; prefer other seeds")
    return out
