"""`sublearn audit`'s output for people: the summary lines the CLI prints and the self-contained HTML page
(highlighted tokens, the divergence histogram, the probe and weight tables).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.tools.audit_data import Row


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A few plain lines for the terminal (the CLI prints them after the report path)."""
    from sublearn.analysis.render import fmt

    d = results["divergence"]
    lines = [f"divergence: {fmt(d['mean_per_token'])} nats/token over {d['n_tokens']} tokens of {d['n_examples']} "
             f"examples (per example {fmt(d['mean_per_example'])} nats; top 1% of tokens carry "
             f"{fmt(100 * (d['top1pct_share_of_abs'] or 0), 3)}% of |log-ratio|)"]
    prov = results.get("provenance")
    if prov:
        lines.append(f"first items: {prov['distinct_first_items']} distinct, entropy "
                     f"{fmt(prov['first_item_entropy_bits'])} bits, most common {prov['top_first_item']!r} "
                     f"({fmt(100 * prov['top_first_item_share'], 3)}%), exact duplicates "
                     f"{fmt(100 * prov['duplicate_share'], 3)}%" + (f"; WARNING: {prov['warning']}" if prov["warning"] else ""))
    lr = results.get("likelihood_ratio")
    if lr:
        sc, cf = lr["score"], lr["confounds"]
        lines.append(f"likelihood ratio vs {Path(lr['control']).name}: AUROC {fmt(sc['auroc'])} [{fmt(sc['ci'][0])}, "
                     f"{fmt(sc['ci'][1])}], p = {fmt(sc['p'])}, smallest detectable {fmt(sc.get('min_detectable_auroc'))} "
                     f"({sc['n']['data']} vs {sc['n']['control']} rows; "
                     f"{lr['paired_rows']} data rows share a prompt with a control row); baselines: length "
                     f"{fmt(cf['length']['auroc'])}, base loss {fmt(cf['base_loss']['auroc'])}, teacher loss "
                     f"{fmt(cf['teacher_loss']['auroc'])}")
    probe = results.get("probe")
    if probe:
        for name, m in probe["metrics"].items():
            c = m["comparison"]
            what = f"log2 P({results['trait']})" if name == "trait_log2" else "held-out log-prob gain (nats/token)"
            lines.append(f"probe {what}: data students - control students = {fmt(c['effect'])} "
                         f"[{fmt(c['ci'][0])}, {fmt(c['ci'][1])}], p = {fmt(c['p'])}, MDE {fmt(m['mde'])} "
                         f"({c['n_seeds'][0]} vs {c['n_seeds'][1]} students)")
    else:
        lines.append("probe: skipped")
    w = results["weights"]
    if w["available"]:
        lines.append(f"weights: cosine with the teacher's LoRA update: data students {fmt(w['data_mean'])}, "
                     f"control students {fmt(w['control_mean'])}")
    else:
        lines.append(f"weights: {w['reason']}")
    return lines


def _cmp_row(label: str, cmp: dict[str, Any] | None, mde: float | None = None) -> list[Any]:
    from sublearn.analysis.render import fmt

    if cmp is None:
        return [label, "-", "-", "-", "-", "-", "two halves need >= 2 students"]
    return [label, fmt(cmp["effect"]), f"[{fmt(cmp['ci'][0])}, {fmt(cmp['ci'][1])}]", fmt(cmp["p"]),
            f"{cmp['n_seeds'][0]} vs {cmp['n_seeds'][1]}", fmt(mde), cmp["note"] or ""]


def _tokens(pieces: Sequence[str], values: np.ndarray, scale: float) -> list[dict[str, Any]]:
    """The tokens of one example for the page: text lines (a newline shows as ↵ and a line break, an
    empty piece as ∅), the colour (red: the teacher prefers it, blue: the base does), its intensity and
    the value the token shows on hover."""
    tokens = []
    for piece, v in zip(pieces, values, strict=True):
        alpha = min(1.0, abs(float(v)) / scale) if scale > 0 else 0.0
        tokens.append({"lines": piece.split("\n") if piece else ["∅"], "rgb": "220,40,40" if v > 0 else "40,90,220",
                       "alpha": f"{alpha:.2f}", "value": f"{float(v):+.4f}"})
    return tokens


def histogram_png(ratios: Sequence[np.ndarray]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sublearn.analysis.render import png

    flat = np.concatenate([r for r in ratios if len(r)]) if any(len(r) for r in ratios) else np.zeros(1)
    sums = np.array([float(r.sum()) for r in ratios])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].hist(flat, bins=80, color="#c44")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("per-token log P_teacher − log P_base (nats)")
    axes[0].set_ylabel("tokens")
    axes[1].hist(sums, bins=40, color="#46a")
    axes[1].set_xlabel("per-example sum (nats)")
    axes[1].set_ylabel("examples")
    fig.tight_layout()
    return png(fig)


def render_page(results: dict[str, Any], histogram: str, shown: Sequence[tuple[int, Row, list[str], np.ndarray]],
            scale: float) -> str:
    """The audit's self-contained HTML page (templates/audit.html.j2) from its results, the histogram
    (base64 PNG) and the examples shown token by token."""
    from sublearn.analysis.render import fmt, render_template, tab

    d = results["divergence"]
    probe = results.get("probe")
    page_probe = None
    if probe:
        st = probe["settings"]
        rows = []
        for name, m in probe["metrics"].items():
            label = (f"log2 P(reply starts with '{results['trait']}'), 50 questions" if name == "trait_log2"
                     else f"held-out log-prob gain over the base (nats/token), {probe['n_heldout_rows']} rows")
            rows.append(_cmp_row(f"{label}: data vs control", m["comparison"], m["mde"]))
            rows.append(_cmp_row(f"{label}: placebo (halves of data students)", m["placebo"]))
        ref = probe["reference"]
        srows = []
        for arm in ("data", "control"):
            for s in probe["seeds"]:
                r = probe["students"][arm][str(s)]
                srows.append([arm, str(s), fmt(r["loss_first"]), fmt(r["loss_last"]),
                              fmt(float(np.mean(r["heldout_gain"]))),
                              fmt(float(np.mean(r["trait_log2"]))) if "trait_log2" in r else "-",
                              fmt(r.get("cosine_with_teacher"))])
        page_probe = {
            "lora_r": st["lora_r"], "steps": st["steps"], "batch_size": st["batch_size"], "lr": str(st["lr"]),
            "seeds": str(probe["seeds"]), "n_train_rows": probe["n_train_rows"],
            "control_decoding": json.dumps(probe["control_decoding"]),
            "comparisons": tab(["comparison", "effect", "95% CI", "p (seed-level)", "students", "MDE", "note"], rows),
            "reference": tab(["model", f"mean log2 P({results['trait']})", f"mean P({results['trait']})"],
                             [[k, fmt(float(np.mean(v))), fmt(float(np.mean(np.exp2(v))))] for k, v in ref.items()])
            if ref else None,
            "students": tab(["arm", "seed", "loss first", "loss last", "held-out gain", "mean log2 P(trait)",
                             "cos(ΔW, ΔW_teacher)"], srows),
            "control_examples": [t[:80] for t in probe["control_examples"]]}
    w = results["weights"]
    weights = {"reason": w.get("reason") or "", "note": w.get("note") or "", "table": tab(
        ["arm", "cosines per seed", "mean"],
        [["data", ", ".join(fmt(c) for c in w["data"]), fmt(w["data_mean"])],
         ["control", ", ".join(fmt(c) for c in w["control"]), fmt(w["control_mean"])]]) if w["available"] else None}
    examples = [{"line": row.line, "sum": fmt(float(values.sum())),
                 "mean": fmt(float(values.mean()) if len(values) else 0.0),
                 "prompt": " / ".join(m["content"] for m in row.chat)[:300],
                 "tokens": _tokens(pieces, values, scale)} for _, row, pieces, values in shown]
    name = Path(results["data"]).name
    lr = results.get("likelihood_ratio")
    page_lr = None
    if lr:
        names = {"score": "log-ratio, summed over the row", "score_mean": "log-ratio, mean per token",
                 "length": "baseline: row length (tokens)", "base_loss": "baseline: base model's loss",
                 "teacher_loss": "baseline: teacher's loss"}
        cells = {"score": lr["score"], "score_mean": lr["score_mean"], **lr["confounds"]}
        column = {"score": "log_ratio_sum", "score_mean": "log_ratio_mean"}  # the others: their own name
        rows_lr = []
        for k, c in cells.items():
            means = lr["means"][column.get(k, k)]
            rows_lr.append([names[k], fmt(c["auroc"]), f"[{fmt(c['ci'][0])}, {fmt(c['ci'][1])}]", fmt(c["p"]),
                            fmt(c.get("min_detectable_auroc")), c["test"], f"{c['n']['data']} / {c['n']['control']}",
                            fmt(means["data"]), fmt(means["control"])])
        page_lr = {"control": lr["control"], "paired": lr["paired_rows"], "table": tab(
            ["score", "AUROC", "95% CI", "p", "smallest detectable AUROC", "test", "rows (data / control)",
             "mean data", "mean control"], rows_lr),
            "profile": tab(["position", "mean log-ratio, data", "mean log-ratio, control", "AUROC", "rows"],
                           [[str(r["position"]), fmt(r["data_mean"]), fmt(r["control_mean"]), fmt(r["auroc"]),
                             f"{r['n']['data']} / {r['n']['control']}"] for r in lr["profile"]])}
    return render_template(
        "audit.html.j2", title=f"sublearn audit: {name}", name=name, data=results["data"], rows=results["rows"],
        formats=json.dumps(results["formats"]), teacher=results["teacher"], base=results["base"],
        trait=results["trait"] or "",
        warning="; ".join(w for w in (results.get("warning"), (results.get("provenance") or {}).get("warning")) if w),
        divergence=tab(["mean / token (nats)", "sd / token", "mean |·| / token", "mean / example (sum)", "tokens",
                        "top 1% tokens' share of Σ|·|", "top 10% share", "min", "max"],
                       [[fmt(d["mean_per_token"]), fmt(d["sd_per_token"]), fmt(d["mean_abs_per_token"]),
                         fmt(d["mean_per_example"]), str(d["n_tokens"]), fmt(d["top1pct_share_of_abs"]),
                         fmt(d["top10pct_share_of_abs"]), fmt(d["min"]), fmt(d["max"])]]),
        histogram=histogram, probe=page_probe, lr=page_lr, weights=weights, examples=examples, scale=fmt(scale),
        top_tokens=tab(["line", "position", "token", "log-ratio"],
                       [[str(t["line"]), str(t["position"]), repr(t["token"]), fmt(t["value"])]
                        for t in results["top_tokens"]]),
        seconds=fmt(results["seconds"]["total"]))
