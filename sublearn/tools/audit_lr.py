"""The likelihood-ratio audit (`sublearn audit DATA --teacher T --base B --control CONTROL`): can a row's
score log P(row | teacher) - log P(row | base) tell the audited data from control data?

    result = likelihood_ratio(data_parts, control_parts, data_groups, control_groups, rng)

A 2026 replication scored each row this way and separated trait data from control data at AUROC ~0.94
on Qwen2.5-7B, the ratio concentrated in the first digits, while probes and attribution added nothing
over simple confounds. This module measures the same on any pair of datasets:

- the score, per row: the summed and the mean per-token log-ratio (teacher-forced, the teacher seeing
  the prompt it wrote under, the base what the student will see; see `sublearn.analysis.divergence`);
- its AUROC against CONTROL's rows (P(a data row scores above a control row)), a bootstrap CI
  resampling rows within each side, and a permutation p that keeps pairs together: rows answering the
  same prompt (the same user turn in DATA and CONTROL, as when two teachers answer one prompt set) form
  a group and labels are permuted only inside groups; rows without a twin are permuted freely;
- the same for confound baselines that need no teacher-vs-base contrast: row length (completion
  tokens), the base model's loss (-mean log P_base) and the teacher's loss (-mean log P_teacher). A
  score that separates no better than these is not evidence of a hidden trait;
- the per-position profile: at each completion position, the mean log-ratio on each side and the
  AUROC of that position's log-ratio (which positions carry the difference).

The unit is the row, and the claim is about these two datasets ("these rows can / cannot be told
apart by this score"); a claim about a teacher needs teacher replicates (the pipeline's design).
Two-sided p throughout: an AUROC far below 0.5 is as informative as one far above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Parts:
    """Per row of one dataset: log P_teacher and log P_base of each completion token."""

    teacher: list[np.ndarray]
    base: list[np.ndarray]


def row_scores(parts: Parts) -> dict[str, npt.NDArray[np.float64]]:
    """The scores compared: the log-ratio (sum, mean) and the confound baselines."""
    ratio = [t - b for t, b in zip(parts.teacher, parts.base, strict=True)]

    def mean(values: Sequence[np.ndarray]) -> npt.NDArray[np.float64]:
        return np.array([float(v.mean()) if len(v) else 0.0 for v in values])

    return {"log_ratio_sum": np.array([float(r.sum()) for r in ratio]), "log_ratio_mean": mean(ratio),
            "length": np.array([float(len(r)) for r in ratio]), "base_loss": -mean(parts.base),
            "teacher_loss": -mean(parts.teacher)}


def grouped_permutation_aurocs(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int_],
                               groups: npt.NDArray[np.int_], n_permutations: int,
                               rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """AUROCs of `scores` under `n_permutations` relabellings that permute `labels` only among rows of
    one group (each group keeps its count of data rows, so every relabelling has the same n1, n0)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n1 = int(labels.sum())
    n0 = labels.size - n1
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order].astype(np.float64)
    sorted_labels = labels[order]
    out = np.empty(n_permutations)
    for start in range(0, n_permutations, 256):
        b = min(256, n_permutations - start)
        # Sorting (group + a uniform draw in [0, 1)) shuffles positions within each group only.
        within = np.argsort(sorted_groups[None, :] + rng.random((b, labels.size)), axis=1)
        permuted = np.empty((b, labels.size), dtype=np.int_)
        permuted[:, order] = sorted_labels[within]
        out[start:start + b] = ((permuted * ranks[None, :]).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


def _test(pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64], groups: npt.NDArray[np.int_],
          rng: np.random.Generator, n_bootstrap: int, n_permutations: int) -> dict[str, Any]:
    from sublearn.stages.classify import auroc, auroc_ci

    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size, dtype=np.int_), np.zeros(neg.size, dtype=np.int_)])
    observed = auroc(pos, neg)
    null = grouped_permutation_aurocs(scores, labels, groups, n_permutations, rng)
    # +1: the observed labelling is one of the relabellings; two-sided about chance (0.5).
    p = float((np.sum(np.abs(null - 0.5) >= abs(observed - 0.5) - 1e-12) + 1) / (n_permutations + 1))
    return {"auroc": observed, "ci": list(auroc_ci(pos, neg, rng, n_bootstrap)), "p": p,
            "test": f"label permutation within prompt groups ({n_permutations}), two-sided",
            "n": {"data": int(pos.size), "control": int(neg.size)},
            "min_detectable_auroc": min_detectable_auroc(int(pos.size), int(neg.size))}


def min_detectable_auroc(n1: int, n0: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest AUROC above 0.5 this many rows detect with `power` at two-sided `alpha`: the normal
    approximation of the Mann-Whitney statistic under the null, sd sqrt((n1 + n0 + 1) / (12 n1 n0)).
    It ignores the pairing by prompt, which the permutation test uses (pairs can only add power)."""
    from scipy.stats import norm

    return float(0.5 + (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * np.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))


def prompt_groups(data_keys: Sequence[str], control_keys: Sequence[str]) -> npt.NDArray[np.int_]:
    """Group ids of the concatenated rows (data first): rows with the same prompt share one."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in [*data_keys, *control_keys]], dtype=np.int_)


def likelihood_ratio(data: Parts, control: Parts, groups: npt.NDArray[np.int_], rng: np.random.Generator, *,
                     n_bootstrap: int = 2000, n_permutations: int = 2000, positions: int = 12) -> dict[str, Any]:
    """The section `likelihood_ratio` of the audit's results (see the module docstring). `groups`: from
    `prompt_groups`, data rows first."""
    from sublearn.stages.classify import auroc

    if not data.teacher or not control.teacher:
        raise ValueError("both datasets need rows")
    d, c = row_scores(data), row_scores(control)
    tests = {name: _test(d[name], c[name], groups, rng, n_bootstrap, n_permutations) for name in d}
    paired = int(sum(np.bincount(groups)[g] > 1 for g in groups[: len(data.teacher)]))
    profile = []
    d_ratio = [t - b for t, b in zip(data.teacher, data.base, strict=True)]
    c_ratio = [t - b for t, b in zip(control.teacher, control.base, strict=True)]
    for j in range(positions):
        dj = np.array([r[j] for r in d_ratio if len(r) > j])
        cj = np.array([r[j] for r in c_ratio if len(r) > j])
        if dj.size < 2 or cj.size < 2:
            break
        profile.append({"position": j, "data_mean": float(dj.mean()), "control_mean": float(cj.mean()),
                        "auroc": auroc(dj, cj), "n": {"data": int(dj.size), "control": int(cj.size)}})
    return {"score": tests["log_ratio_sum"], "score_mean": tests["log_ratio_mean"],
            "confounds": {k: tests[k] for k in ("length", "base_loss", "teacher_loss")},
            "profile": profile, "paired_rows": paired, "unit": "row",
            "means": {k: {"data": float(d[k].mean()), "control": float(c[k].mean())} for k in d}}
