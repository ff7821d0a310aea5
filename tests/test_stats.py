"""Confidence intervals and tests on distributions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from sublearn.stats import bootstrap_ci, fisher_exact_p, mean_ci95, paired_permutation_p


def test_mean_ci95_formula() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_ci95([5.0]) == (5.0, 0.0)


def test_bootstrap_ci_covers_true_mean_at_nominal_rate() -> None:
    # 200 experiments of 50 Bernoulli(0.3) "questions": a 95% CI should cover 0.3 about 95% of the time.
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        sample = rng.binomial(1, 0.3, size=50).astype(float)
        _, lo, hi = bootstrap_ci(sample, rng, n_boot=2000)
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_permutation_p_detects_shift_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=50)
    assert paired_permutation_p(base + 1.0, base, rng, n_perm=5000) < 0.001
    same = paired_permutation_p(base + rng.normal(scale=0.01, size=50), base, rng, n_perm=5000)
    assert same > 0.01
    # Under the null, p-values are roughly uniform: about 5% fall below 0.05.
    ps = [paired_permutation_p(rng.normal(size=30), rng.normal(size=30), rng, n_perm=500) for _ in range(200)]
    assert 0.01 <= np.mean(np.array(ps) < 0.05) <= 0.11


def test_fisher_exact() -> None:
    assert fisher_exact_p(50, 100, 10, 100) < 1e-8
    assert fisher_exact_p(10, 100, 10, 100) == pytest.approx(1.0)
