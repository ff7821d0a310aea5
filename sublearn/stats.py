"""Confidence intervals and tests used across experiments."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Values = Sequence[float] | npt.NDArray[np.floating]


def mean_ci95(values: Values) -> tuple[float, float]:
    """Mean and the paper's half-width 1.96*sd/sqrt(n) (sample sd; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    half = 1.96 * float(arr.std(ddof=1)) / math.sqrt(arr.size) if arr.size > 1 else 0.0
    return float(arr.mean()), half


def bootstrap_ci(values: Values, rng: np.random.Generator, n_boot: int = 10_000,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` and a percentile bootstrap CI (resampling the values, e.g. question means)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    means = arr[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(arr.mean()), float(lo), float(hi)


def paired_permutation_p(a: Values, b: Values, rng: np.random.Generator,
                         n_perm: int = 20_000) -> float:
    """Two-sided p-value that paired per-question values a and b have equal means (sign flips)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size == 0:
        return float("nan")
    observed = abs(diff.mean())
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, diff.size))
    null = np.abs((signs * diff).mean(axis=1))
    # +1 in numerator and denominator: the observed labelling is one of the permutations.
    return float((np.sum(null >= observed - 1e-15) + 1) / (n_perm + 1))


def fisher_exact_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided Fisher exact test on a 2x2 table of hit counts."""
    from scipy.stats import fisher_exact

    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return float(fisher_exact(table, alternative="two-sided").pvalue)
