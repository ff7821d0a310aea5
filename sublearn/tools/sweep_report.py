"""The sweep's report: each grid point's main comparisons, the runs that differ only in seed pooled into
one seed-level report (Holm over the grid, placebo), a dose curve per numeric grid axis, and the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sublearn.rundir import read_json, write_json
from sublearn.tools.sweep_grid import SEED_AXIS, Point, SweepConfig, point_id


def _main_cells(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A report's main comparisons (treatment vs control on its own animal) as flat rows."""
    rows = []
    for c in [*data.get("comparisons", []), *data.get("specificity_vs_students", []), *data.get("cross_model", [])]:
        cell = c.get("teacher_forced", {}).get("plain", {})
        sampled = c.get("sampled", {}).get("plain", {})
        rows.append({"treatment": c["treatment"], "control": c["control"], "animal": c["animal"],
                     "label": f"{c['treatment']} vs {c['control']}", "teacher_forced": cell,
                     "sampled_effect": sampled.get("effect"), "sampled_p": sampled.get("p")})
    return rows


def _pool(out: Path, group: str, members: list[Point]) -> dict[str, Any] | None:
    """The seed-level analysis of runs that differ only in seed: their students' evaluations in one
    directory (out/pooled/<group>), analysed by the pipeline's own report with every seed."""
    from sublearn.rundir import MANIFEST
    from sublearn.stages import report

    pdir = out / "pooled" / group
    specs: dict[str, dict[str, Any]] = {}
    seeds: list[int] = []
    for p in members:
        rdir = out / "runs" / p.id
        seeds += [s for s in p.config.train.seeds if s not in seeds]
        for path in sorted((rdir / "evaluate").glob("*/results.json")):
            if not (path.parent / MANIFEST).is_file():
                continue
            spec = read_json(path).get("spec")
            # Shared models (base, teachers) are the same in every run: the first one's is kept.
            if spec is None or spec["name"] in specs:
                continue
            specs[spec["name"]] = spec
            dst = pdir / "evaluate" / spec["name"] / "results.json"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            dst.write_bytes(path.read_bytes())
    if not specs:
        return None
    first = members[0].config
    config = first.model_copy(update={"train": first.train.model_copy(update={"seeds": sorted(seeds)})})
    report.run(config, pdir, list(specs.values()))
    data: dict[str, Any] = read_json(pdir / "report" / "results.json")
    return data


def aggregate(sweep: SweepConfig, out: Path, points: list[Point], runs: dict[str, dict[str, Any]]) -> Path:
    """Write `out/results.json` and `out/report.html` from the finished runs; returns the HTML path."""
    from sublearn.analysis.stats import adjust

    rows = []
    for p in points:
        row: dict[str, Any] = {**runs[p.id], "comparisons": [], "dose": []}
        path = out / "runs" / p.id / "report" / "results.json"
        if runs[p.id]["status"] == "done" and path.is_file():
            data = read_json(path)
            row["comparisons"] = _main_cells(data)
            for d in data.get("dose", []):
                for kind in ("vs_neutral", "vs_students"):
                    if kind in d:
                        row["dose"].append({"updates": d["updates"], "target": d["target"], "kind": kind,
                                            "teacher_forced": d[kind].get("teacher_forced", {}).get("plain", {})})
        rows.append(row)
    groups: dict[str, list[Point]] = {}
    for p in points:
        if runs[p.id]["status"] == "done":
            groups.setdefault(p.group, []).append(p)
    pooled = []
    for group, members in groups.items():
        pooled_data = _pool(out, group, members)
        if pooled_data is None:
            continue
        values = {k: v for k, v in members[0].values.items() if k != SEED_AXIS}
        pooled.append({"group": group, "values": values, "runs": [m.id for m in members],
                       "seeds": [s for m in members for s in m.config.train.seeds],
                       "comparisons": _main_cells(pooled_data), "placebo": pooled_data.get("placebo", []),
                       "report": f"pooled/{group}/report/report.html"})
    # Holm over the whole grid: every pooled main comparison is one test of the family.
    cells = [c["teacher_forced"] for g in pooled for c in g["comparisons"] if c["teacher_forced"]]
    for cell, p_adj in zip(cells, adjust([c.get("p") for c in cells], "holm"), strict=True):
        cell["p_holm_grid"] = p_adj
    dose = _grid_dose(sweep, pooled)
    result = {"name": sweep.name, "sweep": sweep.model_dump(mode="json"),
              "axes": [*sweep.grid, *([SEED_AXIS] if sweep.seeds else [])], "runs": rows, "pooled": pooled,
              "dose": dose}
    write_json(out / "results.json", result)
    from sublearn.stages.report.tidy import COMPARISON_COLUMNS, sweep_comparison_rows, write_csv

    write_csv(out / "comparisons.csv", sweep_comparison_rows(result), COMPARISON_COLUMNS)
    page = _render(result)
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def _numeric(values: list[Any]) -> bool:
    return len(values) >= 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _grid_dose(sweep: SweepConfig, pooled: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """For each numeric grid axis: the pooled effect (and CI) of each main comparison against the
    axis value, one curve per comparison and per combination of the other axes' values."""
    out: dict[str, list[dict[str, Any]]] = {}
    for axis, values in sweep.grid.items():
        if not _numeric(values):
            continue
        curves: dict[str, dict[str, Any]] = {}
        for g in pooled:
            others = {k: v for k, v in g["values"].items() if k != axis}
            for c in g["comparisons"]:
                cell = c["teacher_forced"]
                if not cell or cell.get("effect") is None:
                    continue
                label = f"{c['label']} ({c['animal']})" + (f" | {point_id(others)}" if others else "")
                curve = curves.setdefault(label, {"label": label, "comparison": c["label"], "animal": c["animal"],
                                                  "others": others, "points": []})
                curve["points"].append({"value": g["values"][axis], "effect": cell["effect"],
                                        "ci": cell.get("ci"), "p": cell.get("p"),
                                        "p_holm_grid": cell.get("p_holm_grid"), "n_seeds": cell.get("n_seeds"),
                                        "group": g["group"]})
        for curve in curves.values():
            curve["points"].sort(key=lambda q: q["value"])
        out[axis] = list(curves.values())
    return out


def _dose_png(axis: str, curves: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sublearn.analysis.render import png

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for curve in curves:
        pts = curve["points"]
        x = np.array([q["value"] for q in pts], dtype=float)
        y = np.array([q["effect"] for q in pts], dtype=float)
        lo = np.array([(q["ci"] or [None, None])[0] if (q["ci"] or [None])[0] is not None else q["effect"]
                       for q in pts], dtype=float)
        hi = np.array([(q["ci"] or [None, None])[1] if (q["ci"] or [None, None])[1] is not None else q["effect"]
                       for q in pts], dtype=float)
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=curve["label"])
    ax.axhline(0, color="#999", lw=0.8)
    values = [q["value"] for c in curves for q in c["points"]]
    if values and min(values) > 0 and max(values) / min(values) >= 8:
        ax.set_xscale("log", base=2 if all(isinstance(v, int) for v in values) else 10)
    ax.set_xlabel(axis)
    ax.set_ylabel("effect, log2 ratio (95% CI)")
    ax.set_title(f"pooled seed-level effect vs {axis}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def _render(result: dict[str, Any]) -> str:
    """The sweep's self-contained HTML page (templates/sweep.html.j2) from its `results.json`."""
    from sublearn.analysis.render import fmt, render_template, tab
    from sublearn.stages.report.common import CELL_HEADERS, cell_columns

    runs = result["runs"]
    counts = {s: sum(r["status"] == s for r in runs) for s in ("done", "failed", "pending")}
    dose = None
    if result["dose"]:
        dose = [{"axis": axis, "png": _dose_png(axis, curves), "table": tab(
            [axis, "comparison", "effect (log2)", "95% CI", "p (seed-level)", "p (Holm, grid)"],
            [[str(q["value"]), c["label"], fmt(q["effect"]),
              f"[{fmt((q['ci'] or [None, None])[0])}, {fmt((q['ci'] or [None, None])[1])}]",
              fmt(q["p"]), fmt(q["p_holm_grid"])] for c in curves for q in c["points"]])}
                for axis, curves in result["dose"].items() if curves]
    pooled = None
    if result["pooled"]:
        pooled = {
            "table": tab(["group", "treatment", "control", "animal", *CELL_HEADERS, "p (Holm, grid)"],
                         [[g["group"], c["treatment"], c["control"], c["animal"],
                           *cell_columns(c["teacher_forced"]), fmt(c["teacher_forced"].get("p_holm_grid"))]
                          for g in result["pooled"] for c in g["comparisons"]]),
            "placebo": tab(["group", "arm", "animal", *CELL_HEADERS],
                           [[g["group"], r["arm"], r["animal"], *cell_columns(r.get("teacher_forced", {}))]
                            for g in result["pooled"] for r in g["placebo"]]),
            "links": [{"href": g["report"], "group": g["group"], "n_runs": len(g["runs"])} for g in result["pooled"]]}
    rows = []
    for r in runs:
        cells = r["comparisons"] or [{}]
        for c in cells:
            tf = c.get("teacher_forced", {}) if c else {}
            ci = tf.get("ci") or [None, None]
            rows.append([r["id"], r["status"], fmt(r["seconds"], 3) if r["seconds"] is not None else "-",
                         c.get("label", "-"), c.get("animal", "-"),
                         " vs ".join(str(n) for n in tf.get("n_seeds", [])) or "-", fmt(tf.get("effect")),
                         f"[{fmt(ci[0])}, {fmt(ci[1])}]", fmt(tf.get("p")), fmt(c.get("sampled_effect"))])
    failed = [[r["id"], r["error"]] for r in runs if r["status"] == "failed"]
    return render_template(
        "sweep.html.j2", title=f"sublearn sweep: {result['name']}", name=result["name"], n_runs=len(runs),
        axes=", ".join(result["axes"]) or "(none)", counts=", ".join(f"{n} {s}" for s, n in counts.items() if n),
        dose=dose, pooled=pooled,
        runs=tab(["run", "status", "seconds", "comparison", "animal", "students", "effect (log2)", "95% CI",
                  "p (seed-level)", "sampled effect"], rows),
        run_links=[{"href": f"{r['run_dir']}/report/report.html", "id": r["id"]} for r in runs if r["status"] == "done"],
        failed=tab(["run", "error"], failed) if failed else None)
