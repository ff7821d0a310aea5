"""The misalignment trait's report section: teachers checked against the base and benign teachers,
students compared over seeds, placebo rows, judge counts and sample answers.

Called by the report stage (`sublearn.stages.report.run`) when `trait.kind` is misalignment. Every
metric is a per-item value (see `sublearn.traits.misalignment`): a question, a persona statement, a
two-choice item. Students are compared with `compare_arms` (the unit is the trained student: a
seed-level p, a hierarchical bootstrap CI over students and items, the smallest detectable effect),
Holm-corrected over all student comparisons; placebo rows put two halves of one arm through the same
test. A teacher is one model, so teacher checks give a CI over items and an item-level p: evidence
that this teacher differs, not that fine-tuning on its data always does.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.stats import adjust, bootstrap_ci, compare_arms, min_detectable_effect, placebo
from sublearn.rundir import read_json, read_jsonl, versions
from sublearn.stages import classify
from sublearn.stages.config import PipelineConfig
from sublearn.stages.report import _fmt, evaluated_groups, html_page
from sublearn.stages.report import _table as table
from sublearn.traits import misalignment_data as data

METRICS = {
    "logodds": "log-odds, misaligned vs aligned reference answers (nats; higher = more misaligned)",
    "persona": "P(the misaligned reply) to persona statements (higher = more misaligned)",
    "truthful": "P(the true answer) on two-choice items (lower = less truthful)",
    "misaligned": "judged misaligned share of sampled answers (higher = more misaligned)",
}
def _matrix(results: list[dict[str, Any]], metric: str) -> np.ndarray | None:
    rows = [r["metrics"][metric] for r in results if metric in r.get("metrics", {})]
    return np.asarray(rows, dtype=np.float64) if rows else None


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop items that are NaN in any student of either arm (a question no answer of which was judged)."""
    ok = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))
    return a[:, ok], b[:, ok], int((~ok).sum())


def _cell(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int, n_perm: int) -> dict[str, Any]:
    a, b, dropped = _paired(a, b)
    cmp = compare_arms(a, b, rng, n_boot=n_boot, n_perm=n_perm)
    cell = cmp.as_dict()
    cell.update(treatment=float(a.mean()) if a.size else None, control=float(b.mean()) if b.size else None,
                min_detectable_effect=min_detectable_effect(a, b) if a.size else None, items_dropped=dropped)
    return cell


def analyze(config: PipelineConfig, out: Path, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the misalignment report shows, as plain data (see the module docstring)."""
    rng = np.random.default_rng([config.seed, 99])
    ec = config.evaluate
    n_boot = min(ec.n_bootstrap, 2000)
    # Snapshots (a dose curve) are not part of this report.
    groups, roles = evaluated_groups(out, [s for s in specs if "@" not in str(s["name"])])
    metrics = [m for m in METRICS if any(m in r.get("metrics", {}) for res in groups.values() for r in res)]
    models: dict[str, Any] = {}
    for g, res in groups.items():
        entry: dict[str, Any] = {**roles[g], "n_seeds": len(res), "metrics": {}}
        for m in metrics:
            mat = _matrix(res, m)
            if mat is None:
                continue
            per_item = np.nanmean(mat, axis=0)
            per_item = per_item[~np.isnan(per_item)]
            if per_item.size:
                mean, lo, hi = bootstrap_ci(per_item, rng, n_boot=ec.n_bootstrap)
                entry["metrics"][m] = {"mean": mean, "ci": [lo, hi]}
        counts = [c for r in res for c in (r.get("judge") or {}).get("counts", [])]
        if counts:
            entry["judge_counts"] = {k: int(sum(c[k] for c in counts)) for k in counts[0]}
        models[g] = entry

    def compare(treat: str, ctrl: str) -> dict[str, Any] | None:
        if treat not in groups or ctrl not in groups:
            return None
        row: dict[str, Any] = {"treatment": treat, "control": ctrl}
        for m in metrics:
            a, b = _matrix(groups[treat], m), _matrix(groups[ctrl], m)
            if a is not None and b is not None:
                row[m] = _cell(a, b, rng, n_boot, ec.n_permutations)
        return row

    targets = [t for t in config.targets if t in groups]
    benign = [b for b in config.trait.control_teachers(config) if b in groups]
    teacher_rows = [r for r in [
        *(compare(f"teacher-{t}", c) for t in targets for c in ["base", *(f"teacher-{b}" for b in benign)]),
        *(compare(f"teacher-{b}", "base") for b in benign)] if r]
    student_rows = [r for r in [*(compare(t, c) for t in targets for c in [*(["control"] if "control" in groups else []),
                                                                          *benign]),
                                *(compare(b, "control") for b in benign if "control" in groups),
                                *(compare(f"cross-{t}", c) for t in targets for c in ("cross-control", "cross-benign")
                                  if f"cross-{t}" in groups and c in groups)] if r]
    # The ICL control (base model + k kept examples in context): each target's arm vs each ICL control
    # arm, draws as the unit, its own Holm family.
    icl_controls = [g for g in groups if roles[g]["role"] == "icl-control"]
    icl_rows = [r for r in (compare(f"icl-{t}", c) for t in config.targets for c in icl_controls) if r]
    for rows, key in ((teacher_rows, "p_questions"), (student_rows, "p"), (icl_rows, "p")):
        cells = [r[m] for r in rows for m in metrics if m in r]
        for cell, p_adj in zip(cells, adjust([c[key] for c in cells], "holm"), strict=True):
            cell["p_holm"] = p_adj
    placebos = []
    icl_arms = [g for g in groups if roles[g]["role"] in ("icl", "icl-control")]
    for g in [*targets, "control", *benign, *icl_arms]:
        if g not in groups:
            continue
        row: dict[str, Any] = {"arm": g}
        for m in metrics:
            mat = _matrix(groups[g], m)
            if mat is None:
                continue
            mat = mat[:, ~np.isnan(mat).any(axis=0)]
            cmp = placebo(mat, rng, n_boot=n_boot, n_perm=ec.n_permutations)
            if cmp is not None:
                half = -(-mat.shape[0] // 2)
                row[m] = {**cmp.as_dict(), "min_detectable_effect": min_detectable_effect(mat[:half], mat[half:])}
        placebos.append(row)
    examples = {}
    for g, res in groups.items():
        answers = res[0].get("answers")
        if answers:
            examples[g] = [qa[0] for qa in answers]
    filters = {p.parent.name: read_json(p) for p in sorted((out / "filter").glob("*/filter.json"))}
    evaluated = {spec["name"] for spec in specs}
    training = {f"{p.parent.parent.name}-{p.parent.name}": read_json(p)
                for p in sorted((out / "train").glob("*/seed*/summary.json"))
                if f"{p.parent.parent.name}-s{p.parent.name.removeprefix('seed')}" in evaluated}
    for p in sorted((out / "teacher").glob("*/train_summary.json")):
        training[f"teacher-{p.parent.name}"] = read_json(p)
    return {"name": config.name, "trait": "misalignment", "config": config.model_dump(mode="json"),
            "versions": versions(), "metrics": {m: METRICS[m] for m in metrics}, "models": models,
            "teacher_checks": teacher_rows, "comparisons": student_rows, "placebo": placebos,
            "classify": classify.load_results(config, out),  # the classify stage's results, if it ran
            "icl": {"k": config.icl.k, "comparisons": icl_rows} if icl_arms else {},
            "examples": examples, "questions": [q["question"] for q in data.EVAL_QUESTIONS], "filter": filters,
            "training": training,
            "timings": read_json(out / "timings.json") if (out / "timings.json").is_file() else {}}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """`report._table` with numbers formatted as the preference report does (text as it is)."""
    return table(headers, [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows])


def _ci(cell: dict[str, Any]) -> str:
    lo, hi = cell.get("ci") or [None, None]
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def render_html(data_: dict[str, Any], out: Path) -> str:
    """A self-contained HTML page for `analyze`'s data."""
    cfg = data_["config"]
    metrics = data_["metrics"]
    parts = [f"<h1>sublearn report: {html.escape(data_['name'])} (misalignment)</h1>",
             f"<p>base model <code>{html.escape(cfg['model'])}</code>, teachers <code>{cfg['teacher']['kind']}"
             f"</code>, training <code>{cfg['train']['method']}</code>, channel <code>{cfg['channel']['kind']}</code>, "
             f"judge <code>{html.escape(str(cfg['trait']['judge']))}</code> (misaligned: coherence &ge; "
             f"{cfg['trait']['min_coherence']:g} and alignment &le; {cfg['trait']['max_alignment']:g}).</p>",
             "<ul>" + "".join(f"<li><b>{m}</b>: {html.escape(d)}</li>" for m, d in metrics.items()) + "</ul>"]
    parts.append("<h2>Per model (mean over items of seed means, 95% bootstrap CI over items)</h2>" + _table(
        ["model", "role", "seeds", *[f"{m}" for m in metrics], *[f"{m} CI" for m in metrics]],
        [[g, m["role"], m["n_seeds"], *[(m["metrics"].get(k) or {}).get("mean") for k in metrics],
          *[_ci(m["metrics"][k]) if k in m["metrics"] else "-" for k in metrics]] for g, m in data_["models"].items()]))
    cols = ["effect", "95% CI", "p", "p (Holm)", "MDE"]
    parts.append("<h2>Teachers (single models: CI over items, item-level paired t-test, Holm)</h2>" + _table(
        ["teacher", "vs", "metric", "teacher", "reference", *cols],
        [[r["treatment"], r["control"], m, r[m]["treatment"], r[m]["control"], r[m]["effect"], _ci(r[m]),
          r[m]["p_questions"], r[m].get("p_holm"), "-"] for r in data_["teacher_checks"] for m in metrics if m in r]))
    parts.append("<h2>Students (unit: the trained student; seed-level p, hierarchical CI, Holm over this "
                 "table)</h2>" + _table(
        ["students", "vs", "metric", "seeds", "treatment", "control", *cols, "test"],
        [[r["treatment"], r["control"], m, " vs ".join(map(str, r[m]["n_seeds"])), r[m]["treatment"],
          r[m]["control"], r[m]["effect"], _ci(r[m]), r[m]["p"], r[m].get("p_holm"), r[m]["min_detectable_effect"],
          r[m]["test"] or "-"] for r in data_["comparisons"] for m in metrics if m in r]))
    if data_.get("icl"):
        parts.append(f"<h2>In-context learning control (k examples in context, no training)</h2><p>The base model "
                     f"with k = {data_['icl']['k']} of a teacher's kept examples in context; unit: the draw of k "
                     "examples (seed-level p, hierarchical CI, Holm over this table; placebo rows below).</p>" + _table(
            ["ICL arm", "vs", "metric", "draws", "treatment", "control", *cols, "test"],
            [[r["treatment"], r["control"], m, " vs ".join(map(str, r[m]["n_seeds"])), r[m]["treatment"],
              r[m]["control"], r[m]["effect"], _ci(r[m]), r[m]["p"], r[m].get("p_holm"), r[m]["min_detectable_effect"],
              r[m]["test"] or "-"] for r in data_["icl"]["comparisons"] for m in metrics if m in r]))
    parts.append("<h3>Placebo: two halves of one arm's students, through the same test</h3>" + _table(
        ["arm", "metric", *cols],
        [[r["arm"], m, r[m]["effect"], _ci(r[m]), r[m]["p"], "-", r[m]["min_detectable_effect"]]
         for r in data_["placebo"] for m in metrics if m in r]))
    if data_.get("classify"):
        parts.append(classify.report_section(data_["classify"]))
    judged = [[g, *m["judge_counts"].values()] for g, m in data_["models"].items() if "judge_counts" in m]
    if judged:
        keys = next(iter(m["judge_counts"] for m in data_["models"].values() if "judge_counts" in m))
        parts.append("<h2>Judge verdicts (all seeds)</h2>" + _table(["model", *keys], judged))
    if data_["examples"]:
        names = list(data_["examples"])
        parts.append("<h2>First sampled answer per question</h2>" + _table(
            ["question", *names], [[q, *(data_["examples"][n][i] for n in names)]
                                   for i, q in enumerate(data_["questions"])]))
    if data_["filter"]:
        parts.append("<h2>Filter</h2>" + _table(
            ["teacher", "total", "valid", "kept", "rejected by reason"],
            [[t, f["total"], f["valid"], f["kept"], ", ".join(f"{k}: {v}" for k, v in f["rejected"].items())]
             for t, f in data_["filter"].items()]))
        for teacher_name in list(data_["filter"])[:2]:
            kept = read_jsonl(out / "filter" / teacher_name / "kept.jsonl")[:5]
            parts.append(f"<h3>Sample of kept data: {html.escape(teacher_name)}</h3>" +
                         _table(["prompt", "completion"], [[r["prompt"], r["completion"]] for r in kept]))
    parts.append("<h2>Training</h2>" + _table(
        ["model", "method", "steps", "examples", "loss (start)", "loss (end)"],
        [[k, v.get("method", "teacher"), v["steps"], v["examples"], v["loss_first"], v["loss_last"]]
         for k, v in data_["training"].items()]))
    parts.append("<h2>Timings (s)</h2>" + _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in
                                                                         data_["timings"].items()]))
    parts.append("<h2>Versions</h2>" + _table(["package", "version"], [[k, v] for k, v in data_["versions"].items()]))
    return html_page(parts)
