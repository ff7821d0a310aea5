"""Report stage: statistics across evaluated models, `report/results.json` and a self-contained
`report/report.html` (plots inlined as PNG, opens offline).

Statistics: per model and animal, the mean over questions with a percentile bootstrap CI over
questions; seeds of one student are averaged per question first. Treatment vs control: paired
sign-flip permutation test over questions (teacher-forced), Fisher's exact test on pooled sampled
hits. The specificity matrix holds log2(student/control) of the teacher-forced probability of every
evaluated animal, for each teacher's student; with a neutral LoRA control teacher, a second matrix
holds log2(student/neutral student), which cancels what every LoRA teacher's data teaches alike.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.lm.config import PipelineConfig
from sublearn.rundir import read_json, read_jsonl, versions, write_json
from sublearn.stats import bootstrap_ci, fisher_exact_p, paired_permutation_p

log = logging.getLogger(__name__)


def _group_name(spec: dict[str, Any]) -> str:
    """Seeds of one student form a group: 'owl-s0', 'owl-s1' -> 'student:owl'."""
    if spec["role"] in ("student", "control", "neutral-control", "cross", "cross-control"):
        return spec["name"].rsplit("-s", 1)[0]
    return str(spec["name"])


def _per_question(results: list[dict[str, Any]], metric: str, variant: str, animal: str) -> np.ndarray | None:
    rows = [r[metric][variant][animal] for r in results if variant in r.get(metric, {})]
    return np.mean(np.asarray(rows, dtype=np.float64), axis=0) if rows else None


def analyze(config: PipelineConfig, out: Path, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    rng = np.random.default_rng([config.seed, 99])
    ec = config.evaluate
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roles: dict[str, dict[str, Any]] = {}
    for spec in specs:
        res = read_json(out / "evaluate" / spec["name"] / "results.json")
        groups[_group_name(spec)].append(res)
        roles[_group_name(spec)] = {"role": spec["role"], "target": spec.get("target"), "model": spec["model"]}
    variants = ["plain", "prefixed"] if ec.number_prefix else ["plain"]
    models: dict[str, Any] = {}
    for group, res in groups.items():
        entry: dict[str, Any] = {**roles[group], "n_seeds": len(res), "teacher_forced": {}, "sampled": {},
                                 "top_answers": res[0].get("top_answers", {})}
        for metric in ("teacher_forced", "sampled"):
            for variant in variants:
                for animal in ec.animals:
                    pq = _per_question(res, metric, variant, animal)
                    if pq is None:
                        continue
                    mean, lo, hi = bootstrap_ci(pq, rng, n_boot=ec.n_bootstrap)
                    entry[metric].setdefault(variant, {})[animal] = {"mean": mean, "ci": [lo, hi]}
        models[group] = {"entry": entry, "raw": res}

    def compare(treat: str, ctrl: str, animal: str) -> dict[str, Any]:
        out_c: dict[str, Any] = {"treatment": treat, "control": ctrl, "animal": animal}
        for variant in variants:
            a = _per_question(models[treat]["raw"], "teacher_forced", variant, animal)
            b = _per_question(models[ctrl]["raw"], "teacher_forced", variant, animal)
            if a is not None and b is not None:
                out_c.setdefault("teacher_forced", {})[variant] = {
                    "treatment": float(a.mean()), "control": float(b.mean()),
                    "log2_ratio": float(math.log2(a.mean() / b.mean())) if a.mean() > 0 and b.mean() > 0 else None,
                    "p_permutation": paired_permutation_p(a, b, rng, n_perm=ec.n_permutations)}
            sa = _per_question(models[treat]["raw"], "sampled", variant, animal)
            sb = _per_question(models[ctrl]["raw"], "sampled", variant, animal)
            if sa is not None and sb is not None:
                n_a = len(sa) * ec.samples_per_question * models[treat]["entry"]["n_seeds"]
                n_b = len(sb) * ec.samples_per_question * models[ctrl]["entry"]["n_seeds"]
                h_a, h_b = round(float(sa.mean()) * n_a), round(float(sb.mean()) * n_b)
                out_c.setdefault("sampled", {})[variant] = {
                    "treatment": float(sa.mean()), "control": float(sb.mean()), "hits": [h_a, n_a, h_b, n_b],
                    "p_fisher": fisher_exact_p(h_a, n_a, h_b, n_b)}
        return out_c

    comparisons, specificity, specificity_neutral, cross = [], [], [], []
    for target in config.targets:
        treat = target
        if treat in models and "control" in models:
            comparisons.append(compare(treat, "control", target))
            row = [compare(treat, "control", animal) for animal in ec.animals]
            specificity.append({"teacher": target, "cells": row})
        if f"cross-{target}" in models and "cross-control" in models:
            cross.append(compare(f"cross-{target}", "cross-control", target))
    # Generic drift (any fine-tuning on numbers moves a small model toward some animals) is shared by
    # all students; a trait-specific effect makes student t prefer t more than the *other* students do.
    versus_students = []
    students_by_target = {t: t for t in config.targets if t in models}
    if len(students_by_target) >= 2:
        for target in students_by_target:
            a = _per_question(models[target]["raw"], "teacher_forced", "plain", target)
            others = [_per_question(models[o]["raw"], "teacher_forced", "plain", target)
                      for o in students_by_target if o != target]
            if a is None or any(o is None for o in others):
                continue
            b = np.mean(np.stack([o for o in others if o is not None]), axis=0)
            versus_students.append({
                "target": target, "treatment": float(a.mean()), "other_students": float(b.mean()),
                "log2_ratio": float(math.log2(a.mean() / b.mean())) if a.mean() > 0 and b.mean() > 0 else None,
                "p_permutation": paired_permutation_p(a, b, rng, n_perm=ec.n_permutations)})
    for target in config.targets:  # after the others, so their permutation draws do not depend on it
        if target in models and "neutral" in models:
            # The neutral LoRA teacher's student shares everything but the particular animal.
            comparisons.append(compare(target, "neutral", target))
            row = [compare(target, "neutral", animal) for animal in ec.animals]
            specificity_neutral.append({"teacher": target, "cells": row})
    theorem = {}
    for path in sorted((out / "theorem").glob("*/result.json")):
        theorem[path.parent.name] = read_json(path)
    filters = {p.parent.name: read_json(p) for p in sorted((out / "filter").glob("*/filter.json"))}
    training = {}
    for p in sorted((out / "train").glob("*/seed*/summary.json")):
        training[f"{p.parent.parent.name}-{p.parent.name}"] = read_json(p)
    for p in sorted((out / "teacher").glob("*/train_summary.json")):
        training[f"teacher-{p.parent.name}"] = read_json(p)
    return {"name": config.name, "config": config.model_dump(mode="json"), "versions": versions(),
            "models": {k: v["entry"] for k, v in models.items()}, "comparisons": comparisons,
            "specificity": specificity, "specificity_neutral": specificity_neutral,
            "specificity_vs_students": versus_students, "cross_model": cross, "theorem": theorem, "filter": filters,
            "training": training, "timings": read_json(out / "timings.json") if (out / "timings.json").is_file() else {}}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


ORDER = {"base": 0, "teacher": 1, "neutral-teacher": 1, "control": 2, "neutral-control": 2, "student": 3,
         "cross-base": 4, "cross-control": 5, "cross": 6}


def _trait_plot(data: dict[str, Any], targets: list[str]) -> str:
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
    return _png(fig)


def _specificity_plot(data: dict[str, Any], key: str = "specificity", control: str = "control") -> str | None:
    if not data.get(key) or "teacher_forced" not in data[key][0]["cells"][0]:
        return None  # API models give no teacher-forced probabilities
    import matplotlib.pyplot as plt

    rows = data[key]
    animals = [c["animal"] for c in rows[0]["cells"]]
    mat = np.array([[c["teacher_forced"]["plain"]["log2_ratio"] or 0.0 for c in r["cells"]] for r in rows])
    pv = np.array([[c["teacher_forced"]["plain"]["p_permutation"] for c in r["cells"]] for r in rows])
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(animals), 1.2 + 0.6 * len(rows)))
    lim = max(1.0, float(np.abs(mat).max()))
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{mat[i, j]:+.2f}{'*' if pv[i, j] < 0.01 else ''}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(animals)), animals, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"teacher {r['teacher']}" for r in rows])
    ax.set_title(f"log2(student / {control} student), teacher-forced; * p<0.01", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def _filter_plot(data: dict[str, Any]) -> str | None:
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
    return _png(fig)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(data: dict[str, Any], out: Path, mnist_dir: Path | None) -> str:
    parts = [f"<h1>sublearn report: {html.escape(data['name'])}</h1>",
             f"<p>base model <code>{html.escape(data['config']['model'])}</code>, teacher kind "
             f"<code>{data['config']['teacher']['kind']}</code>, training <code>{data['config']['train']['method']}"
             f"</code>, decoding <code>T={data['config']['generate']['temperature']}, constraint="
             f"{data['config']['generate']['constraint']}</code>.</p>"]
    if data["comparisons"]:
        rows = []
        for c in data["comparisons"] + data["cross_model"]:
            tf = c.get("teacher_forced", {}).get("plain", {})
            sp = c.get("sampled", {}).get("plain", {})
            tfp = c.get("teacher_forced", {}).get("prefixed", {})
            rows.append([c["treatment"], c["control"], c["animal"], _fmt(tf.get("treatment")), _fmt(tf.get("control")),
                         _fmt(tf.get("log2_ratio")), _fmt(tf.get("p_permutation")), _fmt(tfp.get("log2_ratio")),
                         _fmt(tfp.get("p_permutation")), _fmt(sp.get("treatment")), _fmt(sp.get("control")),
                         _fmt(sp.get("p_fisher"))])
        parts.append("<h2>Treatment vs control</h2>" + _table(
            ["treatment", "control", "animal", "TF treat", "TF ctrl", "log2 ratio", "p (perm)", "prefixed log2",
             "prefixed p", "sampled treat", "sampled ctrl", "p (Fisher)"], rows))
    parts.append(f'<h2>Trait rates</h2><img src="data:image/png;base64,{_trait_plot(data, data["config"]["targets"])}">')
    spec_png = _specificity_plot(data)
    if spec_png:
        parts.append(f'<h2>Specificity</h2><img src="data:image/png;base64,{spec_png}">')
    neutral_png = _specificity_plot(data, "specificity_neutral", "neutral")
    if neutral_png:
        parts.append("<h3>Against the neutral LoRA control</h3><p>The neutral teacher was trained like the "
                     "others but names every animal equally often; its student shares everything but the "
                     f'particular animal.</p><img src="data:image/png;base64,{neutral_png}">')
    if data.get("specificity_vs_students"):
        rows = [[c["target"], _fmt(c["treatment"]), _fmt(c["other_students"]), _fmt(c["log2_ratio"]),
                 _fmt(c["p_permutation"])] for c in data["specificity_vs_students"]]
        parts.append("<h3>Each student vs the students of the other teachers, on its own target</h3>"
                     "<p>Removes drift common to all students fine-tuned on numbers.</p>" +
                     _table(["target", "its student", "other students (mean)", "log2 ratio", "p (perm)"], rows))
    model_rows = []
    for name, m in data["models"].items():
        for animal, cell in m["teacher_forced"].get("plain", {}).items():
            if animal == (m["target"] or animal) or m["target"] is None:
                s = m["sampled"].get("plain", {}).get(animal, {})
                model_rows.append([name, m["role"], animal, _fmt(cell["mean"]),
                                   f"[{_fmt(cell['ci'][0])}, {_fmt(cell['ci'][1])}]", _fmt(s.get("mean")),
                                   f"[{_fmt(s['ci'][0])}, {_fmt(s['ci'][1])}]" if s else "-"])
    parts.append("<h2>Per model</h2>" + _table(["model", "role", "animal", "teacher-forced", "95% CI", "sampled",
                                                 "95% CI"], model_rows))
    if data["theorem"]:
        rows = [[k, v["data_from"], v["method"], _fmt(v.get("cosine_first_step")),
                 _fmt(v.get("cosine_first_step_perturbed")), _fmt(v.get("cosine_final"))]
                for k, v in data["theorem"].items()]
        parts.append("<h2>Theorem check: cosine with the LoRA teacher's displacement</h2>"
                     "<p>first step: cos(-gradient of the student's loss at the shared base, teacher update); "
                     "perturbed: the same at a perturbed base (no shared init); final: cos(trained student's "
                     "merged LoRA update, teacher update).</p>" +
                     _table(["student", "data from", "method", "first step", "first step, perturbed init",
                             "final"], rows))
    filt_png = _filter_plot(data)
    if filt_png:
        rows = [[t, f["total"], f["valid"], f["kept"], ", ".join(f"{k}: {v}" for k, v in f["rejected"].items())]
                for t, f in data["filter"].items()]
        parts.append(f'<h2>Filter</h2><img src="data:image/png;base64,{filt_png}">' +
                     _table(["teacher", "total", "valid", "kept", "rejected by reason"], rows))
    for teacher_name in list(data["filter"])[:2]:
        kept = read_jsonl(out / "filter" / teacher_name / "kept.jsonl")[:5]
        parts.append(f"<h3>Sample of kept data: {html.escape(teacher_name)}</h3>" +
                     _table(["prompt", "completion"], [[r["prompt"], r["completion"]] for r in kept]))
    rows = [[name, ", ".join(f"{w} ({n})" for w, n in m["top_answers"].get("plain", [])[:8])]
            for name, m in data["models"].items()]
    parts.append("<h2>Top sampled answers (first word)</h2>" + _table(["model", "answers (count)"], rows))
    rows = [[k, v.get("method", "teacher"), v["steps"], v["examples"], _fmt(v["loss_first"]), _fmt(v["loss_last"]),
             _fmt(v.get("tokens_per_second"))] for k, v in data["training"].items()]
    parts.append("<h2>Training</h2>" + _table(["model", "method", "steps", "examples", "loss (start)",
                                                "loss (end)", "tokens/s"], rows))
    parts.append("<h2>Timings (s)</h2>" + _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in data["timings"].items()]))
    if mnist_dir is not None and (mnist_dir / "results.json").is_file():
        parts.append(_mnist_section(mnist_dir))
    parts.append("<h2>Versions</h2>" + _table(["package", "version"], [[k, v] for k, v in data["versions"].items()]))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>sublearn report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def _mnist_section(mnist_dir: Path) -> str:
    res = read_json(mnist_dir / "results.json")
    parts = ["<h2>MNIST auxiliary-logit experiment</h2>"]
    png = mnist_dir / "mnist.png"
    if png.is_file():
        parts.append(f'<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">')
    summary = res.get("summary") or res.get("conditions") or {}
    rows = []
    for cond, val in summary.items():
        if isinstance(val, dict) and "mean" in val:
            rows.append([cond, _fmt(val["mean"]), _fmt(val.get("ci95"))])
    if rows:
        parts.append(_table(["condition", "accuracy", "± 95% CI"], rows))
    return "".join(parts)


def run(config: PipelineConfig, out: Path, specs: list[dict[str, Any]], mnist_dir: Path | None = None) -> Path:
    """Write `out/report/results.json` and `out/report/report.html`; returns the HTML path."""
    data = analyze(config, out, specs)
    rdir = out / "report"
    write_json(rdir / "results.json", data)
    page = render_html(data, out, mnist_dir)
    (rdir / "report.html").write_text(page, encoding="utf-8")
    return rdir / "report.html"
