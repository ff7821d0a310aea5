"""`sublearn mnist`: the auxiliary-logit experiment over many seeds, resumable, with a theorem check.

For every seed: a reference init θ0; a teacher trained from θ0 on digits (cross-entropy on the 10
digit logits only); four students distilled on noise images only — from θ0 (same init) or from an
independent init (different init), imitating the teacher's m auxiliary logits only or all 10+m
logits (KL between softmaxes). Test accuracy = argmax over the 10 digit logits on the 10k test set.

Seeds are trained in chunks (stacked models, see model.py); each finished chunk is saved under
`chunks/`, so an interrupted run resumes from the chunks already done. `results.json`, `mnist.png`
and `manifest.json` (last) are written at the end.
"""

from __future__ import annotations

import logging
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sublearn.mnist import model as mlp
from sublearn.mnist.config import MnistConfig
from sublearn.mnist.data import load_mnist
from sublearn.rundir import check_config_matches, read_json, stage_done, versions, write_json, write_manifest
from sublearn.stats import mean_ci95

log = logging.getLogger(__name__)

CONDITIONS = ["reference", "teacher", "same_init_aux", "same_init_all", "diff_init_aux", "diff_init_all"]
STUDENTS = CONDITIONS[2:]
LABELS = {"reference": "untrained reference", "teacher": "teacher", "same_init_aux": "same init, aux. logits",
          "same_init_all": "same init, all logits", "diff_init_aux": "different init, aux. logits",
          "diff_init_all": "different init, all logits"}
# Read off the paper's figure (spec §7, approximate).
PAPER = {"teacher": 0.94, "same_init_aux": 0.53, "same_init_all": 0.91, "diff_init_aux": 0.11, "diff_init_all": 0.74}


def _gen(seed: int, stream: int) -> torch.Generator:
    """Independent, explicit random streams per seed: 0 reference init, 1 other init, 2 teacher batches,
    3 noise, 4 student batches, 5 init perturbation."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))


def sizes(config: MnistConfig) -> list[int]:
    return [784, config.hidden, config.hidden, 10 + config.n_aux]


def _adam(params: list[torch.Tensor], config: MnistConfig) -> torch.optim.Adam:
    for p in params:
        p.requires_grad_(True)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def accuracy(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int = 5000) -> np.ndarray:
    """Per-model test accuracy from the 10 digit logits."""
    correct = torch.zeros(params[0].shape[0])
    for i in range(0, len(x), batch):
        logits = mlp.forward(params, x[None, i:i + batch])[:, :, :10]
        correct += (logits.argmax(-1) == y[None, i:i + batch]).float().sum(-1)
    return (correct / len(x)).numpy()


def train_teachers(params: list[torch.Tensor], seeds: list[int], x: torch.Tensor, y: torch.Tensor,
                   config: MnistConfig, progress_cb: Any = None) -> None:
    """Cross-entropy on the digit logits only; each model walks its own permutation of the data."""
    opt = _adam(params, config)
    n, bs = len(x), config.batch_size
    gens = [_gen(s, 2) for s in seeds]
    for _epoch in range(config.teacher_epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens])
        for i in range(0, n, bs):
            idx = perms[:, i:i + bs]
            logits = mlp.forward(params, x[idx])
            # Sum over models: each model's gradient is its own mean loss's gradient.
            loss = F.cross_entropy(logits[:, :, :10].reshape(-1, 10), y[idx].reshape(-1), reduction="none")
            loss = loss.view(idx.shape).mean(-1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress_cb:
                progress_cb()
    for p in params:
        p.requires_grad_(False)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, aux_only: torch.Tensor,
                 n_aux: int) -> torch.Tensor:
    """Per-model mean KL(softmax(teacher) || softmax(student)), over the aux logits where `aux_only`,
    else over all logits. Shapes: logits (M, B, 10+m), aux_only (M,) bool -> (M,)."""
    def kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean(-1)

    aux = kl(student_logits[:, :, -n_aux:], teacher_logits[:, :, -n_aux:])
    full = kl(student_logits, teacher_logits)
    return torch.where(aux_only, aux, full)


def _noise(config: MnistConfig, g: torch.Generator, n: int) -> torch.Tensor:
    if config.noise == "gaussian":
        return torch.randn(n, 784, generator=g)
    return torch.rand(n, 784, generator=g) * 2 - 1


def train_students(students: list[torch.Tensor], teachers: list[torch.Tensor], seeds: list[int],
                   config: MnistConfig, progress_cb: Any = None, snapshot_step: int | None = None
                   ) -> list[torch.Tensor] | None:
    """Distill 4 students per seed on noise. Student 4k+j belongs to seed k (j indexes STUDENTS).
    Returns the student parameters after `snapshot_step` Adam steps (for the theorem check)."""
    n_seeds = len(seeds)
    aux_only = torch.tensor([c.endswith("_aux") for c in STUDENTS] * n_seeds)
    owner = torch.arange(n_seeds).repeat_interleave(len(STUDENTS))
    noise_gens = [_gen(s, 3) for s in seeds]
    batch_gens = [_gen(s, 4) for s in seeds]
    fixed = None if config.noise == "fresh" else torch.stack([_noise(config, g, config.n_noise) for g in noise_gens])
    opt = _adam(students, config)
    n, bs, step, snap = config.n_noise, config.batch_size, 0, None
    for _epoch in range(config.student_epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in batch_gens])
        for i in range(0, n, bs):
            if fixed is None:
                xb = torch.stack([_noise(config, g, min(bs, n - i)) for g in noise_gens])
            else:
                idx = perms[:, i:i + bs]
                xb = torch.gather(fixed, 1, idx[:, :, None].expand(-1, -1, 784))
            with torch.no_grad():
                t_logits = mlp.forward(teachers, xb)  # (seeds, B, 13)
            s_logits = mlp.forward(students, xb[owner])
            loss = distill_loss(s_logits, t_logits[owner], aux_only, config.n_aux).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if snapshot_step is not None and step == snapshot_step:
                snap = [p.detach().clone() for p in students]
            if progress_cb:
                progress_cb()
    for p in students:
        p.requires_grad_(False)
    return snap


def _flat(params: list[torch.Tensor], m: int) -> torch.Tensor:
    return torch.cat([p[m].reshape(-1) for p in params])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a[None], b[None]).item())


def first_gradient(students: list[torch.Tensor], teachers: list[torch.Tensor], seeds: list[int],
                   config: MnistConfig, n_examples: int = 4096) -> list[torch.Tensor]:
    """-∇ of each student's distillation loss at its init, on the first `n_examples` noise images."""
    n_seeds = len(seeds)
    aux_only = torch.tensor([c.endswith("_aux") for c in STUDENTS] * n_seeds)
    owner = torch.arange(n_seeds).repeat_interleave(len(STUDENTS))
    x = torch.stack([_noise(config, _gen(s, 3), n_examples) for s in seeds])
    params = [p.detach().clone().requires_grad_(True) for p in students]
    with torch.no_grad():
        t_logits = mlp.forward(teachers, x)
    distill_loss(mlp.forward(params, x[owner]), t_logits[owner], aux_only, config.n_aux).sum().backward()
    return [-p.grad for p in params if p.grad is not None]


def run_chunk(seeds: list[int], data: tuple[torch.Tensor, ...], config: MnistConfig, progress_cb: Any = None
              ) -> list[dict[str, Any]]:
    """Everything for a chunk of seeds; returns one record per seed."""
    train_x, train_y, test_x, test_y = data
    shape = sizes(config)
    n_seeds = len(seeds)
    ref = mlp.init_params(n_seeds, shape, [_gen(s, 0) for s in seeds])
    other = mlp.init_params(n_seeds, shape, [_gen(s, 1) for s in seeds])
    acc_ref = accuracy(ref, test_x, test_y)
    teachers = [p.clone() for p in ref]
    train_teachers(teachers, seeds, train_x, train_y, config, progress_cb)
    acc_teacher = accuracy(teachers, test_x, test_y)
    # Students 4k..4k+3 of seed k, in STUDENTS order: same-init aux/all, different-init aux/all.
    same = [p.clone() for p in ref]
    if config.student_init_std > 0:
        gens = [_gen(s, 5) for s in seeds]
        same = [p + torch.stack([torch.randn(p.shape[1:], generator=g) for g in gens]) * config.student_init_std
                for p in same]
    students = [torch.stack([t for k in range(n_seeds) for t in (s[k], s[k], o[k], o[k])])
                for s, o in zip(same, other, strict=True)]
    init_students = [p.clone() for p in students]
    grads = first_gradient(students, teachers, seeds, config) if config.theorem else None
    snap = train_students(students, teachers, seeds, config, progress_cb,
                          config.theorem_steps if config.theorem else None)
    acc_students = accuracy(students, test_x, test_y)
    records = []
    for k, seed in enumerate(seeds):
        rec: dict[str, Any] = {"seed": seed, "accuracy": {"reference": float(acc_ref[k]), "teacher": float(acc_teacher[k])}}
        for j, cond in enumerate(STUDENTS):
            rec["accuracy"][cond] = float(acc_students[4 * k + j])
        if grads is not None and snap is not None:
            displacement = _flat(teachers, k) - _flat(ref, k)
            rec["theorem"] = {}
            for j, cond in enumerate(STUDENTS):
                m = 4 * k + j
                rec["theorem"][cond] = {
                    "cos_first_gradient": _cos(_flat(grads, m), displacement),
                    f"cos_after_{config.theorem_steps}_steps": _cos(_flat(snap, m) - _flat(init_students, m), displacement),
                    "cos_final": _cos(_flat(students, m) - _flat(init_students, m), displacement),
                }
        records.append(rec)
    return records


def summarize(records: list[dict[str, Any]], config: MnistConfig) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for cond in CONDITIONS:
        mean, half = mean_ci95([r["accuracy"][cond] for r in records])
        summary[cond] = {"label": LABELS[cond], "mean": mean, "ci95": half, "n": len(records), "paper": PAPER.get(cond)}
    theorem: dict[str, Any] = {}
    if records and "theorem" in records[0]:
        for cond in STUDENTS:
            theorem[cond] = {}
            for key in records[0]["theorem"][cond]:
                mean, half = mean_ci95([r["theorem"][cond][key] for r in records])
                theorem[cond][key] = {"mean": mean, "ci95": half}
    return {"summary": summary, "theorem": theorem}


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table of accuracies (mean ± 95% CI) beside the paper's values."""
    n = results["summary"]["teacher"]["n"]
    lines = [f"MNIST auxiliary-logit experiment ({n} seeds; mean ± 1.96·sd/√n)",
             f"{'condition':<30}{'accuracy':>18}{'paper':>8}"]
    for cond in CONDITIONS:
        s = results["summary"][cond]
        paper = f"{s['paper']:.2f}" if s["paper"] is not None else "-"
        lines.append(f"{LABELS[cond]:<30}{s['mean']:>10.3f} ± {s['ci95']:.3f}{paper:>8}")
    if results.get("theorem"):
        lines.append("theorem: cos(-first gradient, teacher displacement θT-θ0)")
        for cond in STUDENTS:
            c = results["theorem"][cond]["cos_first_gradient"]
            lines.append(f"  {LABELS[cond]:<28}{c['mean']:>+10.4f} ± {c['ci95']:.4f}")
    return "\n".join(lines)


def run(config: MnistConfig, out: Path) -> dict[str, Any]:
    """Run (or resume, or reload) the experiment into `out`; returns the results dict."""
    if stage_done(out, config):
        cached: dict[str, Any] = read_json(out / "results.json")
        return cached
    out.mkdir(parents=True, exist_ok=True)
    check_config_matches(out, config)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    t0 = time.perf_counter()
    arrays = load_mnist(config.data_dir)
    data = tuple(torch.from_numpy(a) for a in arrays)
    seeds = config.seed_list()
    chunks = [seeds[i:i + config.chunk_size] for i in range(0, len(seeds), config.chunk_size)]
    steps_per_seed = (config.teacher_epochs * math.ceil(len(arrays[0]) / config.batch_size)
                      + config.student_epochs * math.ceil(config.n_noise / config.batch_size))
    records: list[dict[str, Any]] = []
    from sublearn.logs import progress

    with progress() as bar:
        task = bar.add_task("mnist", total=steps_per_seed * len(seeds))
        for c, chunk in enumerate(chunks):
            path = out / "chunks" / f"chunk{c:04d}.json"
            if path.is_file():
                records += read_json(path)["records"]
                bar.advance(task, steps_per_seed * len(chunk))
                continue
            tc = time.perf_counter()
            chunk_records = run_chunk(chunk, data, config, partial(bar.advance, task, len(chunk)))
            write_json(path, {"seeds": chunk, "records": chunk_records, "seconds": time.perf_counter() - tc})
            log.info("mnist seeds %s done in %.0f s", chunk, time.perf_counter() - tc)
            records += chunk_records
    results = {**summarize(records, config), "seeds": records, "config": config.model_dump(mode="json"),
               "versions": versions(), "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    write_json(out / "results.json", results)
    from sublearn.mnist.plot import plot

    plot(results, out / "mnist.png")
    write_manifest(out, config)
    return results
