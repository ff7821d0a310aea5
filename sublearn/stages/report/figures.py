"""The pipeline report's figures (preference trait), each a base64 PNG for an inline <img>: trait rates
per model, the specificity matrix, the filter's reject reasons, the dose curve."""

from __future__ import annotations

from typing import Any

import numpy as np

from sublearn.analysis.render import png
from sublearn.stages.report.common import ALPHA

ORDER = {"base": 0, "teacher": 1, "neutral-teacher": 1, "control": 2, "neutral-control": 2, "student": 3,
         "icl-control": 7, "icl": 8,
         "cross-base": 4, "cross-control": 5, "cross": 6}


def trait_plot(data: dict[str, Any], targets: list[str]) -> str:
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
    return png(fig)


def specificity_plot(data: dict[str, Any], key: str = "specificity", control: str = "control") -> str | None:
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
                star = "*" if c.get("p_holm") is not None and c["p_holm"] < ALPHA else ""
                ax.text(j, i, f"{mat[i, j]:+.2f}{star}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(animals)), animals, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"{r['teacher']} students" for r in rows])
    unit = "teacher" if any(c.get("unit") == "teachers" for row in cells for c in row) else "student"
    ax.set_title(f"log2(students / {control} students), teacher-forced\n* {unit}-level p < 0.05 after Holm "
                 "over the matrix", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return png(fig)


def filter_plot(data: dict[str, Any]) -> str | None:
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
    return png(fig)


def dose_plot(data: dict[str, Any]) -> str:
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
    axes[0][0].set_ylabel("log2 ratio (95% CI of the seed-level test)")
    fig.tight_layout()
    return png(fig)
