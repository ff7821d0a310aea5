"""Tidy tables of a run's results for pandas: `report/values.csv` (every evaluated value) and
`report/comparisons.csv` (every comparison the report makes), one row per observation.

    import pandas as pd
    values = pd.read_csv("runs/demo/report/values.csv")
    comparisons = pd.read_csv("runs/demo/report/comparisons.csv")
    # the demo's claim from the values alone: owl students vs neutral students on owl, teacher-forced,
    # the teacher replicate as the unit (log2 of P, averaged over questions, then over each teacher's students)
    tf = values.query("metric == 'teacher_forced' and variant == 'plain' and item == 'owl' and role in ['student', 'neutral-control']")

`values.csv`, columns `VALUE_COLUMNS`: model (the evaluated model's name in the run: base,
teacher-owl-r2, owl-r2-s1, owl-s1@12), role (base, teacher, student, neutral-control, ...), arm and
replicate (whose teacher: the arm's name and replicate 1, 2, ...; empty for the base model), seed
(a student's), updates (a student's updates at this evaluation: its snapshots too), metric and variant
(the trait's: preference: teacher_forced / sampled x plain / prefixed), question (its index), item (the
animal, or the misalignment metric's item) and value (teacher-forced: the probability, not its log;
sampled: the share of samples naming the animal).

`comparisons.csv`, columns `COMPARISON_COLUMNS`: one row per comparison cell of the report's
results.json (family: comparisons, placebo, resample_placebo, cross_model, specificity,
specificity_vs_students, verdict_own, verdict_contrast, dose_vs_neutral, dose_vs_students, dose_placebo),
with its effect, interval, p, the multiplicity-adjusted p of its family where the report made one,
the smallest detectable effect, the test, the unit and the number of units per side. `sublearn compare`
and `sublearn sweep` write the same columns (`comparison_row`).

CSV, not parquet: parquet would make pyarrow (170 MB installed, measured in this venv) a dependency of
every install for tables of a few thousand rows; the CSV is written with the standard library and read by any tool.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VALUE_COLUMNS = ["model", "role", "arm", "replicate", "seed", "updates", "metric", "variant", "question", "item",
                 "value"]
COMPARISON_COLUMNS = ["family", "label", "treatment", "control", "item", "metric", "variant", "effect", "ci_low",
                      "ci_high", "level", "p", "p_adjusted", "adjustment", "mde", "test", "unit", "n_treatment",
                      "n_control", "scale", "source"]

_REPLICATE = re.compile(r"^(?P<arm>.+?)(?:-r(?P<rep>\d+))?$")


def _arm(name: str | None) -> tuple[str | None, int | None]:
    """('owl', 2) for 'owl-r2', ('owl', 1) for 'owl' (a replicate name, as `roster.replicate_name` writes)."""
    if not name:
        return None, None
    m = _REPLICATE.match(name)
    assert m is not None
    return m.group("arm"), int(m.group("rep") or 1)


def _whose(spec: dict[str, Any]) -> str | None:
    """The teacher (replicate) behind an evaluated model: its data's writer for a student, itself for a
    teacher, none for a base model."""
    name = str(spec.get("name", ""))
    if spec.get("role") in ("base", "cross-base"):
        return None
    if name.startswith("teacher-"):
        return name.removeprefix("teacher-")
    adapter = spec.get("adapter")
    if adapter:  # train/<student>/seed<n>/adapter...: the student's data is its name's
        parts = Path(str(adapter)).parts
        if len(parts) >= 2 and parts[0] == "train":
            return parts[1]
    base = name.split("@", 1)[0]
    return re.sub(r"-s\d+$", "", base).removeprefix("cross-")


def value_rows(evaluations: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of values.csv from (spec, evaluation results) pairs: every per-question value of every
    metric of the form {metric: {variant: {item: [value per question]}}}."""
    rows: list[dict[str, Any]] = []
    for spec, results in evaluations:
        arm, replicate = _arm(_whose(spec))
        head = {"model": spec.get("name"), "role": spec.get("role"), "arm": arm, "replicate": replicate,
                "seed": spec.get("seed"), "updates": spec.get("updates")}
        for metric, by_variant in results.items():
            if not isinstance(by_variant, dict):
                continue
            for variant, by_item in by_variant.items():
                if not isinstance(by_item, dict):
                    continue
                for item, values in by_item.items():
                    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                               for v in values):
                        continue
                    rows.extend({**head, "metric": metric, "variant": variant, "question": q, "item": item,
                                 "value": float(v)} for q, v in enumerate(values))
    return rows


def comparison_row(cell: dict[str, Any], *, family: str, label: str, treatment: str | None, control: str | None,
                   item: str | None, metric: str, variant: str | None, source: str = "",
                   adjusted_keys: tuple[str, ...] = ("p_holm", "p_holm_grid")) -> dict[str, Any]:
    """One row of comparisons.csv from a comparison cell (`ArmComparison.as_dict()` and what the report adds:
    p_holm, min_detectable_effect). `adjusted_keys`: which adjusted p to report, the first present (a
    sweep's grid-wide Holm is 'p_holm_grid')."""
    ci = cell.get("ci") or [None, None]
    n = cell.get("n_seeds") or [None, None]
    adjusted = next(((cell[k], k.removeprefix("p_")) for k in adjusted_keys if cell.get(k) is not None), (None, None))
    return {"family": family, "label": label, "treatment": treatment, "control": control, "item": item,
            "metric": metric, "variant": variant, "effect": cell.get("effect"), "ci_low": ci[0], "ci_high": ci[1],
            "level": cell.get("level"), "p": cell.get("p"), "p_adjusted": adjusted[0], "adjustment": adjusted[1],
            "mde": cell.get("min_detectable_effect"), "test": cell.get("test"), "unit": cell.get("unit"),
            "n_treatment": n[0], "n_control": n[1], "scale": cell.get("scale"), "source": source}


def _cells(by_metric: dict[str, Any]) -> Iterable[tuple[str, str | None, dict[str, Any]]]:
    """(metric, variant, cell) of a comparison's {metric: {variant: cell}} or {metric: cell}."""
    for metric in ("teacher_forced", "sampled"):
        value = by_metric.get(metric)
        if not isinstance(value, dict):
            continue
        if "effect" in value:
            yield metric, None, value
        else:
            for variant, cell in value.items():
                if isinstance(cell, dict) and "effect" in cell:
                    yield metric, variant, cell


def preference_comparison_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of comparisons.csv from the preference report's results.json."""
    rows: list[dict[str, Any]] = []

    def add(family: str, comps: Iterable[dict[str, Any]]) -> None:
        for c in comps:
            label = c.get("label") or f"{c.get('treatment', c.get('arm'))} vs {c.get('control', 'its halves')}"
            for metric, variant, cell in _cells(c):
                rows.append(comparison_row(cell, family=family, label=label, treatment=c.get("treatment", c.get("arm")),
                                           control=c.get("control"), item=c.get("animal"), metric=metric,
                                           variant=variant))

    add("comparisons", data.get("comparisons", []))
    add("placebo", data.get("placebo", []))
    add("resample_placebo", data.get("resample_placebo", []))
    add("cross_model", data.get("cross_model", []))
    add("specificity_vs_students", data.get("specificity_vs_students", []))
    for group in data.get("specificity_neutral", []) + data.get("specificity", []):
        add("specificity", group.get("cells", []))
    for v in data.get("verdicts", []):
        for part, family, label in (("own", "verdict_own", f"{v['target']} vs {v.get('reference')} on {v['target']}"),
                                    ("contrast", "verdict_contrast", f"{v['target']}: own shift - mean shift on the "
                                     "others")):
            if isinstance(v.get(part), dict):
                for metric, variant, cell in _cells(v[part]):
                    rows.append(comparison_row(cell, family=family, label=label, treatment=v["target"],
                                               control=v.get("reference"), item=v["target"], metric=metric,
                                               variant=variant))
    for d in data.get("dose", []):
        for kind in ("vs_neutral", "vs_students", "placebo"):
            comp = d.get(kind)
            if not isinstance(comp, dict):
                continue
            for metric, variant, cell in _cells(comp):
                rows.append(comparison_row(cell, family=f"dose_{kind}", label=f"{d['target']} {kind} @ {d['updates']} "
                                           "updates", treatment=d["target"], control=comp.get("control"),
                                           item=comp.get("animal", d["target"]), metric=metric, variant=variant,
                                           source=str(d["updates"])))
    return rows


def sweep_comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a sweep's comparisons.csv: each pooled group's comparisons and placebos (its id in
    `source`), adjusted by the Holm correction over the whole grid."""
    rows = []
    for group in result.get("pooled", []):
        for family in ("comparisons", "placebo"):
            for c in group.get(family, []):
                for metric, variant, cell in _cells(c):
                    rows.append(comparison_row(
                        cell, family=family, label=c.get("label") or f"{c.get('arm')} placebo",
                        treatment=c.get("treatment", c.get("arm")), control=c.get("control"), item=c.get("animal"),
                        metric=metric, variant=variant, source=str(group.get("group", "")),
                        adjusted_keys=("p_holm_grid",)))
    return rows


def compare_rows(rows: list[dict[str, Any]], treatment: str, control: str) -> list[dict[str, Any]]:
    """The rows of `sublearn compare --csv`: each run's effect (family compare) and, for every run but the
    baseline, its change from the baseline (family compare_change, Holm over the runs compared)."""
    out = []
    for r in rows:
        out.append(comparison_row({**r, "n_seeds": r.get("n_seeds"), "min_detectable_effect": r.get("mde"),
                                   "scale": "log2 ratio of geometric means"}, family="compare",
                                  label=f"{r['defense']}", treatment=treatment, control=control, item=treatment,
                                  metric="teacher_forced", variant="plain", source=r["run"]))
        change = r.get("change")
        if change:
            out.append(comparison_row({**change, "effect": change.get("difference")}, family="compare_change",
                                      label=f"{r['defense']} vs the baseline", treatment=treatment, control=control,
                                      item=treatment, metric="teacher_forced", variant="plain", source=r["run"]))
    return out


def generic_comparison_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparison cell (a mapping with an effect and an interval) anywhere in a report's results, its
    path as the label and its top-level section as the family: for reports without their own mapping
    (the misalignment trait's)."""
    rows: list[dict[str, Any]] = []

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            if "effect" in node and "ci" in node:
                rows.append(comparison_row(node, family=path[0] if path else "", label="/".join(path),
                                           treatment=node.get("treatment") if isinstance(node.get("treatment"), str)
                                           else None, control=node.get("control") if isinstance(node.get("control"), str)
                                           else None, item=None, metric=path[-1] if path else "", variant=None))
                return
            for k, v in node.items():
                walk(v, [*path, str(k)])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                label = v.get("label") or v.get("name") if isinstance(v, dict) else None
                walk(v, [*path, str(label or i)])

    walk({k: v for k, v in data.items() if k not in ("config", "versions", "summary")}, [])
    return rows


def write_tables(out: Path, data: dict[str, Any], specs: list[dict[str, Any]], kind: str) -> None:
    """report/values.csv and report/comparisons.csv of run directory `out` (see the module docstring)."""
    from sublearn.rundir import read_json

    evaluations = []
    for spec in specs:
        path = out / "evaluate" / str(spec["name"]) / "results.json"
        if path.is_file():
            evaluations.append((spec, read_json(path)))
    write_csv(out / "report" / "values.csv", value_rows(evaluations), VALUE_COLUMNS)
    comps = preference_comparison_rows(data) if kind == "preference" else generic_comparison_rows(data)
    write_csv(out / "report" / "comparisons.csv", comps, COMPARISON_COLUMNS)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """`rows` as CSV with `columns` (missing values empty; non-finite floats as 'nan'/'inf', which pandas reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) and math.isfinite(v) else v))
                             for k, v in row.items()})
    tmp.replace(path)
    return path
