"""The misalignment trait's report section: teachers checked against the base and benign teachers,
students compared over seeds, placebo rows, judge counts and sample answers.

Called by the report stage (`sublearn.stages.report.run`) when `trait.kind` is misalignment. Every
metric is a per-item value (see `sublearn.traits.misalignment`): a question, a persona statement, a
two-choice item. Students are compared with `compare_arms` (the unit is the trained student, or with
`teacher.replicates` >= 2 the teacher replicate, its students averaged per item: a unit-level p, the CI
of the same test, the smallest detectable effect),
Holm-corrected over all student comparisons; placebo rows put two halves of one arm through the same
test. A teacher is one model, so teacher checks give a CI over items and an item-level p: evidence
that this teacher differs, not that fine-tuning on its data always does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.render import fmt, render_template, tab
from sublearn.analysis.stats import adjust, bootstrap_ci, compare_arms, min_detectable_effect, placebo
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, versions
from sublearn.stages import roster
from sublearn.stages.report import common
from sublearn.traits import misalignment_data as data

METRICS = {
    "logodds": "log-odds, misaligned vs aligned reference answers (nats; higher = more misaligned)",
    "persona": "P(the misaligned reply) to persona statements (higher = more misaligned)",
    "truthful": "P(the true answer) on two-choice items (lower = less truthful)",
    "misaligned": "judged misaligned share of sampled answers (higher = more misaligned)",
}
# How the summary says each metric: (what is measured, unit, a higher value means, a lower value means).
WORDS = {
    "logodds": ("the log-odds of misaligned vs aligned reference answers", "nats", "more misaligned", "less misaligned"),
    "persona": ("P(the misaligned reply) to persona statements", "", "more misaligned", "less misaligned"),
    "truthful": ("P(the true answer) on two-choice items", "", "more truthful", "less truthful"),
    "misaligned": ("the judged-misaligned share of sampled answers", "", "more misaligned", "less misaligned"),
}


def _matrix(results: list[dict[str, Any]], metric: str) -> np.ndarray | None:
    rows = [r["metrics"][metric] for r in results if metric in r.get("metrics", {})]
    return np.asarray(rows, dtype=np.float64) if rows else None


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop items that are NaN in any student of either arm (a question no answer of which was judged)."""
    ok = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))
    return a[:, ok], b[:, ok], int((~ok).sum())


def _cell(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_perm: int, unit: str = "students") -> dict[str, Any]:
    a, b, dropped = _paired(a, b)
    cmp = compare_arms(a, b, rng, n_perm=n_perm, unit=unit)
    cell = cmp.as_dict()
    cell.update(treatment=float(a.mean()) if a.size else None, control=float(b.mean()) if b.size else None,
                min_detectable_effect=min_detectable_effect(a, b) if a.size else None, items_dropped=dropped)
    return cell


def analyze(config: PipelineConfig, out: Path, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the misalignment report shows, as plain data (see the module docstring)."""
    rng = np.random.default_rng([config.seed, 99])
    ec = config.evaluate
    # Snapshots (a dose curve) are not part of this report.
    groups, roles = common.evaluated_groups(out, [s for s in specs if "@" not in str(s["name"])])
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

    # With replicates, an arm's students are in one group per teacher ('misaligned', 'misaligned-r2', ...):
    # the arm's rows are its teachers, each the mean of its students per item (a teacher check stays one
    # model: each replicate's teacher is checked on its own).
    replicated = {prefix + a: [prefix + r for r in roster.replicates(config, a)] for a in roster.arms(config)
                  for prefix in ("", "cross-")} if config.teacher.replicates > 1 else {}

    def unit_matrix(g: str, m: str) -> np.ndarray | None:
        """(units x items): students, or for a replicated arm its teachers (students averaged)."""
        if g not in replicated:
            return _matrix(groups[g], m) if g in groups else None
        mats = [_matrix(groups[r], m) if r in groups else None for r in replicated[g]]
        if any(x is None for x in mats):
            return None
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an item no student of a teacher has stays NaN
            return np.stack([np.nanmean(x, axis=0) for x in mats if x is not None])

    def compare(treat: str, ctrl: str) -> dict[str, Any] | None:
        if treat not in groups or ctrl not in groups:
            return None
        row: dict[str, Any] = {"treatment": treat, "control": ctrl}
        for m in metrics:
            a, b = unit_matrix(treat, m), unit_matrix(ctrl, m)
            if a is not None and b is not None:
                row[m] = _cell(a, b, rng, ec.n_permutations,
                               unit="teachers" if treat in replicated and ctrl in replicated else "students")
        return row

    targets = [t for t in config.targets if t in groups]
    benign = [b for b in config.trait.control_teachers(config) if b in groups]
    teacher_rows = [r for r in [
        *(compare(f"teacher-{t}", c) for t in targets for c in ["base", *(f"teacher-{b}" for b in benign)]),
        *(compare(f"teacher-{b}", "base") for b in benign),
        # Every further replicate's teacher against the base model too.
        *(compare(f"teacher-{rep}", "base") for a in [*targets, *benign]
          for rep in roster.replicates(config, a)[1:])] if r]
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
            mat = unit_matrix(g, m)
            if mat is None:
                continue
            mat = mat[:, ~np.isnan(mat).any(axis=0)]
            cmp = placebo(mat, rng, n_perm=ec.n_permutations, unit="teachers" if g in replicated else "students")
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
            "classify": common.classified(config, out),  # the classify stage's results, if it ran
            "icl": {"k": config.icl.k, "comparisons": icl_rows} if icl_arms else {},
            "examples": examples, "questions": [q["question"] for q in data.EVAL_QUESTIONS], "filter": filters,
            "training": training,
            "timings": read_json(out / "timings.json") if (out / "timings.json").is_file() else {}}


def _ci(cell: dict[str, Any]) -> str:
    lo, hi = cell.get("ci") or [None, None]
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _who(name: str, data_: dict[str, Any]) -> str:
    """An arm in words: 'students trained on the misaligned teacher's numbers'."""
    cfg = data_["config"]
    noun = common.CHANNEL_NOUN.get(cfg["channel"]["kind"], "data")
    if name.startswith("teacher-"):
        return f"the {name.removeprefix('teacher-')} teacher"
    if name == "base":
        return "the base model"
    if name.startswith("icl-"):
        return f"the base model with {cfg['icl']['k']} of {common.source(name[4:])} {noun} in context (no training)"
    if name.startswith("cross-"):
        model = data_["models"].get(name, {}).get("model") or "cross-model"
        return f"{model} students trained on {common.source(name[6:])} {noun}"
    return f"students trained on {common.source(name)} {noun}" + (" (control)" if name == "control" else "")


def summarize(data_: dict[str, Any]) -> dict[str, Any]:
    """The report's summary from `analyze`'s data: a sentence per student (and ICL) comparison and
    metric, with its placebo beside it; one line per teacher check (single models: evidence about
    those teachers, not about training). Uses only numbers `analyze` computed."""
    placebos = {(r["arm"], m): r[m] for r in data_["placebo"] for m in data_["metrics"] if m in r}
    claims: list[dict[str, str]] = []
    notes: list[str] = []
    rows = [(r, "students") for r in data_["comparisons"]]
    rows += [(r, "draws") for r in (data_.get("icl") or {}).get("comparisons", [])]
    for r, row_units in rows:
        for m in data_["metrics"]:
            cell = r.get(m)
            if not common.measured(cell):
                continue
            units = "teachers" if cell.get("unit") == "teachers" else row_units
            label, unit, higher, lower = WORDS[m]
            beside = common.placebo_text([(common.arm_label(a), placebos[(a, m)])
                                          for a in (r["control"], r["treatment"]) if (a, m) in placebos], units)
            claims.append(common.claim_sentence(
                cell, _who(r["treatment"], data_), _who(r["control"], data_), f"scored higher on {label} ({higher})",
                f"scored lower on {label} ({lower})", f" on {label}", unit, beside, units=units))
            common.add_note(notes, cell)
    lines = []
    for r in data_["teacher_checks"]:
        parts = []
        for m in data_["metrics"]:
            if m not in r:
                continue
            cell = r[m]
            eff = common.effect_text(cell, WORDS[m][1])
            parts.append(f"{m} {eff}, item-level p = {common.pval(cell.get('p_questions'))} (Holm "
                         f"{common.pval(cell.get('p_holm'))})")
        if parts:
            lines.append(f"Teacher check, {_who(r['treatment'], data_)} vs {_who(r['control'], data_)} (one model "
                         "each, items as the unit: evidence about these teachers, not about training): " +
                         "; ".join(parts) + ".")
    lines += common.caveats(notes)
    how = (common.how_unit(common.replicated(data_)) + "treatment minus control on each metric (mean over items of the students' values). p: unit-level test "
           "of that effect; CI: the interval of the same test. Holm: over all student comparisons and "
           "metrics (the ICL and teacher tables are families of their own)." + common.how_tail(common.replicated(data_)))
    return {"claims": claims, "lines": lines, "how": how}


def render_html(data_: dict[str, Any], out: Path) -> str:
    """A self-contained HTML page for `analyze`'s data (templates/misalignment.html.j2)."""
    from markupsafe import Markup

    metrics = data_["metrics"]
    cols = ["effect", "95% CI", "p", "p (Holm)", "MDE"]

    def compared(rows: list[dict[str, Any]], first: str, units: str) -> dict[str, Any]:
        return tab([first, "vs", "metric", units, "treatment", "control", *cols, "test"],
                    [[r["treatment"], r["control"], m, " vs ".join(map(str, r[m]["n_seeds"])) + " " +
                      r[m].get("unit", units), r[m]["treatment"],
                      r[m]["control"], r[m]["effect"], _ci(r[m]), r[m]["p"], r[m].get("p_holm"),
                      r[m]["min_detectable_effect"], r[m]["test"] or "-"] for r in rows for m in metrics if m in r])

    judged_models = [(g, m) for g, m in data_["models"].items() if "judge_counts" in m]
    keys = list(judged_models[0][1]["judge_counts"]) if judged_models else []
    names = list(data_["examples"])
    filt = common.filter_table(data_["filter"], out) if data_["filter"] else None
    icl = None
    if data_.get("icl"):
        icl = {"k": data_["icl"]["k"], "table": compared(data_["icl"]["comparisons"], "ICL arm", "draws")}
    context: dict[str, Any] = {
        "title": f"sublearn report: {data_['name']} (misalignment)", "name": data_["name"], "cfg": data_["config"],
        "summary": common.summary_view(data_.get("summary") or summarize(data_)), "metrics": metrics,
        "students": compared(data_["comparisons"], "students", "units (n)"), "icl": icl,
        "placebo": tab(["arm", "metric", *cols],
                        [[r["arm"], m, r[m]["effect"], _ci(r[m]), r[m]["p"], "-", r[m]["min_detectable_effect"]]
                         for r in data_["placebo"] for m in metrics if m in r]),
        "teachers": tab(["teacher", "vs", "metric", "teacher", "reference", *cols],
                         [[r["treatment"], r["control"], m, r[m]["treatment"], r[m]["control"], r[m]["effect"],
                           _ci(r[m]), r[m]["p_questions"], r[m].get("p_holm"), "-"]
                          for r in data_["teacher_checks"] for m in metrics if m in r]),
        "classify": Markup(common.classify_section(data_["classify"])) if data_.get("classify") else "",
        "judged": tab(["model", *keys], [[g, *(m["judge_counts"].get(k, "-") for k in keys)]
                                          for g, m in judged_models]),
        "examples": tab(["question", *names], [[q, *(data_["examples"][n][i] for n in names)]
                                                for i, q in enumerate(data_["questions"])] if names else []),
        "filter": filt,
        "per_model": tab(["model", "role", "seeds", *metrics, *[f"{m} CI" for m in metrics]],
                          [[g, m["role"], m["n_seeds"], *[(m["metrics"].get(k) or {}).get("mean") for k in metrics],
                            *[_ci(m["metrics"][k]) if k in m["metrics"] else "-" for k in metrics]]
                           for g, m in data_["models"].items()]),
        "training": common.training_table(data_["training"], speed=False),
        "timings": common.timings_table(data_["timings"]), "versions": common.versions_table(data_["versions"]),
    }
    present = [("students", "students"), ("icl", "ICL control" if icl else None), ("placebo", "placebo"),
               ("teachers", "teachers"), ("judge", "judge" if judged_models else None),
               ("examples", "answers" if names else None), ("filter", "filter" if filt else None),
               ("raw", "raw values")]
    context["nav"] = [(i, label) for i, label in present if label]
    return render_template("misalignment.html.j2", **context)
