"""The MNIST figure: accuracy per condition (ours with 95% CI beside the paper's), and the theorem panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sublearn.mnist.experiment import CONDITIONS, LABELS, STUDENTS

    summary = results["summary"]
    has_theorem = bool(results.get("theorem"))
    fig, axes = plt.subplots(1, 2 if has_theorem else 1, figsize=(13 if has_theorem else 8, 4.5), squeeze=False)
    ax = axes[0][0]
    xs = range(len(CONDITIONS))
    ours = [summary[c]["mean"] for c in CONDITIONS]
    errs = [summary[c]["ci95"] for c in CONDITIONS]
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, yerr=errs, capsize=4, color="#3b75af", label="sublearn (95% CI)")
    paper = [summary[c]["paper"] if summary[c]["paper"] is not None else 0 for c in CONDITIONS]
    ax.bar([x + 0.2 for x in xs], paper, width=0.4, color="#bbbbbb", label="paper (approx.)")
    for x, v in zip(xs, ours, strict=True):
        ax.text(x - 0.2, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    ax.axhline(0.1, color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(list(xs), [LABELS[c] for c in CONDITIONS], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("MNIST test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Students trained only on noise, imitating the teacher's logits (n={summary['teacher']['n']} seeds)",
                 fontsize=9)
    ax.legend(fontsize=8)
    if has_theorem:
        ax2 = axes[0][1]
        keys = list(results["theorem"][STUDENTS[0]])
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            vals = [results["theorem"][c][key]["mean"] for c in STUDENTS]
            err = [results["theorem"][c][key]["ci95"] for c in STUDENTS]
            ax2.bar([j + (i - (len(keys) - 1) / 2) * width for j in range(len(STUDENTS))], vals, width=width,
                    yerr=err, capsize=3, label=key.replace("_", " "))
        ax2.axhline(0, color="k", lw=0.8)
        ax2.set_xticks(range(len(STUDENTS)), [LABELS[c] for c in STUDENTS], rotation=25, ha="right", fontsize=8)
        ax2.set_ylabel("cosine with teacher displacement θT − θ0")
        ax2.set_title("Theorem check: student update vs teacher displacement", fontsize=9)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
