"""What every report of a pipeline run shares: the evaluated models by group, claim sentences and
verdicts, the summary's pieces, and the tables of comparison cells, filter, training, timings,
versions and the classify stage's results.

`sublearn.stages.report.preference` and `.misalignment` build their reports from these; the sweep and
`sublearn compare` read cells and student matrices through them too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.render import fmt, render_template, tab
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, read_jsonl
from sublearn.stages.roster import classify_dir, classify_pairs

# Teacher-forced probabilities are compared on a log2 scale (effects are log2 ratios of geometric
# means over students and questions); this floor only guards log(0), far below any real value.
FLOOR = 1e-30
ALPHA = 0.05  # the level of every seed-level test and verdict


def group_name(spec: dict[str, Any]) -> str:
    """Seeds of one student form a group: 'owl-s0', 'owl-s1' -> 'owl'; snapshots 'owl-s0@16' -> 'owl@16';
    draws of one ICL arm too: 'icl-owl-d1', 'icl-owl-d2' -> 'icl-owl'."""
    name, _, updates = str(spec["name"]).partition("@")
    if spec["role"] in ("student", "control", "neutral-control", "benign-control", "cross", "cross-control",
                        "resample"):
        name = name.rsplit("-s", 1)[0]
    elif spec["role"] in ("icl", "icl-control"):
        name = name.rsplit("-d", 1)[0]
    return f"{name}@{updates}" if updates else name


def evaluated_groups(out: Path, specs: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]],
                                                                      dict[str, dict[str, Any]]]:
    """Every evaluated model's results.json by group (the seeds of one student form a group; see
    `group_name`), and each group's role, target, model and number of updates."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roles: dict[str, dict[str, Any]] = {}
    for spec in specs:
        groups[group_name(spec)].append(read_json(out / "evaluate" / spec["name"] / "results.json"))
        roles[group_name(spec)] = {"role": spec["role"], "target": spec.get("target"), "model": spec["model"],
                                    "updates": spec.get("updates")}
    return groups, roles


def matrix(results: list[dict[str, Any]], metric: str, variant: str, animal: str) -> np.ndarray | None:
    """(students x questions) values of one group: log2 probability (teacher-forced) or hit rate (sampled)."""
    rows = [r[metric][variant][animal] for r in results if variant in r.get(metric, {})]
    if not rows:
        return None
    m = np.asarray(rows, dtype=np.float64)
    return np.log2(np.maximum(m, FLOOR)) if metric == "teacher_forced" else m


CELL_HEADERS = ["units (n)", "TF treat (geo. mean)", "TF ctrl (geo. mean)", "effect (log2)", "95% CI", "p (seed-level)", "test",
                 "p (Holm)", "MDE"]


def cell_columns(c: dict[str, Any]) -> list[str]:
    """The columns of `CELL_HEADERS` for one comparison cell ('-' where it has no value)."""
    if not c:
        return ["-"] * len(CELL_HEADERS)
    ci = c.get("ci") or [None, None]
    return [" vs ".join(str(n) for n in c["n_seeds"]) + f" {c.get('unit', 'students')}", fmt(c["treatment"]), fmt(c["control"]),
            fmt(c["effect"]), f"[{fmt(ci[0])}, {fmt(ci[1])}]", fmt(c["p"]), c.get("test") or "-",
            fmt(c.get("p_holm")), fmt(c.get("min_detectable_effect"))]


CHANNEL_NOUN = {"numbers": "numbers", "code": "code", "cot": "reasoning traces", "text": "text"}


DETECTED, NULL, UNTESTABLE = "detected", "null", "untestable"


GROUP_TITLES = {DETECTED: "Differences detected (unit-level p < 0.05 after Holm)",
                NULL: "No difference detected",
                UNTESTABLE: "Not testable at the unit level"}


def _decimals(x: float) -> int:
    """Decimals that show `x` with about 2 significant digits (at least 2)."""
    if not math.isfinite(x) or x == 0:
        return 2
    return min(6, max(2, 1 - math.floor(math.log10(abs(x)))))


def pval(p: float | None) -> str:
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
    holm = f" (Holm {pval(cell['p_holm'])})" if cell.get("p_holm") is not None else ""
    return f"p = {pval(cell['p'])} over {n} {unit}{holm}"


def _placebo_p(cell: dict[str, Any]) -> str:
    """'p = 0.64, MDE 0.41': a placebo's p and the smallest effect it could have detected."""
    if cell.get("p") is None:
        return "not testable"
    mde = cell.get("min_detectable_effect")
    return f"p = {pval(cell['p'])}" + (f", MDE {_num(mde, '')}" if mde is not None and math.isfinite(mde) else "")


def placebo_text(rows: list[tuple[str, dict[str, Any] | None]], unit: str = "students",
                 resampled: Sequence[tuple[str, dict[str, Any] | None]] = ()) -> str:
    """'placebo, student vs student: neutral students p = 0.64, MDE 0.41' for the placebo rows beside a
    claim (halves of one arm's units), and the data-resample placebo's rows (an arm's data vs a second
    sampling of the same teachers) when the run has them."""
    halves = "teacher vs teacher" if unit == "teachers" else "student vs student"
    parts = [f"{arm} {unit} {_placebo_p(cell)}" for arm, cell in rows if cell is not None]
    text = f"placebo, {halves}: {', '.join(parts)}" if parts else f"no placebo (an arm needs 2 {unit} to split)"
    more = [f"{arm} data vs a second sampling of its teachers {_placebo_p(cell)}"
            for arm, cell in resampled if cell is not None]
    return text + (f"; data-resample placebo: {', '.join(more)}" if more else "")


def verdict(cell: dict[str, Any]) -> str:
    """DETECTED when the Holm-adjusted seed-level p is below 0.05, NULL when tested, else UNTESTABLE."""
    if cell.get("p") is None:
        return UNTESTABLE
    p = cell.get("p_holm", cell["p"])
    return DETECTED if p is not None and p < ALPHA else NULL


def mde_text(cell: dict[str, Any], unit: str) -> str:
    mde = cell.get("min_detectable_effect")
    if mde is None or not math.isfinite(mde):
        return "smallest detectable effect: not computable for this design"
    return f"smallest effect this design could detect: ±{_num(mde, '')} {unit}".rstrip()


def claim_sentence(cell: dict[str, Any], subject: str, obj: str, more: str, less: str, on: str,
                   unit: str, placebos: str, *, ratio: bool = False, units: str = "students") -> dict[str, str]:
    """One claim as a sentence a reader can act on: `subject` {more|less} than `obj` with the effect, its
    CI (from the same test), the unit-level p and its Holm adjustment, the unit and n, and the placebo;
    a null with the smallest effect the design could detect; no unit-level test said so, effect shown
    as a description only. Units below the teacher (students, ICL draws) share one dataset per arm,
    and the sentence says that differences between datasets count as effects."""
    kind = verdict(cell)
    eff = effect_text(cell, unit, ratio=ratio)
    design = "" if cell.get("unit") == "teachers" else (
        f"; {units} of one dataset per arm: differences between datasets count as effects")
    if kind == DETECTED:
        text = (f"{subject[0].upper()}{subject[1:]} {more if cell['effect'] > 0 else less} than {obj}: {eff}, "
                f"{test_text(cell, units)}{design}; {placebos}.")
    elif kind == NULL:
        # The CI is that of the unadjusted test: it can exclude 0 where Holm's correction leaves no finding.
        holm = ("; the CI excludes 0 before Holm's correction over the family"
                if _finite_ci(cell) is not None and not _ci_has_zero(cell) else "")
        text = (f"No difference detected between {subject} and {obj}{on}: {eff}, {test_text(cell, units)}"
                f"{holm}{design}; {mde_text(cell, unit)}; {placebos}.")
    else:
        n = " vs ".join(map(str, cell["n_seeds"]))
        why = cell.get("note") or "too few units"
        text = (f"{subject[0].upper()}{subject[1:]} vs {obj}{on}: {eff} over {n} {units}, but no unit-level "
                f"test ({why}): a description of these models, not evidence about training.")
    return {"verdict": kind, "text": text}


def summary_view(summary: dict[str, Any]) -> dict[str, Any]:
    """`summarize`'s data for the `summary` macro: the claims grouped by verdict."""
    groups = [{"title": title, "claims": [c for c in summary["claims"] if c["verdict"] == kind]}
              for kind, title in GROUP_TITLES.items()]
    n = {kind: len(g["claims"]) for kind, g in zip(GROUP_TITLES, groups, strict=True)}
    supporting = "Supporting comparisons: " if summary.get("verdicts") else ""
    headline = (f"{supporting}{sum(n.values())} comparison{'s' * (sum(n.values()) != 1)}: {n[DETECTED]} detected a difference "
                f"(Holm-adjusted unit-level p < 0.05), {n[NULL]} no difference detected"
                + (f", {n[UNTESTABLE]} not testable at the unit level" if n[UNTESTABLE] else "") + ".")
    return {**summary, "groups": groups, "headline": headline if sum(n.values()) else None}


def source(name: str) -> str:
    return "the base model's" if name in ("control", "base") else f"the {name} teacher's"


# The start and end of every summary's "how to read this" text.
def how_unit(replicated: bool) -> str:
    """The unit of the run's claims, for the start of the "how to read this" text."""
    if replicated:
        return ("Unit: the teacher replicate, each the mean of its students (for the ICL control, the draw of "
                "examples): differences between teachers and their datasets are part of the noise. Effect: ")
    return ("Unit: the trained student (for the ICL control, the draw of examples), with one teacher and one "
            "dataset per arm: a difference between the two teachers' datasets counts as an effect. Effect: ")


def how_tail(replicated: bool) -> str:
    """The placebo and verdict rule, for the end of the "how to read this" text."""
    halves = "teachers" if replicated else "students"
    return (f" Placebo: two halves of one arm's {halves} through the same test (expect p > 0.05 about 19 times "
            "in 20); with `resample_placebo`, also the students of an arm's data vs those of a second sampling "
            "of the same teachers (a detected difference there is a dataset effect). MDE beside a placebo: the "
            "smallest effect it could have detected. Detected: Holm-adjusted p < 0.05.")


def replicated(data: dict[str, Any]) -> bool:
    """Whether a report's run had several teachers per arm (`teacher.replicates`)."""
    return int(data["config"].get("teacher", {}).get("replicates", 1)) > 1


def measured(cell: dict[str, Any] | None) -> bool:
    """Whether a comparison cell has a finite effect to state."""
    return cell is not None and cell.get("effect") is not None and math.isfinite(cell["effect"])


def arm_label(arm: str) -> str:
    """An arm's name beside a placebo p: 'owl', or 'owl ICL' for the ICL arm 'icl-owl'."""
    return arm.removeprefix("icl-") + (" ICL" if arm.startswith("icl-") else "")


def add_note(notes: list[str], cell: dict[str, Any]) -> None:
    """Collect a cell's design note once."""
    if cell.get("note") and cell["note"] not in notes:
        notes.append(cell["note"])


def caveats(notes: list[str]) -> list[str]:
    """The summary line listing the design's caveats, if any."""
    return ["Caveats of this design: " + "; ".join(notes) + "."] if notes else []


def _samples(out: Path, teachers: list[str]) -> list[dict[str, Any]]:
    """The first 5 kept rows of the first 2 teachers."""
    samples = []
    for name in teachers[:2]:
        path = out / "filter" / name / "kept.jsonl"
        kept = read_jsonl(path)[:5]
        samples.append({"teacher": name, "table": tab(["prompt", "completion"],
                                                       [[r["prompt"], r["completion"]] for r in kept])})
    return samples


def filter_table(filters: dict[str, Any], out: Path) -> dict[str, Any]:
    """The filter stage's counts per teacher and the first kept rows, for a report's filter section."""
    rows = [[t, f["total"], f["valid"], f["kept"], ", ".join(f"{k}: {v}" for k, v in f["rejected"].items()) or "none"]
            for t, f in filters.items()]
    return {"table": tab(["teacher", "total", "valid", "kept", "rejected by reason"], rows),
            "samples": _samples(out, list(filters))}


def training_table(training: dict[str, Any], speed: bool = True) -> dict[str, Any]:
    headers = ["model", "method", "steps", "examples", "loss (start)", "loss (end)", *(["tokens/s"] if speed else [])]
    return tab(headers, [[k, v.get("method", "teacher"), v["steps"], v["examples"], fmt(v["loss_first"]),
                           fmt(v["loss_last"]), *([fmt(v.get("tokens_per_second"))] if speed else [])]
                          for k, v in training.items()])


def timings_table(timings: dict[str, float]) -> dict[str, Any]:
    return tab(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in timings.items()])


def versions_table(versions_: dict[str, str]) -> dict[str, Any]:
    return tab(["package", "version"], [[k, v] for k, v in versions_.items()])


def classified(config: PipelineConfig, out: Path) -> list[dict[str, Any]]:
    """The `result.json` of every pair of this config that has been classified."""
    paths = [classify_dir(out, t, c) / "result.json" for t, c in classify_pairs(config)]
    return [read_json(p) for p in paths if p.is_file()]


def classify_section(results: Sequence[dict[str, Any]]) -> str:
    """The report's HTML section for `classified(...)` ('' when nothing was classified), rendered from
    templates/classify.html.j2."""
    rows = []
    for r in results:
        for name in ("statistical", "llm"):
            c = r.get(name)
            if not c:
                continue
            label = "logistic regression" if name == "statistical" else f"prompted LLM ({c.get('model', '?')})"
            placebo = c.get("placebo") or {}
            rows.append([f"{r['treatment']} vs {r['control']}", label, fmt(c["auroc"]),
                         f"[{fmt(c['ci'][0])}, {fmt(c['ci'][1])}]", fmt(c["p"]),
                         f"{c['n']['treatment']} / {c['n']['control']}", fmt(placebo.get("auroc")),
                         fmt(placebo.get("p"))])
    if not rows:
        return ""
    return render_template("classify.html.j2", classify=tab(
        ["pair", "classifier", "AUROC", "95% CI", "p", "n (treatment / control)", "placebo AUROC", "placebo p"],
        rows))
