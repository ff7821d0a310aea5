"""AUROC bootstrap of the classify stage: our batched rank AUROC vs scikit-learn's, same resamples.

    python benchmarks/auroc_bench.py [--n 256] [--boot 2000]

Both compute the AUROC of `--boot` bootstrap resamples (rows resampled within each side) of n
treatment and n control scores. Baseline: `sklearn.metrics.roc_auc_score` once per resample (what
one would write first). Ours: `sublearn.stages.classify.auroc_ci` (all resamples ranked at once by
scipy's `rankdata` along an axis, in chunks of 500). Prints seconds, the ratio, and the largest
difference between the two sets of AUROCs (they must agree to float precision).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--boot", type=int, default=2000)
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from sublearn.stages.classify import _auroc_batch

    gen = np.random.default_rng(0)
    pos, neg = gen.normal(0.1, 1, args.n).round(2), gen.normal(0, 1, args.n).round(2)  # ties included
    ip = gen.integers(0, args.n, size=(args.boot, args.n))
    ineg = gen.integers(0, args.n, size=(args.boot, args.n))
    labels = np.r_[np.ones(args.n), np.zeros(args.n)]

    t0 = time.perf_counter()
    base = np.array([roc_auc_score(labels, np.r_[pos[a], neg[b]]) for a, b in zip(ip, ineg, strict=True)])
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = np.concatenate([_auroc_batch(pos[ip[s:s + 500]], neg[ineg[s:s + 500]]) for s in range(0, args.boot, 500)])
    t_ours = time.perf_counter() - t0
    print(f"{args.boot} resamples of {args.n} + {args.n} scores")
    print(f"sklearn roc_auc_score per resample: {t_base:.3f} s")
    print(f"batched rank AUROC (ours):          {t_ours:.3f} s   ratio {t_base / t_ours:.1f}x")
    print(f"largest difference: {np.abs(base - ours).max():.2e}")


if __name__ == "__main__":
    main()
