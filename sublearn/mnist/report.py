"""The MNIST experiment's summaries, tables and figure, computed from the per-seed records alone.

    results = {**summarize(records), "config": config.model_dump(mode="json")}   # as in results.json
    results["defense"] = defense_comparison(records, config)   # only with a defense
    print(summary_table(results))           # accuracies, theorem cosines, and the defense block
    plot(results, out / "mnist.png")        # accuracy per condition (+ the theorem cosines)

`summarize` gives each condition's mean and 95% CI half-widths over seeds (accuracies and theorem
cosines); `defense_comparison` compares each gradient-projection-defended student with its undefended
twin seed by seed, and `defense_table` prints that comparison. Nothing here trains or reads a run
directory: sublearn.mnist.experiment runs the seeds and calls these on their records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sublearn.analysis.stats import mean_ci95, t_interval
from sublearn.mnist.config import CONDITIONS, DEFENDED, PAPER, STUDENTS, THEOREM_KEYS, MnistConfig, label

# The legend of the figure's theorem panel.
THEOREM_LABELS = {"cos_first_gradient": "−∇L at init", "cos_after_k_steps": "after {k} Adam steps",
                  "cos_final": "whole run"}


def _t95(values: list[float]) -> float | None:
    """Half-width t_{n-1, 0.975}·sd/√n; None (not NaN, which is invalid JSON) for fewer than 2 values."""
    half = t_interval(values)[1]
    return half if np.isfinite(half) else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-condition mean and 95% CI half-widths of accuracies and theorem cosines: `ci95` is the
    paper's 1.96·sd/√n (kept for comparison with the paper), `t95` the t_{n-1} half-width (honest
    with few seeds; None for fewer than 2). The seed is the unit: one value per seed."""
    summary: dict[str, Any] = {}
    extra = [c for c in records[0]["accuracy"] if c.startswith(DEFENDED)] if records else []
    for cond in CONDITIONS + extra:
        vals = [r["accuracy"][cond] for r in records]
        mean, half = mean_ci95(vals)
        summary[cond] = {"label": label(cond), "mean": mean, "ci95": half, "t95": _t95(vals), "n": len(records),
                         "paper": PAPER.get(cond)}
    theorem: dict[str, Any] = {}
    if records and "theorem" in records[0]:
        for cond in STUDENTS + extra:
            theorem[cond] = {}
            for key in THEOREM_KEYS:
                vals = [r["theorem"][cond][key] for r in records if r["theorem"][cond][key] is not None]
                mean, half = mean_ci95(vals)
                theorem[cond][key] = {"mean": mean, "ci95": half, "t95": _t95(vals), "n": len(vals),
                                      "positive": sum(v > 0 for v in vals)}
    return {"summary": summary, "theorem": theorem}


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table of accuracies (mean ± the paper's 1.96·sd/√n, and the t_{n-1} 95% half-width)
    beside the paper's values, and the theorem cosines (mean ± 1.96·sd/√n, and how many seeds were
    positive)."""
    n = results["summary"]["teacher"]["n"]
    extra = [c for c in results["summary"] if c.startswith(DEFENDED)]
    w = 40 if extra else 30  # room for the defended students' labels
    lines = [f"MNIST auxiliary-logit experiment: {n} seeds, mean ± 1.96·sd/√n (paper's CI); "
             "t95 = t_{n-1}·sd/√n, the 95% CI half-width with n seeds",
             f"{'condition':<{w}}{'test accuracy':>20}{'t95':>9}{'paper':>8}"]
    for cond in CONDITIONS + extra:
        s = results["summary"][cond]
        paper = f"{s['paper']:.2f}" if s["paper"] is not None else "-"
        t95 = s.get("t95")  # absent from results.json written before it existed
        t95_cell = f"± {t95:.3f}" if t95 is not None else "-"
        lines.append(f"{label(cond):<{w}}{s['mean']:>11.3f} ± {s['ci95']:.3f}{t95_cell:>9}{paper:>8}")
    if results.get("theorem"):
        k = results["config"]["theorem_steps"]
        lines += ["", "theorem check: cosine with the teacher's displacement θT − θ0 (positive seeds / n)",
                  f"{'student':<{w}}{'−∇L at init':>24}{f'after {k} Adam steps':>26}{'whole run':>26}"]
        for cond in STUDENTS + [c for c in results["theorem"] if c.startswith(DEFENDED)]:
            cells = []
            for key in THEOREM_KEYS:
                c = results["theorem"][cond][key]
                cells.append(f"{c['mean']:+.4f} ± {c['ci95']:.4f} ({c['positive']}/{c['n']})")
            lines.append(f"{label(cond):<{w}}{cells[0]:>24}{cells[1]:>26}{cells[2]:>26}")
    if results.get("defense"):
        lines += ["", defense_table(results["defense"])]
    return "\n".join(lines)


def _defense_stats(undefended: list[float], defended: list[float], reference: list[float]) -> dict[str, Any]:
    """Seed-level comparison of two paired arms of student accuracies (same seeds, same order)."""
    from scipy.stats import ttest_ind, ttest_rel

    a, b, ref = (np.asarray(v, dtype=np.float64) for v in (undefended, defended, reference))
    diff = b - a
    effect, half = t_interval(diff)
    gain_a, gain_b = float((a - ref).mean()), float((b - ref).mean())
    enough = len(a) >= 2
    return {
        "undefended": {"mean": float(a.mean()), "t95": _t95(list(a))},
        "defended": {"mean": float(b.mean()), "t95": _t95(list(b))},
        # defended − undefended, paired by seed (same init, teacher, noise and batch order).
        "effect": effect, "effect_t95": half if np.isfinite(half) else None,
        "p_welch": float(ttest_ind(b, a, equal_var=False).pvalue) if enough else None,
        "p_paired": float(ttest_rel(b, a).pvalue) if enough else None,
        # Transfer = accuracy gained over the untrained reference init θ0 (≈ chance).
        "gain_undefended": gain_a, "gain_defended": gain_b,
        "gain_removed": 1 - gain_b / gain_a if gain_a > 0 else None,
        "n": len(a)}


def defense_comparison(records: list[dict[str, Any]], config: MnistConfig) -> dict[str, Any]:
    """For every defended student: undefended vs defended accuracy over the seeds (`_defense_stats`:
    effect = defended − undefended with its paired t_{n-1} 95% CI, Welch and paired t-test p), and the
    cost: trait gradients computed per student (one extra forward+backward on `defense_batch_size`
    labelled digits per step), labelled digits held, and the measured wall time of the defended vs the
    undefended student (same run, same worker threads)."""
    out: dict[str, Any] = {"mode": config.defense, "batch_size": config.defense_batch_size, "conditions": {}}
    ref = [r["accuracy"]["reference"] for r in records]
    for cond in config.defended():
        d = DEFENDED + cond
        stats = _defense_stats([r["accuracy"][cond] for r in records], [r["accuracy"][d] for r in records], ref)
        per_seed = [r["defense"][d] for r in records]
        secs_a = [r["seconds"][cond] for r in records]
        secs_b = [r["seconds"][d] for r in records]
        cos = [s["mean_cos_with_trait_gradient"] for s in per_seed if s["mean_cos_with_trait_gradient"] is not None]
        stats["cost"] = {
            "trait_gradients_per_student": per_seed[0]["trait_gradients"],
            "skipped_steps": sum(s["skipped"] for s in per_seed),
            "labelled_images": per_seed[0]["labelled_images"],
            "seconds_undefended": float(np.mean(secs_a)), "seconds_defended": float(np.mean(secs_b)),
            "time_ratio": float(np.sum(secs_b) / np.sum(secs_a))}
        stats["mean_cos_step_vs_trait_gradient"] = float(np.mean(cos)) if cos else None
        head = [s["accuracy_init_digit_head"] for s in per_seed if "accuracy_init_digit_head" in s]
        if head:
            # For an aux-only student (whose undefended twin never moves its digit head) this separates
            # "the body learned no digits" from "the projection only scrambled the digit read-out".
            stats["defended_with_init_digit_head"] = {"mean": float(np.mean(head)), "t95": _t95(head)}
        out["conditions"][d] = stats
    return out


def defense_table(defense: dict[str, Any]) -> str:
    """The defense block of `summary_table`: accuracy without and with the projection, the paired effect
    with its t_{n-1} 95% CI, Welch and paired p, the share of the transfer removed, and the cost."""
    lines = [f"gradient-projection defense ({defense['mode']}, {defense['batch_size']} labelled digits per "
             "trait gradient): accuracy, mean ± t95 over seeds",
             f"{'student':<30}{'undefended':>16}{'defended':>16}{'effect (95% CI)':>26}{'p Welch':>10}"
             f"{'p paired':>10}{'transfer removed':>18}{'time ×':>8}"]
    for cond, s in defense["conditions"].items():
        def cell(arm: dict[str, Any]) -> str:
            return f"{arm['mean']:.3f} ± {arm['t95']:.3f}" if arm["t95"] is not None else f"{arm['mean']:.3f}"

        half = s["effect_t95"]
        effect = f"{s['effect']:+.3f} [{s['effect'] - half:+.3f}, {s['effect'] + half:+.3f}]" if half is not None \
            else f"{s['effect']:+.3f}"
        p_w = f"{s['p_welch']:.2g}" if s["p_welch"] is not None else "-"
        p_p = f"{s['p_paired']:.2g}" if s["p_paired"] is not None else "-"
        removed = f"{100 * s['gain_removed']:.0f}%" if s["gain_removed"] is not None else "-"
        lines.append(f"{label(cond.removeprefix(DEFENDED)):<30}{cell(s['undefended']):>16}{cell(s['defended']):>16}"
                     f"{effect:>26}{p_w:>10}{p_p:>10}{removed:>18}{s['cost']['time_ratio']:>8.2f}")
    for cond, s in defense["conditions"].items():
        if "defended_with_init_digit_head" in s:
            h = s["defended_with_init_digit_head"]
            t95 = f" ± {h['t95']:.3f}" if h["t95"] is not None else ""
            lines.append(f"  {label(cond)} with θ0's digit head put back: {h['mean']:.3f}{t95}")
    first = next(iter(defense["conditions"].values()), None)
    if first is not None:
        c = first["cost"]
        lines.append(f"cost per defended student: {c['trait_gradients_per_student']} extra trait gradients "
                     f"(forward+backward on {defense['batch_size']} labelled digits each), "
                     f"{c['labelled_images']} labelled digits held by the defender")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """The MNIST figure: accuracy per condition (ours with 95% CI, beside the paper's approximate values),
    and a second panel with the theorem cosines when they were measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
