"""The MNIST figure, `plot(results, path)`: accuracy per condition (ours with 95% CI, beside the paper's
approximate values), and a second panel with the theorem cosines when they were measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

THEOREM_LABELS = {"cos_first_gradient": "−∇L at init", "cos_after_k_steps": "after {k} Adam steps",
                  "cos_final": "whole run"}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sublearn.mnist.experiment import CONDITIONS, DEFENDED, STUDENTS, THEOREM_KEYS, label

    summary = results["summary"]
    # The defended students of a run with the gradient-projection defense follow the six conditions.
    conds = CONDITIONS + [c for c in summary if c.startswith(DEFENDED)]
    has_theorem = bool(results.get("theorem"))
    fig, axes = plt.subplots(1, 2 if has_theorem else 1, figsize=(14 if has_theorem else 8, 5), squeeze=False,
                             gridspec_kw={"width_ratios": [1.3, 1]} if has_theorem else None)
    ax = axes[0][0]
    xs = list(range(len(conds)))
    ours = [summary[c]["mean"] for c in conds]
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, yerr=[summary[c]["ci95"] for c in conds], capsize=4,
           color="#3b75af", label="sublearn (mean, 95% CI)")
    with_paper = [(x, summary[c]["paper"]) for x, c in zip(xs, conds, strict=True) if summary[c]["paper"] is not None]
    ax.bar([x + 0.2 for x, _ in with_paper], [v for _, v in with_paper], width=0.4, color="#c0c0c0",
           label="paper (approx.)")
    for x, c in zip(xs, conds, strict=True):
        top = summary[c]["mean"] + summary[c]["ci95"]  # above the error bar
        ax.text(x - 0.2, top + 0.015, f"{summary[c]['mean']:.2f}", ha="center", fontsize=8)
    for x, v in with_paper:
        ax.text(x + 0.2, v + 0.015, f"{v:.2f}", ha="center", fontsize=8, color="#555555")
    ax.axhline(0.1, color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(xs, [label(c) for c in conds], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("MNIST test accuracy (10 digit logits)")
    ax.set_ylim(0, 1.08)
    ax.set_title(f"Students trained only on noise, imitating the teacher's logits "
                 f"({summary['teacher']['n']} seeds)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    if has_theorem:
        ax2 = axes[0][1]
        k = results.get("config", {}).get("theorem_steps", "k")
        width = 0.8 / len(THEOREM_KEYS)
        for i, key in enumerate(THEOREM_KEYS):
            cells = [results["theorem"][c][key] for c in STUDENTS]
            ax2.bar([j + (i - (len(THEOREM_KEYS) - 1) / 2) * width for j in range(len(STUDENTS))],
                    [c["mean"] for c in cells], width=width, yerr=[c["ci95"] for c in cells], capsize=3,
                    label=THEOREM_LABELS[key].format(k=k))
        ax2.axhline(0, color="k", lw=0.8)
        ax2.set_xticks(range(len(STUDENTS)), [label(c) for c in STUDENTS], rotation=25, ha="right", fontsize=8)
        ax2.set_ylabel("cos(student update, θT − θ0)")
        ax2.set_title("Theorem check: student's update vs the teacher's displacement", fontsize=9)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
