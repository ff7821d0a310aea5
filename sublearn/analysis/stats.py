"""Confidence intervals and tests used across experiments.

Per-question helpers (`mean_ci95`, `bootstrap_ci`, `paired_permutation_p`, `fisher_exact_p`) treat the
models compared as fixed. To compare arms of *trained students* (several seeds per arm, all evaluated on
the same questions) use `compare_arms`, `placebo`, `min_detectable_effect` and `adjust` below: there the
unit of inference is the student, so training variance counts; with several teacher replicates per arm,
`replicate_means` makes the teacher (and its dataset) the unit, so dataset variance counts too. Every
interval comes from the same test as its p.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

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


# --------------------------------------------------------------------------------------------------
# Statistics whose unit is the trained student.
#
# A comparison of two "arms" (e.g. students trained on an owl teacher's numbers vs students trained on
# a control teacher's numbers) has two sources of variation: which questions were asked, and which
# students came out of training (seed: data sampling, init, batch order). A claim about *training*
# ("owl data moves students toward owls") must be judged against the spread between students of the
# same arm. Averaging seeds per question and then permuting over questions treats the handful of
# students as fixed: two seeds of the same arm then "differ" at p < 1e-4, because with 50 questions
# any seed-level offset is estimated very precisely. The functions below make the student the unit.
# The same holds one level up: students of ONE teacher share its dataset, so a difference between two
# teachers' datasets looks like an arm effect to a student-level test (and its placebo, halves of one
# arm's students, cannot see it). With teacher replicates, `replicate_means` makes the teacher the unit.
# --------------------------------------------------------------------------------------------------

TEST_PERMUTATION = "permutation over seeds"
TEST_T = "t-test on seed means"
TEST_MIXED = "mixed model, random teacher intercept"

# Below this many distinct relabelings of the seeds a permutation test is too coarse (its smallest
# attainable p is 2/C); the t-test on seed means is used instead.
MIN_RELABELINGS = 1000
# Up to this many relabelings the permutation distribution is enumerated exactly.
MAX_EXACT_RELABELINGS = 20_000


@dataclass(frozen=True)
class ArmComparison:
    """Arm a versus arm b, with one independent unit per row (`unit`: the trained student, or the
    teacher replicate with its students averaged). Built by `compare_arms`.

    effect       mean(a) − mean(b): the mean over questions of the per-question difference of unit means.
    ci           (lo, hi) confidence interval of `effect` at `level` from the same test as `p`: the
                 pooled-variance t-interval on unit means (t-test designs) or the inverted permutation
                 test (the shifts of arm a that the same relabelings do not reject), so the CI excludes 0
                 exactly when p < 1 − level. (nan, nan) when there is no test.
    p            two-sided unit-level p-value for `effect` (see `test`); None when it cannot be computed
                 (fewer than 3 units in all, an empty arm, or no spread between units): see `note`.
    test         TEST_PERMUTATION ("permutation over seeds"), TEST_T ("t-test on seed means") or None.
    n_seeds      (units in a, units in b): students, or teacher replicates when `unit` is "teachers".
    n_questions  questions each unit answered (the columns, paired across arms).
    p_questions  question-level paired t-test on per-question differences of unit means. It treats the
                 units as FIXED: valid only when each arm is one fixed model (e.g. base model vs
                 teacher), NEVER evidence that training changed anything (it ignores seed variance).
    level        confidence level of `ci`.
    note         why p is None / caveats of this design ('' if none).
    unit         what one row is: "students" or "teachers" (replicates, each the mean of its students).
    """

    effect: float
    ci: tuple[float, float]
    p: float | None
    test: str | None
    n_seeds: tuple[int, int]
    n_questions: int
    p_questions: float | None
    level: float = 0.95
    note: str = ""
    unit: str = "students"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists; NaN CI bounds become None)."""
        out = asdict(self)
        out["ci"] = [None if not math.isfinite(x) else x for x in self.ci]
        out["n_seeds"] = list(self.n_seeds)
        return out


def _as_matrix(x: Any, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (seeds x questions), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


@lru_cache(maxsize=32)
def _relabelings(n: int, k: int) -> npt.NDArray[np.intp]:
    """All C(n, k) ways of choosing which k of n students are called arm a (one per row)."""
    return np.array(list(itertools.combinations(range(n), k)), dtype=np.intp).reshape(-1, k)


def _seed_level_test(ma: npt.NDArray[np.float64], mb: npt.NDArray[np.float64], rng: np.random.Generator,
                     n_perm: int, level: float) -> tuple[float | None, str | None, str, tuple[float, float]]:
    """(p, test, note, ci) for the difference of means of per-unit values ma vs mb; the CI inverts the
    same test (nan bounds when there is no test)."""
    nan = (float("nan"), float("nan"))
    na, nb = ma.size, mb.size
    if na == 0 or nb == 0:
        return None, None, "an arm has no units", nan
    if na + nb < 3:
        return None, None, "one unit per arm: no estimate of the spread between units", nan
    x = np.concatenate([ma, mb])
    ss = float(((ma - ma.mean()) ** 2).sum() + ((mb - mb.mean()) ** 2).sum())
    scale = max(1.0, float(np.abs(x).max()))
    if not ss > (1e-12 * scale) ** 2:
        return None, None, "no spread between units within arms (pooled variance 0)", nan
    effect = float(ma.mean() - mb.mean())
    n_relabel = math.comb(na + nb, na)
    if n_relabel < MIN_RELABELINGS:
        # Balanced two-level design: the arm effect in y ~ arm + (1|question) + (1|unit) is tested
        # exactly by the pooled two-sample t-test on per-unit means (df = na + nb - 2), and its
        # t-interval is the CI that belongs to it. Computed here from `ss` (scipy.stats.ttest_ind gives
        # the same p, but warns about precision on nearly equal hit rates, which are common and harmless).
        from scipy.stats import t

        df = na + nb - 2
        se = math.sqrt(ss / df * (1 / na + 1 / nb))
        half = float(t.ppf(1 - (1 - level) / 2, df)) * se
        return float(2 * t.sf(abs(effect) / se, df)), TEST_T, "", (effect - half, effect + half)
    # Permutation over units: under the null (no arm effect) the arm labels are exchangeable.
    tol = 1e-10 * scale  # mirrored relabelings give the same |difference| up to rounding
    if n_relabel <= MAX_EXACT_RELABELINGS:
        chosen = _relabelings(na + nb, na)
        # The observed labelling is one of the enumerated ones, so p >= 1/C.
        p, note, extra = _permutation_p(x, na, chosen, 0.0, tol), f"exact, {n_relabel} relabelings", 0
    else:
        chosen = rng.permuted(np.tile(np.arange(na + nb), (n_perm, 1)), axis=1)[:, :na]
        # +1 in numerator and denominator: the observed labelling counts as one of the permutations.
        extra = 1
        p = _permutation_p(x, na, chosen, 0.0, tol, extra)
        note = f"Monte Carlo, {n_perm} of {n_relabel} relabelings"
    return p, TEST_PERMUTATION, note, _permutation_ci(x, na, chosen, effect, level, tol, extra)


def _permutation_p(x: npt.NDArray[np.float64], na: int, chosen: npt.NDArray[np.intp], shift: float, tol: float,
                   extra: int = 0) -> float:
    """p of the permutation test of "arm a (the first na values) minus `shift` has the mean of arm b",
    over the relabelings `chosen` (rows: which units are called a); `extra` counts the observed
    labelling once more (Monte Carlo relabelings)."""
    nb = x.size - na
    y = x.copy()
    y[:na] -= shift
    sum_a = y[chosen].sum(axis=1)
    stats = np.abs(sum_a / na - (float(y.sum()) - sum_a) / nb)
    observed = abs(float(y[:na].mean() - y[na:].mean()))
    return (int(np.sum(stats >= observed - tol)) + extra) / (chosen.shape[0] + extra)


def _permutation_ci(x: npt.NDArray[np.float64], na: int, chosen: npt.NDArray[np.intp], effect: float,
                    level: float, tol: float, extra: int) -> tuple[float, float]:
    """The shifts of arm a that the permutation test (same relabelings) does not reject at 1 − level:
    the interval that belongs to that test. Each bound by bisection between the effect (not rejected:
    p = 1 there) and a shift far enough out to be rejected."""
    alpha = 1 - level
    if (1 + extra) / (chosen.shape[0] + extra) > alpha:
        return float("-inf"), float("inf")  # too few relabelings to reject anything at this level
    width = 4 * (float(x.max() - x.min()) + 1e-12)  # beyond this shift no relabeling comes close
    bounds = []
    for direction in (-1.0, 1.0):
        inside, outside = effect, effect + direction * width
        for _ in range(60):
            mid = (inside + outside) / 2
            if _permutation_p(x, na, chosen, mid, tol, extra) > alpha:
                inside = mid
            else:
                outside = mid
        bounds.append(inside)
    return bounds[0], bounds[1]


def _question_level_p(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float | None:
    """Paired t-test over questions on per-question differences of seed means (students as fixed)."""
    if a.shape[0] == 0 or b.shape[0] == 0 or a.shape[1] < 2:
        return None
    d = a.mean(axis=0) - b.mean(axis=0)
    if not float(d.std()) > 1e-12 * max(1.0, float(np.abs(d).max())):
        return None
    from scipy.stats import t

    return float(2 * t.sf(abs(float(d.mean())) / (float(d.std(ddof=1)) / math.sqrt(d.size)), d.size - 1))


def compare_arms(a: Any, b: Any, rng: np.random.Generator, *, level: float = 0.95, n_perm: int = 20_000,
                 unit: str = "students") -> ArmComparison:
    """Compare two arms of independent units (trained students, or teacher replicates: see
    `replicate_means`) evaluated on the same questions.

        cmp = compare_arms(owl_values, control_values, np.random.default_rng(0))
        print(cmp.effect, cmp.ci, cmp.p, cmp.test)

    `a` and `b` are (units x questions) arrays: row = one unit, column = one question, the same
    question in the same column of both arms (questions are paired, units are not). Values are e.g.
    log2 of a probability or a per-question hit rate. The unit must be what varies independently
    between arms: with one teacher per arm, students of one dataset share that dataset, and a
    difference between the two teachers' datasets counts as an effect (say so where it is reported).

    - effect = mean(a) − mean(b).
    - p: unit-level two-sided test on per-unit means over questions. With at least MIN_RELABELINGS
      (1000) distinct relabelings C(na+nb, na) it is a permutation test over units (exact up to
      MAX_EXACT_RELABELINGS (20000), else `n_perm` random relabelings from `rng`); with fewer,
      Student's pooled-variance t-test on the unit means (the mixed-model test of
      y ~ arm + (1|question) + (1|unit) for balanced designs). None when it cannot be computed.
    - ci: the interval of that same test at `level` (t-interval, or the inverted permutation test).
    - p_questions: question-level test, only for arms that are single FIXED models (see ArmComparison).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_perm < 1:
        raise ValueError("n_perm must be >= 1")
    am, bm = _as_matrix(a, "a"), _as_matrix(b, "b")
    if am.shape[1] != bm.shape[1]:
        raise ValueError(f"a and b must have the same questions (columns): {am.shape[1]} != {bm.shape[1]}")
    na, nb, q = am.shape[0], bm.shape[0], am.shape[1]
    if na == 0 or nb == 0 or q == 0:
        return ArmComparison(float("nan"), (float("nan"), float("nan")), None, None, (na, nb), q, None,
                             level, "an arm has no units" if q else "no questions", unit)
    effect = float(am.mean() - bm.mean())
    p, test, note, ci = _seed_level_test(am.mean(axis=1), bm.mean(axis=1), rng, n_perm, level)
    return ArmComparison(effect, ci, p, test, (na, nb), q, _question_level_p(am, bm), level, note, unit)


def replicate_means(replicates: Sequence[Any]) -> npt.NDArray[np.float64]:
    """One row per teacher replicate: the mean of its students' (students x questions) rows, so that
    `compare_arms(replicate_means(a), replicate_means(b), rng, unit="teachers")` tests at the level of
    the teacher (and its dataset), the unit that varies independently when a claim is about the teacher.

        arm = replicate_means([elephant_r1_students, elephant_r2_students, elephant_r3_students])
    """
    mats = [_as_matrix(r, f"replicate {i}") for i, r in enumerate(replicates)]
    if len({m.shape[1] for m in mats}) > 1:
        raise ValueError("every replicate must answer the same questions (columns)")
    if any(m.shape[0] == 0 for m in mats):
        raise ValueError("a replicate has no students")
    return np.stack([m.mean(axis=0) for m in mats]) if mats else np.zeros((0, 0))


def nested_compare(a: Sequence[Any], b: Sequence[Any], rng: np.random.Generator, *, level: float = 0.95,
                   n_perm: int = 20_000) -> ArmComparison:
    """Arm a vs arm b when each arm is several teacher replicates, each with its own students: `a` and
    `b` are lists of (students x questions) arrays, one per teacher. The unit is the teacher.

        cmp = nested_compare([owl_r1, owl_r2, owl_r3], [neutral_r1, neutral_r2, neutral_r3], rng)

    Balanced (every teacher has the same number of students): the t-test on replicate means, exact for
    the balanced nested design (`compare_arms(replicate_means(a), replicate_means(b), unit="teachers")`).
    Unbalanced: a linear mixed model of each student's mean over questions, y = arm effect + teacher
    intercept (random) + student noise (statsmodels MixedLM, REML), which weights each teacher by how
    well its students pin it down. Its p and CI come from the same Wald statistic of the arm coefficient,
    referred to Student's t with (teachers − 2) degrees of freedom, the between-teacher df (a normal
    reference would be anti-conservative with a handful of teachers). `effect` is then that coefficient.
    """
    mats_a = [_as_matrix(r, f"a[{i}]") for i, r in enumerate(a)]
    mats_b = [_as_matrix(r, f"b[{i}]") for i, r in enumerate(b)]
    sizes = {m.shape[0] for m in [*mats_a, *mats_b]}
    if len(sizes) <= 1 or not mats_a or not mats_b:
        return compare_arms(replicate_means(mats_a) if mats_a else np.zeros((0, 1)),
                            replicate_means(mats_b) if mats_b else np.zeros((0, 1)), rng, level=level,
                            n_perm=n_perm, unit="teachers")
    if 0 in sizes:
        raise ValueError("a replicate has no students")
    if len({m.shape[1] for m in [*mats_a, *mats_b]}) > 1:
        raise ValueError("every replicate must answer the same questions (columns)")
    import warnings

    import statsmodels.api as sm
    from scipy.stats import t

    y = np.concatenate([m.mean(axis=1) for m in [*mats_a, *mats_b]])
    arm = np.concatenate([np.full(m.shape[0], 1.0 if i < len(mats_a) else 0.0)
                          for i, m in enumerate([*mats_a, *mats_b])])
    teacher = np.concatenate([np.full(m.shape[0], i) for i, m in enumerate([*mats_a, *mats_b])])
    n_teachers = len(mats_a) + len(mats_b)
    n_q = mats_a[0].shape[1]
    unit_means = replicate_means(mats_a), replicate_means(mats_b)
    if n_teachers < 3:
        return ArmComparison(float(unit_means[0].mean() - unit_means[1].mean()), (float("nan"), float("nan")),
                             None, None, (len(mats_a), len(mats_b)), n_q, None, level,
                             "one teacher per arm: no estimate of the spread between teachers", "teachers")
    with warnings.catch_warnings():
        # Boundary fits (teacher variance estimated at 0) are legitimate here and warn.
        warnings.simplefilter("ignore")
        fit = sm.MixedLM(y, sm.add_constant(arm), groups=teacher).fit(reml=True)
        effect, se = float(fit.fe_params[1]), float(fit.bse_fe[1])
    df = n_teachers - 2
    if not (math.isfinite(se) and se > 0):
        # A degenerate fit (singular covariance; about 3 in 1000 null draws at 3 vs 3 teachers): the
        # unweighted t-test on teacher means is still valid for this design, only less efficient.
        cmp = compare_arms(*unit_means, rng, level=level, n_perm=n_perm, unit="teachers")
        return ArmComparison(cmp.effect, cmp.ci, cmp.p, cmp.test, cmp.n_seeds, cmp.n_questions, None, level,
                             "unbalanced; the mixed model's fit was degenerate: t-test on teacher means", "teachers")
    half = float(t.ppf(1 - (1 - level) / 2, df)) * se
    p = float(2 * t.sf(abs(effect) / se, df))
    return ArmComparison(effect, (effect - half, effect + half), p, TEST_MIXED, (len(mats_a), len(mats_b)), n_q,
                         None, level, f"unbalanced: {'/'.join(str(m.shape[0]) for m in mats_a)} vs "
                         f"{'/'.join(str(m.shape[0]) for m in mats_b)} students per teacher", "teachers")


def placebo(a: Any, rng: np.random.Generator, **kw: Any) -> ArmComparison | None:
    """The same comparison between two disjoint halves of ONE arm's units: a check that the test does
    not find "effects" between units made identically (p < 0.05 about 5% of the time). With students
    of one teacher as the units it cannot see a difference between teachers' datasets (they share
    one); with teacher replicates as the units (`replicate_means`) it can.

        check = placebo(owl_values, np.random.default_rng(0))   # first ceil(k/2) units vs the rest

    Keyword arguments go to `compare_arms`. None when the arm has fewer than 2 units. With exactly
    2 units each half has one, so there is no within-half spread and `p` is None: correct, since
    two units alone cannot tell an arm effect from noise.
    """
    arr = _as_matrix(a, "a")
    k = arr.shape[0]
    if k < 2:
        return None
    half = math.ceil(k / 2)
    return compare_arms(arr[:half], arr[half:], rng, **kw)


def adjust(pvalues: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """Family-wise adjusted p-values: "holm" (Holm-Bonferroni, controls the family-wise error rate) or
    "bh" (Benjamini-Hochberg, controls the false discovery rate).

        adjust([0.01, None, 0.04, 0.03])          # -> [0.03, None, 0.06, 0.06]

    None (or NaN) entries are missing cells: they come back as None and do not count in the family
    size. The order of the input is kept.
    """
    present = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: list[float | None] = [None] * len(pvalues)
    if not present:
        return out
    ps = np.array([pvalues[i] for i in present], dtype=np.float64)
    if np.any((ps < 0) | (ps > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = ps.size
    if method == "holm":
        order = np.argsort(ps, kind="stable")
        # The j-th smallest (0-based) is compared at alpha/(m-j); the running max keeps the adjusted
        # values monotone in the raw ones.
        stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * ps[order]))
        adjusted = np.empty(m)
        adjusted[order] = stepped
    elif method == "bh":
        from scipy.stats import false_discovery_control

        adjusted = np.asarray(false_discovery_control(ps, method="bh"), dtype=np.float64)
    else:
        raise ValueError(f"unknown method {method!r}: use 'holm' or 'bh'")
    for i, p in zip(present, adjusted, strict=True):
        out[i] = float(p)
    return out


def t_interval(values: Values, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width t_{n-1}·sd/√n of a confidence interval at `level` (sample sd).

        mean, half = t_interval(accuracies)        # report mean ± half

    With few values this is wider than the paper's 1.96·sd/√n (`mean_ci95`), which assumes a known
    sd. Half-width is nan for fewer than 2 values (no interval exists); both are nan when empty.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size < 2:
        return float(arr.mean()), float("nan")
    from scipy.stats import t

    quantile = float(t.ppf(1 - (1 - level) / 2, arr.size - 1))
    return float(arr.mean()), quantile * float(arr.std(ddof=1)) / math.sqrt(arr.size)


def min_detectable_effect(a: Any, b: Any, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest |effect| (units of `ArmComparison.effect`) that the seed-level test would detect with
    probability `power` at two-sided level `alpha`, for this design (na, nb students) and the spread
    between students seen in a and b (pooled sd of per-student means). Use it to report a null:

        "no difference (p = 0.4); with 4 students per arm we could only detect |effect| >= 0.31".

    Computed for the pooled two-sample t-test with the noncentral t distribution (the permutation
    test has about the same power). None when na + nb < 3 or the pooled sd is 0. The sd is itself
    estimated from few students, so this is a rough guide, not a guarantee.
    """
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    am, bm = _as_matrix(a, "a"), _as_matrix(b, "b")
    na, nb = am.shape[0], bm.shape[0]
    if na == 0 or nb == 0 or na + nb < 3 or am.shape[1] == 0:
        return None
    ma, mb = am.mean(axis=1), bm.mean(axis=1)
    df = na + nb - 2
    sd = math.sqrt((((ma - ma.mean()) ** 2).sum() + ((mb - mb.mean()) ** 2).sum()) / df)
    if not sd > 0:
        return None
    se = sd * math.sqrt(1 / na + 1 / nb)
    crit = float(t.ppf(1 - alpha / 2, df))

    draws = None

    def shortfall(ncp: float) -> float:
        # P(|T| > crit) for T ~ noncentral t(df, ncp), minus the wanted power.
        nonlocal draws
        value = float(nct.sf(crit, df, ncp) + nct.cdf(-crit, df, ncp))
        if not math.isfinite(value):
            # scipy's noncentral t fails for 1-2 df at large ncp: the same probability by fixed draws
            # (a deterministic generator, so the answer is reproducible).
            if draws is None:
                g = np.random.default_rng(0)
                draws = (g.standard_normal(200_000), np.sqrt(g.chisquare(df, 200_000) / df))
            value = float(np.mean(np.abs((draws[0] + ncp) / draws[1]) > crit))
        return value - power

    hi = 1.0
    while shortfall(hi) < 0:  # power rises with ncp: bracket the root
        hi *= 2
    return float(brentq(shortfall, 0.0, hi, xtol=1e-10)) * se


@dataclass(frozen=True)
class EffectDifference:
    """(a1 − b1) − (a2 − b2): how much an effect changed between two designs, e.g. transfer without and
    with a defense. Built by `difference_of_effects`.

    difference  effect1 − effect2 (each: mean over students and questions, as `compare_arms`).
    ci          Welch t interval of the contrast of per-student means (unit: the student): with three
                students per arm a bootstrap CI is too narrow, and this one agrees with `p`.
    p           two-sided Welch t-test of the same contrast, Welch-Satterthwaite df; None (and a nan
                CI) with fewer than 2 students in an arm or no spread between students.
    n_seeds     students in (a1, b1, a2, b2).
    """

    difference: float
    ci: tuple[float, float]
    p: float | None
    n_seeds: tuple[int, int, int, int]
    level: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = [None if not math.isfinite(x) else x for x in self.ci]
        out["n_seeds"] = list(self.n_seeds)
        return out


def difference_of_effects(a1: Any, b1: Any, a2: Any, b2: Any, *, level: float = 0.95) -> EffectDifference:
    """Compare the effect a1 − b1 (e.g. trait students vs control students, no defense) with the effect
    a2 − b2 (the same arms trained on defended data): the reduction a defense buys, with its CI and a
    seed-level p.

        red = difference_of_effects(owl, ctrl, owl_defended, ctrl_defended)
        print(red.difference, red.ci, red.p)

    Each argument is a (students x questions) array, the same questions in the same columns (question
    effects cancel in the contrast; the students are the unit)."""
    mats = [_as_matrix(x, name) for x, name in ((a1, "a1"), (b1, "b1"), (a2, "a2"), (b2, "b2"))]
    if len({m.shape[1] for m in mats}) != 1:
        raise ValueError("all four arms must answer the same questions (columns)")
    signs = (1.0, -1.0, -1.0, 1.0)
    diff = float(sum(s * m.mean() for s, m in zip(signs, mats, strict=True)))
    means = [m.mean(axis=1) for m in mats]
    p: float | None = None
    ci = (float("nan"), float("nan"))
    if all(x.size >= 2 for x in means):
        from scipy.stats import t

        parts = [float(x.var(ddof=1)) / x.size for x in means]
        se2 = sum(parts)
        if se2 > 0:
            df = se2 ** 2 / sum(v ** 2 / (x.size - 1) for v, x in zip(parts, means, strict=True))
            p = float(2 * t.sf(abs(diff) / math.sqrt(se2), df))
            half = float(t.ppf(1 - (1 - level) / 2, df)) * math.sqrt(se2)
            ci = (diff - half, diff + half)
    n_seeds = (mats[0].shape[0], mats[1].shape[0], mats[2].shape[0], mats[3].shape[0])
    return EffectDifference(diff, ci, p, n_seeds, level)
