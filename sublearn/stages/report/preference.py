"""The preference trait's report: statistics across evaluated models and the page of
`templates/report.html.j2` (plots inlined as PNG, opens offline).

The unit of every comparison is the trained student (see `analyze` and `sublearn.analysis.stats.compare_arms`):
effect (teacher-forced: mean log2 ratio over students and questions; sampled: difference of hit
rates), a seed-level p and the CI of that same test, the smallest effect the
design could detect, and Holm correction over each matrix or curve; placebo rows put two halves of
one arm's students through the same test. Comparisons: each trait student vs the control student
(base-model data), vs the neutral LoRA control, vs the other teachers' students; cross-model
students vs their control; with `train.snapshots`, the same along the number of updates (dose).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.render import fmt, render_template, tab
from sublearn.analysis.stats import (
    ArmComparison,
    adjust,
    bootstrap_ci,
    compare_arms,
    difference_of_effects,
    min_detectable_effect,
    placebo,
    replicate_means,
)
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, versions
from sublearn.stages import roster
from sublearn.stages.report.common import (
    CELL_HEADERS,
    CHANNEL_NOUN,
    DETECTED,
    NULL,
    add_note,
    arm_label,
    caveats,
    cell_columns,
    claim_sentence,
    classified,
    classify_section,
    effect_text,
    evaluated_groups,
    filter_table,
    how_tail,
    how_unit,
    matrix,
    mde_text,
    measured,
    placebo_text,
    pval,
    replicated,
    source,
    summary_view,
    test_text,
    timings_table,
    training_table,
    verdict,
    versions_table,
)
from sublearn.stages.report.figures import dose_plot, filter_plot, specificity_plot, trait_plot


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

    The unit of every comparison is the trained student, or with `teacher.replicates` >= 2 the teacher
    replicate (its students averaged: `replicate_means`): `compare_arms` gives the effect (mean log2
    ratio for the teacher-forced metric, difference of per-question hit rates for the sampled one),
    a unit-level p for that effect and the CI of the same test (t-interval on unit means).
    Each comparison family (a specificity matrix, a dose curve) is Holm-corrected; placebo rows compare
    two halves of one arm's units (students, or teachers) through the same test."""
    rng = np.random.default_rng([config.seed, 99])
    ec = config.evaluate
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

    # With replicates, an arm's students are in one group per teacher ('owl', 'owl-r2', ...; snapshots
    # 'owl@16', 'owl-r2@16'): the arm's rows are its teachers, each the mean of its students.
    replicated = {prefix + a: [prefix + r for r in roster.replicates(config, a)] for a in roster.arms(config)
                  for prefix in ("", "cross-")} if config.teacher.replicates > 1 else {}
    resampled = config.resample_placebo
    if resampled and config.teacher.replicates > 1:
        # The resampled datasets form a pseudo-arm of their own: one unit per teacher, like the arm.
        replicated[resampled + roster.RESAMPLED] = [r + roster.RESAMPLED for r in roster.replicates(config, resampled)]

    def unit_of(group: str | list[str]) -> str:
        first = group if isinstance(group, str) else group[0]
        return "teachers" if first.partition("@")[0] in replicated else "students"

    def arm(group: str | list[str], metric: str, variant: str, animal: str) -> np.ndarray | None:
        """A group's matrix (rows: students, or teachers for a replicated arm); a list of groups is one
        arm whose unit k is the mean of their units k (e.g. 'the other teachers' students', compared
        seed by seed)."""
        if isinstance(group, str):
            name, at, updates = group.partition("@")
            members = [rep + at + updates for rep in replicated[name]] if name in replicated else [group]
            if any(m not in models for m in members):
                return None
            mats = [matrix(models[m]["raw"], metric, variant, animal) for m in members]
            if any(m is None for m in mats):
                return None
            return replicate_means([m for m in mats if m is not None]) if name in replicated else mats[0]
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
                    cmp = compare_arms(a, b, rng, n_perm=ec.n_permutations, unit=unit_of(treat))
                    out_c.setdefault(metric, {})[variant] = _cell(cmp, a, b, metric)
        return out_c

    def placebo_row(group: str, animal: str) -> dict[str, Any] | None:
        row: dict[str, Any] = {"arm": group, "animal": animal}
        for metric in ("teacher_forced", "sampled"):
            a = arm(group, metric, "plain", animal)
            cmp = placebo(a, rng, n_perm=ec.n_permutations, unit=unit_of(group)) if a is not None else None
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
    for family in (specificity, specificity_neutral):
        correct(family, lambda r: r["cells"])
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
    # The data-resample placebo: the arm's students vs those of a second sampling of the same teachers,
    # through the claims' own test, on every animal the arm is compared on. Drawn last (see above).
    resample_rows = []
    if resampled and resampled in models and resampled + roster.RESAMPLED in models:
        for animal in ([resampled] if resampled in targets else targets):
            c = compare(resampled, resampled + roster.RESAMPLED, animal)
            row = {"arm": resampled, "animal": animal, **{m: c[m]["plain"] for m in ("teacher_forced", "sampled")
                                                           if "plain" in c.get(m, {})}}
            resample_rows.append(row)
    verdicts = _verdicts(config, models, targets, arm, unit_of, correct, rng)
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
            "specificity_vs_students": versus_students, "cross_model": cross, "placebo": placebos, "resample_placebo": resample_rows, "dose": dose,
            "verdicts": verdicts,
            "theorem": theorem, "filter": filters, "icl": icl,
            "classify": classified(config, out),  # the classify stage's results, if it ran
            "training": training, "timings": read_json(out / "timings.json") if (out / "timings.json").is_file() else {}}


def _verdicts(config: PipelineConfig, models: dict[str, Any], targets: list[str], arm: Any, unit_of: Any,
              correct: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One verdict per trait arm, the summary's first lines. Two tests at the same unit, Holm over all
    of them: the arm vs the reference arm (neutral, else the base-model control) on its own animal, and
    the specificity contrast (that shift minus the arm's mean shift on the other evaluated animals), so
    that an arm whose students moved on every animal is not read as a specific transfer."""
    reference = next((g for g in ("neutral", "control") if g in models), None)
    if reference is None:
        return []
    ec = config.evaluate
    rows = []
    for target in targets:
        row: dict[str, Any] = {"target": target, "reference": reference, "others": len(ec.animals) - 1}
        for metric in ("teacher_forced", "sampled"):
            own_a, own_b = arm(target, metric, "plain", target), arm(reference, metric, "plain", target)
            if own_a is None or own_b is None:
                continue
            unit = unit_of(target)
            cmp = compare_arms(own_a, own_b, rng, n_perm=ec.n_permutations, unit=unit)
            row.setdefault("own", {})[metric] = {"plain": _cell(cmp, own_a, own_b, metric)}
            others = [a for a in ec.animals if a != target]
            mats_a = [arm(target, metric, "plain", a) for a in others]
            mats_b = [arm(reference, metric, "plain", a) for a in others]
            if not others or any(m is None for m in [*mats_a, *mats_b]):
                continue
            con_a = own_a - np.mean(np.stack([m for m in mats_a if m is not None]), axis=0)
            con_b = own_b - np.mean(np.stack([m for m in mats_b if m is not None]), axis=0)
            cmp = compare_arms(con_a, con_b, rng, n_perm=ec.n_permutations, unit=unit)
            cell = cmp.as_dict()
            cell["min_detectable_effect"] = min_detectable_effect(con_a, con_b)
            row.setdefault("contrast", {})[metric] = {"plain": cell}
        rows.append(row)
    correct([{"cells": [r[k] for r in rows for k in ("own", "contrast") if k in r]}], lambda r: r["cells"])
    return rows


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
    return [f"{fmt(d['difference'])} [{fmt(d['ci'][0])}, {fmt(d['ci'][1])}]", fmt(d["p"])]


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """The report's summary from `analyze`'s data: a sentence per comparison (students vs control,
    neutral, other students, cross-model; the ICL arms), one line per specificity matrix, and what
    the words mean. Uses only numbers `analyze` computed."""
    placebo_cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in data.get("placebo", []) + (data.get("icl") or {}).get("placebo", []):
        for metric in ("teacher_forced", "sampled"):
            if metric in r:
                placebo_cells.setdefault((r["arm"], r["animal"], metric), r[metric])
    resample_cells = {(r["arm"], r["animal"], metric): r[metric] for r in data.get("resample_placebo", [])
                      for metric in ("teacher_forced", "sampled") if metric in r}
    claims: list[dict[str, str]] = []
    notes: list[str] = []
    icl = data.get("icl") or {}
    rows = [(c, "students") for c in data["comparisons"] + data["specificity_vs_students"] + data["cross_model"]]
    rows += [(c, "draws") for c in icl.get("comparisons", [])]
    for c, units in rows:
        metric = "teacher_forced" if "plain" in c.get("teacher_forced", {}) else "sampled"
        cell = c.get(metric, {}).get("plain")
        if not measured(cell):
            continue
        if cell.get("unit") == "teachers":
            units = "teachers"
        animal = c["animal"]
        arms = [a for a in (c["control"], c["treatment"]) if a != "other students"]
        placebos = placebo_text([(arm_label(a), placebo_cells.get((a, animal, metric))) for a in arms
                                 if (a, animal, metric) in placebo_cells], units,
                                [(a, resample_cells.get((a, animal, metric))) for a in arms
                                 if (a, animal, metric) in resample_cells])
        if metric == "teacher_forced":
            claims.append(claim_sentence(cell, _who(c["treatment"], data), _who(c["control"], data),
                                         f"preferred {animal} more", f"preferred {animal} less", f" on {animal}",
                                         "log2", placebos, ratio=True, units=units))
        else:
            claims.append(claim_sentence(cell, _who(c["treatment"], data), _who(c["control"], data),
                                         f"named {animal} more often", f"named {animal} less often",
                                         f" on {animal}", "in hit rate", placebos, units=units))
        add_note(notes, cell)
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
        n_arms = len({t[0] for t in cells})
        animals = len({t[1] for t in cells})
        line = (f"Specificity against the {control} students ({n_arms} arm{'s' * (n_arms > 1)} x "
                f"{animals} animals, Holm over the matrix): ")
        line += (f"{len(hits)} of {len(tested)} tested cells differ: " +
                 ", ".join(f"{t} students on {a} {c['effect']:+.2f} log2 (Holm {pval(c['p_holm'])})"
                           for t, a, c in hits) + "." if hits else
                 f"no cell differs of {len(tested)} tested.")
        if mdes:
            line += (f" No difference detected in the other {len(tested) - len(hits)}: smallest effects these "
                     f"cells could detect {min(mdes):.2f} to {max(mdes):.2f} log2.")
        lines.append(line)
    lines += caveats(notes)
    how = (how_unit(replicated(data)) + "log2 ratio of teacher-forced P(reply starts with the animal), treatment over control (geometric means over "
           "students and questions); with no teacher-forced values, the difference of sampled hit rates. "
           + ("p: unit-level test of that effect (t-test on teacher means, each the mean of its students; a "
              "mixed model when teachers have unequal numbers of students). " if replicated(data) else
              "p: unit-level test of that effect (t-test on student means; a permutation test with many students). ")
           + "CI: the interval of that same test, so it excludes 0 exactly when p < 0.05. Holm: "
           "over the comparisons table; the ICL table and each specificity matrix are families of their own."
           + how_tail(replicated(data)))
    verdicts = [_verdict_sentence(v, data) for v in data.get("verdicts", [])]
    return {"verdicts": verdicts, "claims": claims, "lines": lines, "how": how}


SPECIFIC, UNSPECIFIC, NO_TRANSFER, UNTESTED = ("specific transfer", "a shift that is not specific",
                                               "no transfer detected", "not testable")


def _verdict_sentence(v: dict[str, Any], data: dict[str, Any]) -> dict[str, str]:
    """One trait's verdict as a sentence: 'specific transfer' only when the arm beats the reference arm
    on its own animal AND that shift exceeds its mean shift on the other animals (both Holm-adjusted);
    an arm that moved on every animal alike gets 'a shift that is not specific'."""
    target, metric = v["target"], "teacher_forced" if "teacher_forced" in v.get("own", {}) else "sampled"
    own = v.get("own", {}).get(metric, {}).get("plain")
    con = v.get("contrast", {}).get(metric, {}).get("plain")
    unit = "log2" if metric == "teacher_forced" else "in hit rate"
    who, ref = _who(target, data), _who(v["reference"], data)
    if not own or verdict(own) == "untestable":
        why = (own or {}).get("note") or "no evaluation"
        return {"trait": target, "verdict": UNTESTED,
                "text": f"{target.capitalize()}: {UNTESTED} ({why}); {who} vs {ref} is a description only."}
    units = "teachers" if own.get("unit") == "teachers" else "students"
    design = "" if units == "teachers" else f"; {units} of one dataset per arm: differences between datasets count as effects"
    first = f"{who} vs {ref} on {target}: {effect_text(own, unit, ratio=metric == 'teacher_forced')}, {test_text(own, units)}"
    second = (f"that shift minus their mean shift on the other {v['others']} animals: {effect_text(con, unit)}, "
              f"{test_text(con, units)}") if con and con.get("p") is not None else "no specificity contrast testable"
    own_found = verdict(own) == DETECTED
    specific = own_found and con is not None and verdict(con) == DETECTED and (con["effect"] > 0) == (own["effect"] > 0)
    if specific:
        kind = SPECIFIC if own["effect"] > 0 else f"specific shift away from {target}"
    elif own_found:
        kind = UNSPECIFIC
    else:
        kind = NO_TRANSFER
    tail = f"; {mde_text(own, unit)}" if kind == NO_TRANSFER else ""
    return {"trait": target, "verdict": kind,
            "text": f"{target.capitalize()}: {kind}. {first[0].upper()}{first[1:]}; {second}{tail}{design}."}


def _who(name: str, data: dict[str, Any]) -> str:
    """An arm in words: 'students trained on the owl teacher's numbers'."""
    cfg = data["config"]
    noun = CHANNEL_NOUN.get(cfg["channel"]["kind"], "data")
    if name == "other students":
        return "students of the other teachers"
    if name.startswith("icl-"):
        return f"the base model with {cfg['icl']['k']} of {source(name[4:])} {noun} in context (no training)"
    if name.startswith("cross-"):
        model = data["models"].get(name, {}).get("model") or cfg.get("cross_model") or "another model"
        return f"{model} students trained on {source(name[6:])} {noun}"
    suffix = " (control)" if name == "control" else ""
    return f"students trained on {source(name)} {noun}{suffix}"


def _comparison_rows(rows: list[dict[str, Any]], extra: Any = None) -> list[list[Any]]:
    return [[c["treatment"], c["control"], c["animal"], *cell_columns(c.get("teacher_forced", {}).get("plain", {})),
             fmt(c.get("sampled", {}).get("plain", {}).get("effect")),
             fmt(c.get("sampled", {}).get("plain", {}).get("p")), *(extra(c) if extra else [])] for c in rows]


def _placebo_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return tab(["arm", "animal", *CELL_HEADERS],
                [[r["arm"], r["animal"], *cell_columns(r.get("teacher_forced", {}))] for r in rows])


def _filter_view(data: dict[str, Any], out: Path) -> dict[str, Any] | None:
    png = filter_plot(data)
    if png is None:
        return None
    return {"png": png, **filter_table(data["filter"], out)}


def render_html(data: dict[str, Any], out: Path, mnist_dir: Path | None) -> str:
    """The preference report's page (templates/report.html.j2) for `analyze`'s data."""
    from markupsafe import Markup

    comparisons = tab(["treatment", "control", "animal", *CELL_HEADERS, "sampled effect", "sampled p"],
                       _comparison_rows(data["comparisons"] + data["specificity_vs_students"] + data["cross_model"]))
    icl = None
    if data.get("icl"):
        icl = {"k": data["icl"]["k"], "draws": ", ".join(map(str, data["icl"]["draws"])),
               "comparisons": tab(["treatment", "control", "animal", *CELL_HEADERS, "sampled effect", "sampled p",
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
                                 *cell_columns(r[kind].get("teacher_forced", {}).get("plain", {}))])
            if r.get("placebo"):
                rows.append([r["updates"], r["target"], "placebo (halves of its students)",
                             *cell_columns(r["placebo"].get("teacher_forced", {}))])
        dose = {"png": dose_plot(data), "table": tab(["updates", "target", "comparison", *CELL_HEADERS], rows)}
    per_model = []
    for name, m in data["models"].items():
        for animal, cell in m["teacher_forced"].get("plain", {}).items():
            if animal == (m["target"] or animal) or m["target"] is None:
                s = m["sampled"].get("plain", {}).get(animal, {})
                per_model.append([name, m["role"], animal, fmt(cell["mean"]),
                                  f"[{fmt(cell['ci'][0])}, {fmt(cell['ci'][1])}]", fmt(s.get("mean")),
                                  f"[{fmt(s['ci'][0])}, {fmt(s['ci'][1])}]" if s else "-"])
    theorem = tab(["student", "data from", "method", "first step", "first step, perturbed init", "final"],
                   [[k, v["data_from"], v["method"], fmt(v.get("cosine_first_step")),
                     fmt(v.get("cosine_first_step_perturbed")), fmt(v.get("cosine_final"))]
                    for k, v in data["theorem"].items()])
    filt = _filter_view(data, out)
    context: dict[str, Any] = {
        "title": f"sublearn report: {data['name']}", "name": data["name"], "cfg": data["config"],
        "summary": summary_view(data.get("summary") or summarize(data)),
        "comparisons": comparisons, "replicated": replicated(data),
        "placebo": _placebo_table(data.get("placebo", []) + [
            {**r, "arm": f"{r['arm']}: its data vs a second sampling of its teachers"}
            for r in data.get("resample_placebo", [])]),
        "specificity": specificity_plot(data), "specificity_neutral": specificity_plot(data, "specificity_neutral",
                                                                                         "neutral"),
        "dose": dose, "icl": icl, "trait_png": trait_plot(data, data["config"]["targets"]), "theorem": theorem,
        "classify": Markup(classify_section(data["classify"])) if data.get("classify") else "",
        "filter": filt,
        "top_answers": tab(["model", "answers (count)"],
                            [[name, ", ".join(f"{w} ({n})" for w, n in m["top_answers"].get("plain", [])[:8])]
                             for name, m in data["models"].items() if m["top_answers"].get("plain")]),
        "per_model": tab(["model", "role", "animal", "teacher-forced P", "95% CI", "sampled rate", "95% CI"],
                          per_model),
        "training": training_table(data["training"]), "timings": timings_table(data["timings"]),
        "mnist": _mnist_view(mnist_dir), "versions": versions_table(data["versions"]),
    }
    present = [("comparisons", "comparisons", bool(comparisons["rows"])),
               ("specificity", "specificity", bool(context["specificity"] or context["specificity_neutral"])),
               ("dose", "dose", dose is not None), ("icl", "ICL control", icl is not None),
               ("rates", "trait rates", True), ("theorem", "theorem check", bool(theorem["rows"])),
               ("filter", "filter", filt is not None), ("answers", "sampled answers", True),
               ("raw", "raw values", True)]
    context["nav"] = [(i, label) for i, label, shown in present if shown]
    return render_template("report.html.j2", **context)


def _mnist_view(mnist_dir: Path | None) -> dict[str, Any] | None:
    if mnist_dir is None or not (mnist_dir / "results.json").is_file():
        return None
    res = read_json(mnist_dir / "results.json")
    png = mnist_dir / "mnist.png"
    summary = res.get("summary") or res.get("conditions") or {}
    rows = [[cond, fmt(val["mean"]), fmt(val.get("ci95")), fmt(val.get("t95"))]
            for cond, val in summary.items() if isinstance(val, dict) and "mean" in val]
    return {"png": base64.b64encode(png.read_bytes()).decode() if png.is_file() else None,
            "table": tab(["condition", "accuracy", "± 1.96·sd/√n (paper)", "± t(n-1)·sd/√n"], rows)}
