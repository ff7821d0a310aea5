"""Report stage: statistics across evaluated models, `report/results.json` and a self-contained
`report/report.html` (plots inlined as PNG, opens offline).

The unit of every comparison is the trained student (see `analyze` and `sublearn.analysis.stats.compare_arms`):
effect (teacher-forced: mean log2 ratio over students and questions; sampled: difference of hit
rates), a hierarchical bootstrap CI, a seed-level p for that same effect, the smallest effect the
design could detect, and Holm correction over each matrix or curve; placebo rows put two halves of
one arm's students through the same test. Comparisons: each trait student vs the control student
(base-model data), vs the neutral LoRA control, vs the other teachers' students; cross-model
students vs their control; with `train.snapshots`, the same along the number of updates (dose).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.stats import (
    ArmComparison,
    adjust,
    bootstrap_ci,
    compare_arms,
    difference_of_effects,
    min_detectable_effect,
    placebo,
)
from sublearn.rundir import read_json, read_jsonl, versions, write_json
from sublearn.stages import classify
from sublearn.stages.config import PipelineConfig

log = logging.getLogger(__name__)


# Teacher-forced probabilities are compared on a log2 scale (effects are log2 ratios of geometric
# means over students and questions); this floor only guards log(0), far below any real value.
_FLOOR = 1e-30
_ALPHA = 0.05


def _group_name(spec: dict[str, Any]) -> str:
    """Seeds of one student form a group: 'owl-s0', 'owl-s1' -> 'owl'; snapshots 'owl-s0@16' -> 'owl@16';
    draws of one ICL arm too: 'icl-owl-d1', 'icl-owl-d2' -> 'icl-owl'."""
    name, _, updates = str(spec["name"]).partition("@")
    if spec["role"] in ("student", "control", "neutral-control", "benign-control", "cross", "cross-control"):
        name = name.rsplit("-s", 1)[0]
    elif spec["role"] in ("icl", "icl-control"):
        name = name.rsplit("-d", 1)[0]
    return f"{name}@{updates}" if updates else name


def evaluated_groups(out: Path, specs: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]],
                                                                      dict[str, dict[str, Any]]]:
    """Every evaluated model's results.json by group (the seeds of one student form a group; see
    `_group_name`), and each group's role, target, model and number of updates."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roles: dict[str, dict[str, Any]] = {}
    for spec in specs:
        groups[_group_name(spec)].append(read_json(out / "evaluate" / spec["name"] / "results.json"))
        roles[_group_name(spec)] = {"role": spec["role"], "target": spec.get("target"), "model": spec["model"],
                                    "updates": spec.get("updates")}
    return groups, roles


def _matrix(results: list[dict[str, Any]], metric: str, variant: str, animal: str) -> np.ndarray | None:
    """(students x questions) values of one group: log2 probability (teacher-forced) or hit rate (sampled)."""
    rows = [r[metric][variant][animal] for r in results if variant in r.get(metric, {})]
    if not rows:
        return None
    m = np.asarray(rows, dtype=np.float64)
    return np.log2(np.maximum(m, _FLOOR)) if metric == "teacher_forced" else m


def _cell(cmp: ArmComparison, a: np.ndarray, b: np.ndarray, metric: str) -> dict[str, Any]:
    """One comparison as report data: the effect, its CI and the seed-level p that belongs to it."""
    cell = cmp.as_dict()
    cell["scale"] = "log2 ratio of geometric means" if metric == "teacher_forced" else "difference of hit rates"
    # Geometric means for the teacher-forced metric, so that log2(treatment / control) is the effect.
    cell["treatment"] = float(2.0 ** a.mean() if metric == "teacher_forced" else a.mean())
    cell["control"] = float(2.0 ** b.mean() if metric == "teacher_forced" else b.mean())
    # The smallest effect this design could have detected (alpha 0.05, power 0.8): the size of a null.
    cell["min_detectable_effect"] = min_detectable_effect(a, b)
    return cell


def analyze(config: PipelineConfig, out: Path, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the report shows, as plain data.

    The unit of every comparison is the trained student: `compare_arms` gives the effect (mean log2
    ratio for the teacher-forced metric, difference of per-question hit rates for the sampled one),
    a hierarchical bootstrap CI (students, then questions) and a seed-level p for that same effect.
    Each comparison family (a specificity matrix, a dose curve) is Holm-corrected; placebo rows compare
    two halves of one arm's students through the same test."""
    rng = np.random.default_rng([config.seed, 99])
    ec = config.evaluate
    n_boot = min(ec.n_bootstrap, 2000)
    groups, roles = evaluated_groups(out, specs)
    variants = ["plain", "prefixed"] if ec.number_prefix else ["plain"]
    models: dict[str, Any] = {}
    for group, res in groups.items():
        entry: dict[str, Any] = {**roles[group], "n_seeds": len(res), "teacher_forced": {}, "sampled": {},
                                 "top_answers": res[0].get("top_answers", {})}
        for metric in ("teacher_forced", "sampled"):
            for variant in variants:
                for animal in ec.animals:
                    rows = [r[metric][variant][animal] for r in res if variant in r.get(metric, {})]
                    if not rows:
                        continue
                    # Per-model rates: seeds averaged per question, CI over questions (descriptive).
                    pq = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
                    mean, lo, hi = bootstrap_ci(pq, rng, n_boot=ec.n_bootstrap)
                    entry[metric].setdefault(variant, {})[animal] = {"mean": mean, "ci": [lo, hi]}
        models[group] = {"entry": entry, "raw": res}

    def arm(group: str | list[str], metric: str, variant: str, animal: str) -> np.ndarray | None:
        """A group's matrix; a list of groups is one arm whose student k is the mean of their students k
        (e.g. 'the other teachers' students', compared seed by seed)."""
        if isinstance(group, str):
            return _matrix(models[group]["raw"], metric, variant, animal) if group in models else None
        mats = [arm(g, metric, variant, animal) for g in group]
        if not mats or any(m is None for m in mats) or len({m.shape for m in mats if m is not None}) != 1:
            return None
        return np.mean(np.stack([m for m in mats if m is not None]), axis=0)

    def compare(treat: str, ctrl: str | list[str], animal: str, label: str | None = None) -> dict[str, Any]:
        out_c: dict[str, Any] = {"treatment": treat, "control": label or ctrl, "animal": animal}
        for metric in ("teacher_forced", "sampled"):
            for variant in variants:
                a, b = arm(treat, metric, variant, animal), arm(ctrl, metric, variant, animal)
                if a is not None and b is not None:
                    cmp = compare_arms(a, b, rng, n_boot=n_boot, n_perm=ec.n_permutations)
                    out_c.setdefault(metric, {})[variant] = _cell(cmp, a, b, metric)
        return out_c

    def placebo_row(group: str, animal: str) -> dict[str, Any] | None:
        row: dict[str, Any] = {"arm": group, "animal": animal}
        for metric in ("teacher_forced", "sampled"):
            a = arm(group, metric, "plain", animal)
            cmp = placebo(a, rng, n_boot=n_boot, n_perm=ec.n_permutations) if a is not None else None
            if cmp is not None and a is not None:
                half = -(-a.shape[0] // 2)
                row[metric] = _cell(cmp, a[:half], a[half:], metric)
        return row if "teacher_forced" in row or "sampled" in row else None

    def correct(rows: list[dict[str, Any]], cells_of: Any) -> None:
        """Holm over one family: every (metric, variant) cell that has a p, missing cells left out."""
        for metric in ("teacher_forced", "sampled"):
            for variant in variants:
                cells = [c[metric][variant] for r in rows for c in cells_of(r) if variant in c.get(metric, {})]
                for cell, p_adj in zip(cells, adjust([c["p"] for c in cells], "holm"), strict=True):
                    cell["p_holm"] = p_adj

    targets = [t for t in config.targets if t in models]
    comparisons, specificity, specificity_neutral, cross = [], [], [], []
    for target in targets:
        if "control" in models:
            comparisons.append(compare(target, "control", target))
            specificity.append({"teacher": target, "cells": [compare(target, "control", a) for a in ec.animals]})
        cross_control = next((g for g in ("cross-control", "cross-neutral") if g in models), None)
        if f"cross-{target}" in models and cross_control:
            cross.append(compare(f"cross-{target}", cross_control, target))
    # Generic drift (any fine-tuning on numbers moves a small model toward some animals) is shared by
    # all students; a trait-specific effect makes student t prefer t more than the *other* students do.
    versus_students = []
    if len(targets) >= 2:
        for target in targets:
            others = [o for o in targets if o != target]
            versus_students.append(compare(target, others, target, label="other students"))
    for target in targets:
        if "neutral" in models:
            # The neutral LoRA teacher's student shares everything but the particular animal.
            comparisons.append(compare(target, "neutral", target))
            specificity_neutral.append({"teacher": target, "cells": [compare(target, "neutral", a)
                                                                      for a in ec.animals]})
    for matrix in (specificity, specificity_neutral):
        correct(matrix, lambda r: r["cells"])
    correct([{"cells": comparisons + versus_students + cross}], lambda r: r["cells"])
    placebos = [row for g in [*targets, "control", "neutral"] if g in models
                for row in [placebo_row(g, config.targets[0] if g in ("control", "neutral") else g)] if row]
    dose = _dose_curve(config, models, targets, compare, placebo_row, correct)
    icl = _icl_family(config, models, compare, placebo_row, correct, arm)
    # The placebo of each control arm on every target's animal too (the rows above are on the first
    # target), so that every claim has its control arm's placebo beside it. Drawn after everything
    # else so that the numbers above do not depend on it.
    placebos += [row for g in ("control", "neutral") if g in models for t in targets if t != config.targets[0]
                 for row in [placebo_row(g, t)] if row]
    theorem = {}
    # Only the students of this config (a run directory may hold others, e.g. from a seed dropped later).
    evaluated = {spec["name"] for spec in specs}
    for path in sorted((out / "theorem").glob("*/result.json")):
        if path.parent.name in evaluated:
            theorem[path.parent.name] = read_json(path)
    filters = {p.parent.name: read_json(p) for p in sorted((out / "filter").glob("*/filter.json"))}
    training = {}
    for p in sorted((out / "train").glob("*/seed*/summary.json")):
        if f"{p.parent.parent.name}-s{p.parent.name.removeprefix('seed')}" in evaluated:
            training[f"{p.parent.parent.name}-{p.parent.name}"] = read_json(p)
    for p in sorted((out / "teacher").glob("*/train_summary.json")):
        training[f"teacher-{p.parent.name}"] = read_json(p)
    return {"name": config.name, "config": config.model_dump(mode="json"), "versions": versions(),
            "models": {k: v["entry"] for k, v in models.items()}, "comparisons": comparisons,
            "specificity": specificity, "specificity_neutral": specificity_neutral,
            "specificity_vs_students": versus_students, "cross_model": cross, "placebo": placebos, "dose": dose,
            "theorem": theorem, "filter": filters, "icl": icl,
            "classify": classify.load_results(config, out),  # the classify stage's results, if it ran
            "training": training, "timings": read_json(out / "timings.json") if (out / "timings.json").is_file() else {}}


def _dose_curve(config: PipelineConfig, models: dict[str, Any], targets: list[str], compare: Any,
                placebo_row: Any, correct: Any) -> list[dict[str, Any]]:
    """Per number of updates (each snapshot and the end of training): each target's students vs the
    neutral students and vs the other teachers' students, on the target, and the placebo of its own
    arm; Holm-corrected over the whole curve, one family per kind of comparison."""
    if not config.train.snapshots:
        return []
    final = {g: m["entry"]["updates"] for g, m in models.items() if "@" not in g and m["entry"].get("updates")}
    rows = []
    for n in [*config.train.snapshots, *sorted(set(final.values()))]:
        def at(g: str, n: int = n) -> str:
            return g if final.get(g) == n else f"{g}@{n}"
        present = [t for t in targets if at(t) in models]
        for target in present:
            row: dict[str, Any] = {"updates": n, "target": target}
            if at("neutral") in models:
                row["vs_neutral"] = compare(at(target), at("neutral"), target, label="neutral")
            others = [at(o) for o in present if o != target]
            if others:
                row["vs_students"] = compare(at(target), others, target, label="other students")
            row["placebo"] = placebo_row(at(target), target)
            rows.append(row)
    for kind in ("vs_neutral", "vs_students"):
        correct(rows, lambda r, kind=kind: [r[kind]] if kind in r else [])
    return rows


def _icl_family(config: PipelineConfig, models: dict[str, Any], compare: Any, placebo_row: Any,
                correct: Any, arm: Any = None) -> dict[str, Any]:
    """The ICL control (the base model with k kept examples in context, no training): each target's
    ICL arm vs each ICL control arm on the target, through the same seed-level test as the students
    (the unit is the draw), Holm over this family, and placebo rows (halves of one arm's draws).
    Beside each row, when the same teachers' trained students exist: does training transfer more
    than the context does? (trained effect minus ICL effect, `difference_of_effects`, teacher-forced.)"""
    arms = {g: m["entry"] for g, m in models.items() if m["entry"]["role"] in ("icl", "icl-control")}
    if not arms:
        return {}
    controls = [g for g, e in arms.items() if e["role"] == "icl-control"]
    targets = [t for t in config.targets if f"icl-{t}" in arms]
    rows = [compare(f"icl-{t}", c, t) for t in targets for c in controls]
    correct([{"cells": rows}], lambda r: r["cells"])
    for row in rows:
        t, c = row["treatment"].removeprefix("icl-"), row["control"].removeprefix("icl-")
        mats = [arm(g, "teacher_forced", "plain", row["animal"]) for g in (t, c, row["treatment"], row["control"])] \
            if arm is not None else [None]
        if all(m is not None for m in mats):
            row["trained_minus_icl"] = difference_of_effects(*mats).as_dict()
    placebos = [row for g in arms for row in [placebo_row(g, arms[g]["target"] or config.targets[0])] if row]
    return {"k": config.icl.k, "draws": list(config.icl.draws), "comparisons": rows, "placebo": placebos}


def _difference_columns(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return ["-", "-"]
    return [f"{_fmt(d['difference'])} [{_fmt(d['ci'][0])}, {_fmt(d['ci'][1])}]", _fmt(d["p"])]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


ORDER = {"base": 0, "teacher": 1, "neutral-teacher": 1, "control": 2, "neutral-control": 2, "student": 3,
         "icl-control": 7, "icl": 8,
         "cross-base": 4, "cross-control": 5, "cross": 6}


def _trait_plot(data: dict[str, Any], targets: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = data["models"]
    fig, axes = plt.subplots(len(targets), 2, figsize=(12, 3.6 * len(targets)), squeeze=False)
    for row, target in enumerate(targets):
        names = [n for n, m in models.items() if m["target"] in (None, target)]
        names.sort(key=lambda n: (ORDER.get(models[n]["role"], 9), n))
        for col, (metric, label) in enumerate([("teacher_forced", "P(reply starts with target)"),
                                               ("sampled", "sampled rate naming target")]):
            ax = axes[row][col]
            vals, errs, shown = [], [], []
            for n in names:
                cell = models[n][metric].get("plain", {}).get(target)
                if cell is None:
                    continue
                shown.append(n)
                vals.append(cell["mean"])
                errs.append([cell["mean"] - cell["ci"][0], cell["ci"][1] - cell["mean"]])
            if not shown:
                ax.set_visible(False)
                continue
            colors = [{"base": "#999", "teacher": "#c44", "neutral-teacher": "#a8a", "control": "#48c",
                       "neutral-control": "#6ac", "student": "#e90"}.get(
                models[n]["role"], "#7a7") for n in shown]
            ax.bar(range(len(shown)), vals, yerr=np.array(errs).T, color=colors, capsize=3)
            ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{target}: {label} (95% CI over questions)", fontsize=9)
            if metric == "teacher_forced" and min(vals) > 0:
                ax.set_yscale("log")
    fig.tight_layout()
    return _png(fig)


def _specificity_plot(data: dict[str, Any], key: str = "specificity", control: str = "control") -> str | None:
    if not data.get(key) or not any("teacher_forced" in c for r in data[key] for c in r["cells"]):
        return None  # API models give no teacher-forced probabilities
    import matplotlib.pyplot as plt

    rows = data[key]
    animals = [c["animal"] for c in rows[0]["cells"]]
    # Missing cells (no value) stay blank (NaN), never drawn as 0.
    cells = [[c.get("teacher_forced", {}).get("plain", {}) for c in r["cells"]] for r in rows]
    mat = np.array([[c["effect"] if c.get("effect") is not None else np.nan for c in row] for row in cells])
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(animals), 1.2 + 0.6 * len(rows)))
    finite = mat[np.isfinite(mat)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            if np.isfinite(mat[i, j]):
                star = "*" if c.get("p_holm") is not None and c["p_holm"] < _ALPHA else ""
                ax.text(j, i, f"{mat[i, j]:+.2f}{star}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(animals)), animals, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"teacher {r['teacher']}" for r in rows])
    ax.set_title(f"log2(student / {control} student), teacher-forced; * seed-level p < 0.05 after Holm "
                 "over the matrix", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def _filter_plot(data: dict[str, Any]) -> str | None:
    if not data["filter"]:
        return None
    import matplotlib.pyplot as plt

    teachers = list(data["filter"])
    reasons = sorted({r for f in data["filter"].values() for r in f["rejected"]})
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(teachers)))
    left = np.zeros(len(teachers))
    for label in ["valid", *reasons]:
        vals = np.array([data["filter"][t]["valid"] if label == "valid" else data["filter"][t]["rejected"].get(label, 0)
                         for t in teachers], dtype=float)
        ax.barh(teachers, vals, left=left, label=label)
        left += vals
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("completions")
    ax.set_title("filter: valid vs reject reasons", fontsize=9)
    return _png(fig)


_CELL_HEADERS = ["students", "TF treat (geo. mean)", "TF ctrl (geo. mean)", "effect (log2)", "95% CI", "p (seed-level)", "test",
                 "p (Holm)", "MDE"]


def _cell_columns(c: dict[str, Any]) -> list[str]:
    """The columns of `_CELL_HEADERS` for one comparison cell ('-' where it has no value)."""
    if not c:
        return ["-"] * len(_CELL_HEADERS)
    ci = c.get("ci") or [None, None]
    return [" vs ".join(str(n) for n in c["n_seeds"]), _fmt(c["treatment"]), _fmt(c["control"]),
            _fmt(c["effect"]), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]", _fmt(c["p"]), c.get("test") or "-",
            _fmt(c.get("p_holm")), _fmt(c.get("min_detectable_effect"))]


def _dose_plot(data: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    kinds = [("vs_neutral", "vs neutral students"), ("vs_students", "vs other students"), ("placebo", "placebo")]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False, sharey=True)
    for ax, (kind, label) in zip(axes[0], kinds, strict=True):
        for target in dict.fromkeys(r["target"] for r in data["dose"]):
            pts = []
            for r in data["dose"]:
                cell = (r.get(kind) or {})
                cell = cell.get("teacher_forced", {}) if kind == "placebo" else cell.get("teacher_forced", {}).get("plain", {})
                if r["target"] == target and cell and cell.get("effect") is not None:
                    pts.append((r["updates"], cell["effect"], *(cell.get("ci") or [None, None])))
            if not pts:
                continue
            x = np.array([p[0] for p in pts], dtype=float)
            y = np.array([p[1] for p in pts])
            lo = np.array([p[2] if p[2] is not None else p[1] for p in pts])
            hi = np.array([p[3] if p[3] is not None else p[1] for p in pts])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=target)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("student updates")
        ax.set_title(f"own animal, {label}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("log2 ratio (95% hierarchical CI)")
    fig.tight_layout()
    return _png(fig)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """One HTML table as a string, for report sections built outside the templates (classify, sweep,
    audit); the templates draw theirs with the `table` macro of `templates/macros.html.j2`."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- templates ------------------------------------------------------------------------------------

@functools.cache
def _environment() -> Any:
    """The Jinja2 environment of the report templates (package data under sublearn/templates)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("sublearn", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_template(template: str, **context: Any) -> str:
    """Render one template of sublearn/templates (autoescaped: pass text, not HTML; wrap an HTML string
    built elsewhere, e.g. `classify.report_section`, in `markupsafe.Markup`)."""
    return str(_environment().get_template(template).render(**context))


def _tab(headers: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A table for the `table` macro: headers and rows of cells as text."""
    def text(c: Any) -> str:
        return c if isinstance(c, str) else _fmt(c) if c is None or isinstance(c, float) else str(c)

    return {"headers": headers, "rows": [[text(c) for c in r] for r in rows]}


# --- the summary: one sentence per claim ------------------------------------------------------------

_CHANNEL_NOUN = {"numbers": "numbers", "code": "code", "cot": "reasoning traces"}
DETECTED, NULL, UNTESTABLE = "detected", "null", "untestable"
GROUP_TITLES = {DETECTED: "Differences detected (seed-level p < 0.05 after Holm)",
                NULL: "No difference detected",
                UNTESTABLE: "Not testable at the seed level"}


def _decimals(x: float) -> int:
    """Decimals that show `x` with about 2 significant digits (at least 2)."""
    if not math.isfinite(x) or x == 0:
        return 2
    return min(6, max(2, 1 - math.floor(math.log10(abs(x)))))


def _pval(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.1e}" if p < 1e-4 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def _num(x: float, sign: str = "+") -> str:
    """About 2 significant digits, at least 2 decimals: +0.57, +4.91, -0.010, +0.0020."""
    return f"{x:{sign}.{_decimals(x)}f}"


def _finite_ci(cell: dict[str, Any]) -> tuple[float, float] | None:
    """A cell's CI bounds when both are present and finite, else None."""
    lo, hi = cell.get("ci") or [None, None]
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    return None


def effect_text(cell: dict[str, Any], unit: str, ratio: bool = False) -> str:
    """'+0.57 log2 (x1.49) [95% CI +0.36, +0.79]' for a comparison cell."""
    text = f"{_num(cell['effect'])} {unit}".rstrip()
    if ratio:
        text += f" (x{2.0 ** cell['effect']:.2f})"
    ci = _finite_ci(cell)
    if ci is not None:
        text += f" [{round(100 * cell.get('level', 0.95))}% CI {_num(ci[0])}, {_num(ci[1])}]"
    return text


def _ci_has_zero(cell: dict[str, Any]) -> bool:
    ci = _finite_ci(cell)
    return ci is not None and ci[0] <= 0 <= ci[1]


def test_text(cell: dict[str, Any], unit: str = "students") -> str:
    """'p = 0.012 over 3 vs 3 students (Holm 0.025)'."""
    n = " vs ".join(map(str, cell["n_seeds"]))
    holm = f" (Holm {_pval(cell['p_holm'])})" if cell.get("p_holm") is not None else ""
    return f"p = {_pval(cell['p'])} over {n} {unit}{holm}"


def placebo_text(rows: list[tuple[str, dict[str, Any] | None]], unit: str = "students") -> str:
    """'placebo (neutral students, seed vs seed) p = 0.64' for the placebo rows beside a claim."""
    parts = [f"{arm} {unit} " + (f"p = {_pval(cell['p'])}" if cell.get("p") is not None else "not testable")
             for arm, cell in rows if cell is not None]
    return f"placebo, seed vs seed: {', '.join(parts)}" if parts else f"no placebo (an arm needs 2 {unit} to split)"


def verdict(cell: dict[str, Any]) -> str:
    """DETECTED when the Holm-adjusted seed-level p is below 0.05, NULL when tested, else UNTESTABLE."""
    if cell.get("p") is None:
        return UNTESTABLE
    p = cell.get("p_holm", cell["p"])
    return DETECTED if p is not None and p < _ALPHA else NULL


def mde_text(cell: dict[str, Any], unit: str) -> str:
    mde = cell.get("min_detectable_effect")
    if mde is None or not math.isfinite(mde):
        return "smallest detectable effect: not computable for this design"
    return f"smallest effect this design could detect: ±{_num(mde, '')} {unit}".rstrip()


def claim_sentence(cell: dict[str, Any], subject: str, obj: str, more: str, less: str, on: str,
                   unit: str, placebos: str, *, ratio: bool = False, units: str = "students") -> dict[str, str]:
    """One claim as a sentence a reader can act on: `subject` {more|less} than `obj` with the effect, its
    CI, the seed-level p and its Holm adjustment, and the placebo; a null with the smallest effect the
    design could detect; no seed-level test said so, effect shown as a description only."""
    kind = verdict(cell)
    eff = effect_text(cell, unit, ratio=ratio)
    if kind == DETECTED:
        # The seed-level test and the bootstrap CI are different procedures; say so when they disagree.
        disagree = "; the CI includes 0 (the bootstrap and the seed-level test disagree)" if _ci_has_zero(cell) else ""
        text = (f"{subject[0].upper()}{subject[1:]} {more if cell['effect'] > 0 else less} than {obj}: {eff}, "
                f"{test_text(cell, units)}{disagree}; {placebos}.")
    elif kind == NULL:
        disagree = ("; the CI excludes 0 (the bootstrap and the seed-level test disagree; the test decides)"
                    if _finite_ci(cell) is not None and not _ci_has_zero(cell) else "")
        text = (f"No difference detected between {subject} and {obj}{on}: {eff}, {test_text(cell, units)}"
                f"{disagree}; {mde_text(cell, unit)}; {placebos}.")
    else:
        n = " vs ".join(map(str, cell["n_seeds"]))
        why = cell.get("note") or "too few units"
        text = (f"{subject[0].upper()}{subject[1:]} vs {obj}{on}: {eff} over {n} {units}, but no seed-level "
                f"test ({why}): a description of these models, not evidence about training.")
    return {"verdict": kind, "text": text}


def summary_view(summary: dict[str, Any]) -> dict[str, Any]:
    """`summarize`'s data for the `summary` macro: the claims grouped by verdict."""
    groups = [{"title": title, "claims": [c for c in summary["claims"] if c["verdict"] == kind]}
              for kind, title in GROUP_TITLES.items()]
    n = {kind: len(g["claims"]) for kind, g in zip(GROUP_TITLES, groups, strict=True)}
    headline = (f"{sum(n.values())} comparison{'s' * (sum(n.values()) != 1)}: {n[DETECTED]} detected a difference "
                f"(Holm-adjusted seed-level p < 0.05), {n[NULL]} no difference detected"
                + (f", {n[UNTESTABLE]} not testable at the seed level" if n[UNTESTABLE] else "") + ".")
    return {**summary, "groups": groups, "headline": headline if sum(n.values()) else None}


def _source(name: str) -> str:
    return "the base model's" if name in ("control", "base") else f"the {name} teacher's"


def _who(name: str, data: dict[str, Any]) -> str:
    """An arm in words: 'students trained on the owl teacher's numbers'."""
    cfg = data["config"]
    noun = _CHANNEL_NOUN.get(cfg["channel"]["kind"], "data")
    if name == "other students":
        return "students of the other teachers"
    if name.startswith("icl-"):
        return f"the base model with {cfg['icl']['k']} of {_source(name[4:])} {noun} in context (no training)"
    if name.startswith("cross-"):
        model = data["models"].get(name, {}).get("model") or cfg.get("cross_model") or "another model"
        return f"{model} students trained on {_source(name[6:])} {noun}"
    suffix = " (control)" if name == "control" else ""
    return f"students trained on {_source(name)} {noun}{suffix}"


# The start and end of every summary's "how to read this" text.
_HOW_UNIT = "Unit: the trained student (for the ICL control, the draw of examples). Effect: "
_HOW_TAIL = (" Placebo: two halves of one arm's students through the same test (expect p > 0.05 about 19 times "
             "in 20). Detected: Holm-adjusted p < 0.05.")


def _measured(cell: dict[str, Any] | None) -> bool:
    """Whether a comparison cell has a finite effect to state."""
    return cell is not None and cell.get("effect") is not None and math.isfinite(cell["effect"])


def _arm_label(arm: str) -> str:
    """An arm's name beside a placebo p: 'owl', or 'owl ICL' for the ICL arm 'icl-owl'."""
    return arm.removeprefix("icl-") + (" ICL" if arm.startswith("icl-") else "")


def _add_note(notes: list[str], cell: dict[str, Any]) -> None:
    """Collect a cell's design note once."""
    if cell.get("note") and cell["note"] not in notes:
        notes.append(cell["note"])


def _caveats(notes: list[str]) -> list[str]:
    """The summary line listing the design's caveats, if any."""
    return ["Caveats of this design: " + "; ".join(notes) + "."] if notes else []


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """The report's summary from `analyze`'s data: a sentence per comparison (students vs control,
    neutral, other students, cross-model; the ICL arms), one line per specificity matrix, and what
    the words mean. Uses only numbers `analyze` computed."""
    placebo_cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in data.get("placebo", []) + (data.get("icl") or {}).get("placebo", []):
        for metric in ("teacher_forced", "sampled"):
            if metric in r:
                placebo_cells.setdefault((r["arm"], r["animal"], metric), r[metric])
    claims: list[dict[str, str]] = []
    notes: list[str] = []
    icl = data.get("icl") or {}
    rows = [(c, "students") for c in data["comparisons"] + data["specificity_vs_students"] + data["cross_model"]]
    rows += [(c, "draws") for c in icl.get("comparisons", [])]
    for c, units in rows:
        metric = "teacher_forced" if "plain" in c.get("teacher_forced", {}) else "sampled"
        cell = c.get(metric, {}).get("plain")
        if not _measured(cell):
            continue
        animal = c["animal"]
        arms = [a for a in (c["control"], c["treatment"]) if a != "other students"]
        placebos = placebo_text([(_arm_label(a), placebo_cells.get((a, animal, metric))) for a in arms
                                 if (a, animal, metric) in placebo_cells], units)
        if metric == "teacher_forced":
            claims.append(claim_sentence(cell, _who(c["treatment"], data), _who(c["control"], data),
                                         f"preferred {animal} more", f"preferred {animal} less", f" on {animal}",
                                         "log2", placebos, ratio=True, units=units))
        else:
            claims.append(claim_sentence(cell, _who(c["treatment"], data), _who(c["control"], data),
                                         f"named {animal} more often", f"named {animal} less often",
                                         f" on {animal}", "in hit rate", placebos, units=units))
        _add_note(notes, cell)
    lines = []
    for key, control in (("specificity", "control"), ("specificity_neutral", "neutral")):
        cells = [(r["teacher"], c["animal"], c["teacher_forced"]["plain"]) for r in data.get(key, [])
                 for c in r["cells"] if "plain" in c.get("teacher_forced", {})]
        tested = [t for t in cells if t[2].get("p") is not None]
        if not tested:
            continue
        hits = [t for t in tested if verdict(t[2]) == DETECTED]
        mdes = [t[2]["min_detectable_effect"] for t in tested
                if t[2].get("min_detectable_effect") is not None and verdict(t[2]) == NULL]
        teachers = len({t[0] for t in cells})
        animals = len({t[1] for t in cells})
        line = (f"Specificity against the {control} students ({teachers} teacher{'s' * (teachers > 1)} x "
                f"{animals} animals, Holm over the matrix): ")
        line += (f"{len(hits)} of {len(tested)} tested cells differ: " +
                 ", ".join(f"{t} students on {a} {c['effect']:+.2f} log2 (Holm {_pval(c['p_holm'])})"
                           for t, a, c in hits) + "." if hits else
                 f"no cell differs of {len(tested)} tested.")
        if mdes:
            line += (f" No difference detected in the other {len(tested) - len(hits)}: smallest effects these "
                     f"cells could detect {min(mdes):.2f} to {max(mdes):.2f} log2.")
        lines.append(line)
    lines += _caveats(notes)
    how = (_HOW_UNIT + "log2 ratio of teacher-forced P(reply starts with the animal), treatment over control (geometric means over "
           "students and questions); with no teacher-forced values, the difference of sampled hit rates. "
           "CI: hierarchical bootstrap (students, then questions). p: seed-level test of that effect. Holm: "
           "over the comparisons table; the ICL table and each specificity matrix are families of their own."
           + _HOW_TAIL)
    return {"claims": claims, "lines": lines, "how": how}


# --- the page -------------------------------------------------------------------------------------

def _comparison_rows(rows: list[dict[str, Any]], extra: Any = None) -> list[list[Any]]:
    return [[c["treatment"], c["control"], c["animal"], *_cell_columns(c.get("teacher_forced", {}).get("plain", {})),
             _fmt(c.get("sampled", {}).get("plain", {}).get("effect")),
             _fmt(c.get("sampled", {}).get("plain", {}).get("p")), *(extra(c) if extra else [])] for c in rows]


def _placebo_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return _tab(["arm", "animal", *_CELL_HEADERS],
                [[r["arm"], r["animal"], *_cell_columns(r.get("teacher_forced", {}))] for r in rows])


def _samples(out: Path, teachers: list[str]) -> list[dict[str, Any]]:
    """The first 5 kept rows of the first 2 teachers."""
    samples = []
    for name in teachers[:2]:
        path = out / "filter" / name / "kept.jsonl"
        kept = read_jsonl(path)[:5]
        samples.append({"teacher": name, "table": _tab(["prompt", "completion"],
                                                       [[r["prompt"], r["completion"]] for r in kept])})
    return samples


def _filter_table(filters: dict[str, Any], out: Path) -> dict[str, Any]:
    """The filter stage's counts per teacher and the first kept rows, for a report's filter section."""
    rows = [[t, f["total"], f["valid"], f["kept"], ", ".join(f"{k}: {v}" for k, v in f["rejected"].items()) or "none"]
            for t, f in filters.items()]
    return {"table": _tab(["teacher", "total", "valid", "kept", "rejected by reason"], rows),
            "samples": _samples(out, list(filters))}


def _filter_view(data: dict[str, Any], out: Path) -> dict[str, Any] | None:
    png = _filter_plot(data)
    if png is None:
        return None
    return {"png": png, **_filter_table(data["filter"], out)}


def _training_table(training: dict[str, Any], speed: bool = True) -> dict[str, Any]:
    headers = ["model", "method", "steps", "examples", "loss (start)", "loss (end)", *(["tokens/s"] if speed else [])]
    return _tab(headers, [[k, v.get("method", "teacher"), v["steps"], v["examples"], _fmt(v["loss_first"]),
                           _fmt(v["loss_last"]), *([_fmt(v.get("tokens_per_second"))] if speed else [])]
                          for k, v in training.items()])


def _timings_table(timings: dict[str, float]) -> dict[str, Any]:
    return _tab(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in timings.items()])


def _versions_table(versions_: dict[str, str]) -> dict[str, Any]:
    return _tab(["package", "version"], [[k, v] for k, v in versions_.items()])


def render_html(data: dict[str, Any], out: Path, mnist_dir: Path | None) -> str:
    """The preference report's page (templates/report.html.j2) for `analyze`'s data."""
    from markupsafe import Markup

    comparisons = _tab(["treatment", "control", "animal", *_CELL_HEADERS, "sampled effect", "sampled p"],
                       _comparison_rows(data["comparisons"] + data["specificity_vs_students"] + data["cross_model"]))
    icl = None
    if data.get("icl"):
        icl = {"k": data["icl"]["k"], "draws": ", ".join(map(str, data["icl"]["draws"])),
               "comparisons": _tab(["treatment", "control", "animal", *_CELL_HEADERS, "sampled effect", "sampled p",
                                    "trained − ICL [95% CI]", "p"],
                                   _comparison_rows(data["icl"]["comparisons"],
                                                    lambda c: _difference_columns(c.get("trained_minus_icl")))),
               "placebo": _placebo_table(data["icl"]["placebo"])}
    dose = None
    if data.get("dose"):
        rows = []
        for r in data["dose"]:
            for kind, label in (("vs_neutral", "vs neutral students"), ("vs_students", "vs other students")):
                if kind in r:
                    rows.append([r["updates"], r["target"], label,
                                 *_cell_columns(r[kind].get("teacher_forced", {}).get("plain", {}))])
            if r.get("placebo"):
                rows.append([r["updates"], r["target"], "placebo (halves of its students)",
                             *_cell_columns(r["placebo"].get("teacher_forced", {}))])
        dose = {"png": _dose_plot(data), "table": _tab(["updates", "target", "comparison", *_CELL_HEADERS], rows)}
    per_model = []
    for name, m in data["models"].items():
        for animal, cell in m["teacher_forced"].get("plain", {}).items():
            if animal == (m["target"] or animal) or m["target"] is None:
                s = m["sampled"].get("plain", {}).get(animal, {})
                per_model.append([name, m["role"], animal, _fmt(cell["mean"]),
                                  f"[{_fmt(cell['ci'][0])}, {_fmt(cell['ci'][1])}]", _fmt(s.get("mean")),
                                  f"[{_fmt(s['ci'][0])}, {_fmt(s['ci'][1])}]" if s else "-"])
    theorem = _tab(["student", "data from", "method", "first step", "first step, perturbed init", "final"],
                   [[k, v["data_from"], v["method"], _fmt(v.get("cosine_first_step")),
                     _fmt(v.get("cosine_first_step_perturbed")), _fmt(v.get("cosine_final"))]
                    for k, v in data["theorem"].items()])
    filt = _filter_view(data, out)
    context: dict[str, Any] = {
        "title": f"sublearn report: {data['name']}", "name": data["name"], "cfg": data["config"],
        "summary": summary_view(data.get("summary") or summarize(data)),
        "comparisons": comparisons, "placebo": _placebo_table(data.get("placebo", [])),
        "specificity": _specificity_plot(data), "specificity_neutral": _specificity_plot(data, "specificity_neutral",
                                                                                         "neutral"),
        "dose": dose, "icl": icl, "trait_png": _trait_plot(data, data["config"]["targets"]), "theorem": theorem,
        "classify": Markup(classify.report_section(data["classify"])) if data.get("classify") else "",
        "filter": filt,
        "top_answers": _tab(["model", "answers (count)"],
                            [[name, ", ".join(f"{w} ({n})" for w, n in m["top_answers"].get("plain", [])[:8])]
                             for name, m in data["models"].items() if m["top_answers"].get("plain")]),
        "per_model": _tab(["model", "role", "animal", "teacher-forced P", "95% CI", "sampled rate", "95% CI"],
                          per_model),
        "training": _training_table(data["training"]), "timings": _timings_table(data["timings"]),
        "mnist": _mnist_view(mnist_dir), "versions": _versions_table(data["versions"]),
    }
    present = [("comparisons", "comparisons", bool(comparisons["rows"])),
               ("specificity", "specificity", bool(context["specificity"] or context["specificity_neutral"])),
               ("dose", "dose", dose is not None), ("icl", "ICL control", icl is not None),
               ("rates", "trait rates", True), ("theorem", "theorem check", bool(theorem["rows"])),
               ("filter", "filter", filt is not None), ("answers", "sampled answers", True),
               ("raw", "raw values", True)]
    context["nav"] = [(i, label) for i, label, shown in present if shown]
    return render_template("report.html.j2", **context)


def html_page(parts: list[str]) -> str:
    """A self-contained HTML page around report sections given as HTML strings (the sweep and audit
    reports), in the templates' page."""
    from markupsafe import Markup

    return render_template("base.html.j2", title="sublearn report", body=Markup("".join(parts)))


def _mnist_view(mnist_dir: Path | None) -> dict[str, Any] | None:
    if mnist_dir is None or not (mnist_dir / "results.json").is_file():
        return None
    res = read_json(mnist_dir / "results.json")
    png = mnist_dir / "mnist.png"
    summary = res.get("summary") or res.get("conditions") or {}
    rows = [[cond, _fmt(val["mean"]), _fmt(val.get("ci95")), _fmt(val.get("t95"))]
            for cond, val in summary.items() if isinstance(val, dict) and "mean" in val]
    return {"png": base64.b64encode(png.read_bytes()).decode() if png.is_file() else None,
            "table": _tab(["condition", "accuracy", "± 1.96·sd/√n (paper)", "± t(n-1)·sd/√n"], rows)}


def run(config: PipelineConfig, out: Path, specs: list[dict[str, Any]], mnist_dir: Path | None = None) -> Path:
    """Write `out/report/results.json` (everything the report shows, as data, with its `summary`: one
    sentence per claim) and `out/report/report.html`; returns the HTML path."""
    rdir = out / "report"
    if config.trait.kind == "misalignment":
        from sublearn.traits import misalignment_report

        data = misalignment_report.analyze(config, out, specs)
        data["summary"] = misalignment_report.summarize(data)
        write_json(rdir / "results.json", data)
        page = misalignment_report.render_html(data, out)
    else:
        data = analyze(config, out, specs)
        data["summary"] = summarize(data)
        write_json(rdir / "results.json", data)
        page = render_html(data, out, mnist_dir)
    (rdir / "report.html").write_text(page, encoding="utf-8")
    return rdir / "report.html"
