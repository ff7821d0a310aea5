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

Refused in one line before anything is computed: an evaluation or defense it reads that `sublearn status`
does not call done (missing, partial, stale, its files deleted) or whose files changed since its
manifest hashed them; a treatment equal to its control or not a trait target, a control that is not
an arm; a run given twice or also as the baseline (a run compared with itself).
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
from sublearn.stages.roster import arms, replicates, students, teacher_names


def arm_matrix(out: Path, config: PipelineConfig, teacher: str, animal: str) -> tuple[np.ndarray, str]:
    """(units x questions) log2 P(reply starts with `animal`) of the students of arm `teacher`'s data, and
    the unit: its students, or with `teacher.replicates` >= 2 its teachers (each the mean of its students).
    Call `check_finished` first: this reads the evaluations' results as they are."""
    from sublearn.stages.report.common import matrix

    per_teacher = []
    for name in replicates(config, teacher):
        paths = _evaluations(out, config, name)
        results = [_results(path, animal) for path in paths]
        values = matrix(results, "teacher_forced", "plain", animal) if results else None
        if values is None:
            raise SublearnError(f"{out}: no students of teacher {name!r} (teachers: "
                                f"{', '.join(sorted({s['student'] for s in students(config)}))})")
        per_teacher.append(values)
    if len(per_teacher) > 1:
        return replicate_means(per_teacher), "teachers"
    return per_teacher[0], "students"


def _evaluations(out: Path, config: PipelineConfig, teacher: str) -> list[Path]:
    """The results.json of every student of `teacher`'s data."""
    return [out / "evaluate" / f"{teacher}-s{st['seed']}" / "results.json" for st in students(config)
            if st["student"] == teacher]


def _results(path: Path, animal: str) -> dict[str, Any]:
    """An evaluation's results, with the values compared checked: a list of numbers, one per question."""
    results = read_json(path)
    forced = results.get("teacher_forced")
    plain = forced.get("plain") if isinstance(forced, dict) else None
    row = plain.get(animal) if isinstance(plain, dict) else None
    if not isinstance(row, list) or not row or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                       for v in row):
        raise SublearnError(f"{path}: teacher_forced.plain.{animal} is not a list of numbers (one per question); "
                            "damaged, or not an evaluation of this animal")
    return results


def check_finished(out: Path, config: PipelineConfig, arms_read: list[str]) -> None:
    """Refuse in one line, naming the stage directory, an evaluation of the students of `arms_read` (or
    the defense data whose cost is read) that `sublearn status` does not call done (missing, partial,
    stale, waiting on an unfinished stage, or finished with its files deleted since), and an
    evaluation whose files no longer hash as its manifest recorded (`sublearn status --verify`'s
    'corrupt'; results are small, so they are always rehashed here)."""
    from sublearn.rundir import output_problem, read_manifest
    from sublearn.stages.pipeline import status

    states = dict(status(config, out))
    wanted = [path.parent for arm in arms_read for name in replicates(config, arm)
              for path in _evaluations(out, config, name)]
    if config.defense.kind != "none":
        wanted += [out / "defend" / name for name in teacher_names(config)]
    for stage_dir in wanted:
        rel = stage_dir.relative_to(out).as_posix()
        # Until every student is trained, status lists the evaluations as one entry, "evaluate/*".
        state = states.get(rel) or states.get(f"{rel.split('/')[0]}/*") or "missing"
        if state == "done":
            state = output_problem(stage_dir, read_manifest(stage_dir), verify=rel.startswith("evaluate/")) or state
        if state != "done":
            why = {"corrupt": " (its files changed since the stage finished: their hash is not its manifest's; "
                              f"delete {stage_dir} and rerun to redo it)"}.get(state, "")
            raise SublearnError(f"{stage_dir}: {state}{why}; `sublearn compare` reads finished evaluations: finish "
                                f"the run with `sublearn run <config> --out {out}` (see `sublearn status {out}`)")


def cost(out: Path, config: PipelineConfig) -> dict[str, Any]:
    """What the defense kept of the data, summed over every teacher's data (all arms alike). Dilution
    (train.mix_arm) keeps 1 - mix_fraction of each diluted student's own rows (tokens: not counted);
    cleaning afterwards (train.clean_after) keeps every row and costs `extra_updates` per student."""
    extra = {"extra_updates": config.train.clean_after} if config.train.clean_after else {}
    if config.train.mix_arm is not None:
        return {"rows": 1.0 - config.train.mix_fraction, "tokens": None, **extra,
                "detail": {"mix": {"from": config.train.mix_arm, "fraction": config.train.mix_fraction}}}
    if config.defense.kind == "none":
        return {"rows": 1.0, "tokens": 1.0, **extra, "detail": {}}
    totals = {"rows_in": 0, "rows_out": 0, "tokens_in": 0, "tokens_out": 0}
    detail = {}
    for name in teacher_names(config):
        facts = read_json(out / "defend" / name / "defend.json", dict.fromkeys(totals, int))
        for k in totals:
            totals[k] += int(facts[k])
        detail[name] = facts
    return {"rows": totals["rows_out"] / max(1, totals["rows_in"]),
            "tokens": totals["tokens_out"] / max(1, totals["tokens_in"]), **extra, "detail": detail}


def describe(config: PipelineConfig) -> str:
    """The run's defenses in a few words: the `defense:` transform and the training-time ones (dilution,
    cleaning afterwards), e.g. 'none', 'shuffle(scope=within, seed=0)', 'dilution(neutral, 0.5)'."""
    d = config.defense.model_dump(mode="json")
    kind = d.pop("kind")
    parts = [] if kind == "none" else [f"{kind}({', '.join(f'{k}={v}' for k, v in d.items())})"]
    t = config.train
    if t.mix_arm is not None:
        parts.append(f"dilution({t.mix_arm}, {t.mix_fraction:g})")
    if t.clean_after:
        parts.append(f"clean_after({t.clean_after} updates on {t.clean_arm})")
    return " + ".join(parts) or "none"


def run(runs: list[Path], baseline: Path, *, treatment: str, control: str, seed: int = 0) -> list[dict[str, Any]]:
    """One row per run (the baseline first): effect, CI, p, MDE, difference from the baseline, cost.
    Every run is checked (see the module docstring) before any is read."""
    if treatment == control:
        raise SublearnError(f"--treatment {treatment} --control {control}: the same arm; a treatment compared with "
                            "itself shows nothing: name another arm as --control (e.g. neutral or control)")
    seen: dict[Path, Path] = {baseline.resolve(): baseline}
    for r in runs:
        first = seen.setdefault(r.resolve(), r)
        if first is not r:
            what = "the --baseline" if first is baseline else "a run given earlier"
            raise SublearnError(f"{r}: the same directory as {what} ({first}); a run compared with itself shows no "
                                "change: give each run once, and the baseline only as --baseline")
    configs = {out: run_config(out) for out in [baseline, *runs]}
    for out, cfg in configs.items():
        if cfg.trait.kind != "preference":
            raise SublearnError(f"{out}: `sublearn compare` reads the preference trait's metric; this run's "
                                "trait is another")
        if treatment not in cfg.targets:
            raise SublearnError(f"--treatment {treatment}: not a trait target of {out} (its targets: "
                                f"{', '.join(cfg.targets)})")
        if control not in arms(cfg):
            raise SublearnError(f"--control {control}: not an arm of {out} (its arms: {', '.join(arms(cfg))})")
        check_finished(out, cfg, [treatment, control])
    animal = treatment
    base_cfg = configs[baseline]
    (b_t, base_unit), (b_c, _) = (arm_matrix(baseline, base_cfg, treatment, animal),
                                  arm_matrix(baseline, base_cfg, control, animal))
    rows = []
    for out in [baseline, *runs]:
        cfg = configs[out]
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
                     f"{r['rows']:.0%} | {'-' if r['tokens'] is None else format(r['tokens'], '.0%')} |")
    return "\n".join(lines)
