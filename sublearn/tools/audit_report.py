"""`sublearn audit`'s output for people: the summary lines the CLI prints and the self-contained HTML page
(highlighted tokens, the divergence histogram, the probe and weight tables).
"""

from __future__ import annotations

import html
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


_CSS = (".tok{border-radius:2px;padding:0 1px;white-space:pre-wrap;font-family:monospace}"
        ".ex{border:1px solid #ddd;padding:6px;margin:8px 0;line-height:1.6}.note{color:#666;font-size:13px}")


def _cmp_row(label: str, cmp: dict[str, Any] | None, mde: float | None = None) -> list[Any]:
    from sublearn.analysis.render import fmt

    if cmp is None:
        return [label, "-", "-", "-", "-", "-", "two halves need >= 2 students"]
    return [label, fmt(cmp["effect"]), f"[{fmt(cmp['ci'][0])}, {fmt(cmp['ci'][1])}]", fmt(cmp["p"]),
            f"{cmp['n_seeds'][0]} vs {cmp['n_seeds'][1]}", fmt(mde), cmp["note"] or ""]


def _highlight(pieces: Sequence[str], values: np.ndarray, scale: float) -> str:
    spans = []
    for piece, v in zip(pieces, values, strict=True):
        alpha = min(1.0, abs(float(v)) / scale) if scale > 0 else 0.0
        color = "220,40,40" if v > 0 else "40,90,220"
        text = html.escape(piece).replace("\n", "↵<br>")
        spans.append(f'<span class="tok" style="background:rgba({color},{alpha:.2f})" title="{float(v):+.4f}">'
                     f"{text or '∅'}</span>")
    return "".join(spans)


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
    from sublearn.analysis.render import fmt, html_page, table

    d = results["divergence"]
    esc = html.escape
    parts = [f"<style>{_CSS}</style><h1>sublearn audit: {esc(Path(results['data']).name)}</h1>",
             f"<p>data <code>{esc(results['data'])}</code> ({results['rows']} examples; formats "
             f"{esc(json.dumps(results['formats']))}), teacher <code>{esc(results['teacher'])}</code>, base "
             f"<code>{esc(results['base'])}</code>"
             + (f", trait <b>{esc(results['trait'])}</b>" if results["trait"] else "") + ".</p>"]
    if results.get("warning"):
        parts.append(f"<p><b>warning:</b> {esc(results['warning'])}</p>")
    parts.append("<h2>(a) Divergence: log P<sub>teacher</sub> − log P<sub>base</sub> along the completions</h2>"
                 "<p class='note'>Per completion token, teacher-forced: the teacher sees the prompt it wrote the "
                 "data under (with its system prompt), the base sees what the student will. Positive: the teacher "
                 "liked this token more than the base does. The mean per token is an estimate of how far the data "
                 "is from what the base would write (a KL-like quantity when the data was sampled from the "
                 "teacher).</p>")
    parts.append(table(["mean / token (nats)", "sd / token", "mean |·| / token", "mean / example (sum)",
                         "tokens", "top 1% tokens' share of Σ|·|", "top 10% share", "min", "max"],
                        [[fmt(d["mean_per_token"]), fmt(d["sd_per_token"]), fmt(d["mean_abs_per_token"]),
                          fmt(d["mean_per_example"]), d["n_tokens"], fmt(d["top1pct_share_of_abs"]),
                          fmt(d["top10pct_share_of_abs"]), fmt(d["min"]), fmt(d["max"])]]))
    parts.append(f'<img src="data:image/png;base64,{histogram}">')

    probe = results.get("probe")
    parts.append("<h2>(b) Probe students: does training on this data move a student?</h2>")
    if not probe:
        parts.append("<p>Probe skipped (no seeds, 0 steps or fewer than 4 examples).</p>")
    else:
        st = probe["settings"]
        parts.append(f"<p class='note'>LoRA students of the base (r={st['lora_r']}, {st['steps']} updates of "
                     f"{st['batch_size']} examples, lr {st['lr']}, seeds {probe['seeds']}) trained on "
                     f"{probe['n_train_rows']} rows of the data (data students) or on the base model's own "
                     f"completions for the same prompts (control students; decoding "
                     f"{esc(json.dumps(probe['control_decoding']))}). The unit of inference is the student: "
                     "effect = mean(data) − mean(control), seed-level p and the CI of the same test, the smallest effect this "
                     "design could detect (MDE), and a placebo between halves of the data students.</p>")
        rows = []
        for name, m in probe["metrics"].items():
            label = (f"log2 P(reply starts with '{results['trait']}'), 50 questions" if name == "trait_log2"
                     else f"held-out log-prob gain over the base (nats/token), {probe['n_heldout_rows']} rows")
            rows.append(_cmp_row(f"{label}: data vs control", m["comparison"], m["mde"]))
            rows.append(_cmp_row(f"{label}: placebo (halves of data students)", m["placebo"]))
        parts.append(table(["comparison", "effect", "95% CI", "p (seed-level)", "students", "MDE", "note"], rows))
        ref = probe["reference"]
        if ref:
            parts.append(table(["model", f"mean log2 P({results['trait']})", f"mean P({results['trait']})"],
                                [[k, fmt(float(np.mean(v))), fmt(float(np.mean(np.exp2(v))))]
                                 for k, v in ref.items()]))
        srows = []
        for arm in ("data", "control"):
            for s in probe["seeds"]:
                r = probe["students"][arm][str(s)]
                srows.append([arm, s, fmt(r["loss_first"]), fmt(r["loss_last"]), fmt(float(np.mean(r["heldout_gain"]))),
                              fmt(float(np.mean(r["trait_log2"]))) if "trait_log2" in r else "-",
                              fmt(r.get("cosine_with_teacher"))])
        parts.append(table(["arm", "seed", "loss first", "loss last", "held-out gain", "mean log2 P(trait)",
                             "cos(ΔW, ΔW_teacher)"], srows))
        if probe["control_examples"]:
            parts.append("<p class='note'>control completions (first few): "
                         + " | ".join(f"<code>{esc(t[:80])}</code>" for t in probe["control_examples"]) + "</p>")

    w = results["weights"]
    parts.append("<h2>(c) Weight space: the students' LoRA updates vs the teacher's</h2>")
    if w["available"]:
        parts.append(table(["arm", "cosines per seed", "mean"],
                            [["data", ", ".join(fmt(c) for c in w["data"]), fmt(w["data_mean"])],
                             ["control", ", ".join(fmt(c) for c in w["control"]), fmt(w["control_mean"])]]))
        if w.get("note"):
            parts.append(f"<p><b>note:</b> {esc(w['note'])}</p>")
    else:
        parts.append(f"<p>{esc(w['reason'])}</p>")

    parts.append(f"<h2>Top {len(shown)} examples by summed log-ratio</h2><p class='note'>Each token coloured by its "
                 f"log-ratio: <span style='background:rgba(220,40,40,.8)'>red</span> positive (teacher prefers), "
                 f"<span style='background:rgba(40,90,220,.8)'>blue</span> negative; full intensity at |value| ≥ "
                 f"{fmt(scale)} nats (the 99th percentile); hover a token for its value.</p>")
    for _, row, pieces, values in shown:
        prompt = " / ".join(m["content"] for m in row.chat)
        parts.append(f"<div class='ex'><div class='note'>line {row.line}: sum {fmt(float(values.sum()))}, mean "
                     f"{fmt(float(values.mean()) if len(values) else 0.0)} nats; prompt: {esc(prompt[:300])}</div>"
                     f"{_highlight(pieces, values, scale)}</div>")
    parts.append("<h2>Top tokens</h2>" + table(
        ["line", "position", "token", "log-ratio"],
        [[t["line"], t["position"], repr(t["token"]), fmt(t["value"])] for t in results["top_tokens"]]))
    parts.append(f"<p class='note'>{fmt(results['seconds']['total'])} s.</p>")
    return html_page(parts)
