"""`sublearn compare RUN_DIR... --baseline RUN_DIR`: one trait comparison across run directories, and
how much each run changed it relative to a baseline run (e.g. transfer with each defense vs none).

    rows = run([Path("runs/def-within"), Path("runs/def-mask")], Path("runs/def-none"),
               treatment="elephant", control="neutral")

For every run: the effect of `treatment`'s students vs `control`'s students on the treatment's trait
(the preference trait's teacher-forced metric: log2 ratio of geometric means of P(reply starts with
the animal); seed-level p and the 95% CI of the same test: `analysis.stats.compare_arms`), the
difference from the baseline's effect (`analysis.stats.difference_of_effects`: Welch t on the
contrast of student means, the student as unit), and the defense's cost in kept data (rows and
loss-bearing completion tokens that reached the students, from each teacher's `defend/.../defend.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.stats import (
    adjust,
    compare_arms,
    difference_of_effects,
    min_detectable_effect,
    placebo,
    replicate_means,
)
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json
from sublearn.stages.pipeline import run_config


def arm_matrix(out: Path, config: PipelineConfig, teacher: str, animal: str) -> tuple[np.ndarray, str]:
    """(units x questions) log2 P(reply starts with `animal`) of the students of arm `teacher`'s data, and
    the unit: its students, or with `teacher.replicates` >= 2 its teachers (each the mean of its students)."""
    from sublearn.stages.report.common import matrix
    from sublearn.stages.roster import replicates, students

    per_teacher = []
    for name in replicates(config, teacher):
        results = []
        for st in students(config):
            if st["student"] != name:
                continue
            path = out / "evaluate" / f"{name}-s{st['seed']}" / "results.json"
            if not path.is_file():
                raise SublearnError(f"{path}: not evaluated; finish the run first (sublearn run ... --out {out})")
            results.append(read_json(path))
        values = matrix(results, "teacher_forced", "plain", animal)
        if values is None:
            raise SublearnError(f"{out}: no students of teacher {name!r} (teachers: "
                                f"{', '.join(sorted({s['student'] for s in students(config)}))})")
        per_teacher.append(values)
    if len(per_teacher) > 1:
        return replicate_means(per_teacher), "teachers"
    return per_teacher[0], "students"


def cost(out: Path, config: PipelineConfig) -> dict[str, Any]:
    """What the defense kept of the data, summed over every teacher's data (all arms alike)."""
    from sublearn.stages.roster import teacher_names

    if config.defense.kind == "none":
        return {"rows": 1.0, "tokens": 1.0, "detail": {}}
    totals = {"rows_in": 0, "rows_out": 0, "tokens_in": 0, "tokens_out": 0}
    detail = {}
    for name in teacher_names(config):
        facts = read_json(out / "defend" / name / "defend.json")
        for k in totals:
            totals[k] += int(facts[k])
        detail[name] = facts
    return {"rows": totals["rows_out"] / max(1, totals["rows_in"]),
            "tokens": totals["tokens_out"] / max(1, totals["tokens_in"]), "detail": detail}


def describe(config: PipelineConfig) -> str:
    d = config.defense.model_dump(mode="json")
    kind = d.pop("kind")
    return kind if kind == "none" else f"{kind}({', '.join(f'{k}={v}' for k, v in d.items())})"


def run(runs: list[Path], baseline: Path, *, treatment: str, control: str, seed: int = 0) -> list[dict[str, Any]]:
    """One row per run (the baseline first): effect, CI, p, MDE, difference from the baseline, cost."""
    base_cfg = run_config(baseline)
    if base_cfg.trait.kind != "preference":
        raise SublearnError(f"{baseline}: `sublearn compare` reads the preference trait's metric; this run's "
                            "trait is another")
    animal = treatment
    (b_t, base_unit), (b_c, _) = (arm_matrix(baseline, base_cfg, treatment, animal),
                                  arm_matrix(baseline, base_cfg, control, animal))
    rows = []
    for out in [baseline, *[r for r in runs if r.resolve() != baseline.resolve()]]:
        cfg = run_config(out)
        (t, unit), (c, _) = arm_matrix(out, cfg, treatment, animal), arm_matrix(out, cfg, control, animal)
        if t.shape[1] != b_t.shape[1]:
            raise SublearnError(f"{out}: {t.shape[1]} evaluation questions, the baseline has {b_t.shape[1]}")
        if unit != base_unit:
            raise SublearnError(f"{out}: its unit is the {unit[:-1]} (teacher.replicates={cfg.teacher.replicates}), "
                                f"the baseline's the {base_unit[:-1]}; compare runs of one design")
        cmp = compare_arms(t, c, np.random.default_rng([seed, 41]), unit=unit)
        row: dict[str, Any] = {"run": str(out), "defense": describe(cfg), "train_method": cfg.train.method,
                               "effect": cmp.effect, "ci": cmp.as_dict()["ci"], "p": cmp.p, "test": cmp.test,
                               "n_seeds": list(cmp.n_seeds), "unit": unit, "mde": min_detectable_effect(t, c),
                               **cost(out, cfg)}
        halves = placebo(t, np.random.default_rng([seed, 43]), unit=unit)
        row["placebo"] = halves.as_dict() if halves is not None else None
        if out is not baseline:
            row["change"] = difference_of_effects(b_t, b_c, t, c).as_dict()
        rows.append(row)
    # One family: every run's change from the baseline (e.g. each defense tried).
    changes = [r["change"] for r in rows if "change" in r]
    for change, p_holm in zip(changes, adjust([ch["p"] for ch in changes], "holm"), strict=True):
        change["p_holm"] = p_holm
    return rows


def format_table(rows: list[dict[str, Any]], treatment: str, control: str) -> str:
    """A Markdown table of `run`'s rows (what the CLI prints)."""
    def f(x: Any, d: int = 2) -> str:
        return "-" if x is None else f"{x:+.{d}f}"

    def pv(x: float | None) -> str:
        return "-" if x is None else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")

    lines = [f"| run | defense | {treatment} vs {control} (log2) [95% CI] | p | placebo p | reduction vs baseline "
             "[95% CI] | p (Holm) | rows kept | tokens kept |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ch = r.get("change")
        red = "(baseline)" if ch is None else f"{f(ch['difference'])} [{f(ch['ci'][0])}, {f(ch['ci'][1])}]"
        red_p = f"{pv(ch['p'])} ({pv(ch.get('p_holm'))})" if ch else "-"
        lines.append(f"| {r['run']} | {r['defense']} | {f(r['effect'])} [{f(r['ci'][0])}, {f(r['ci'][1])}] | "
                     f"{pv(r['p'])} | {pv((r['placebo'] or {}).get('p'))} | {red} | {red_p} | "
                     f"{r['rows']:.0%} | {r['tokens']:.0%} |")
    return "\n".join(lines)
