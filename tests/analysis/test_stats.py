"""Confidence intervals and tests on distributions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control, ttest_ind, ttest_rel

from sublearn.analysis.stats import (
    TEST_MIXED,
    TEST_PERMUTATION,
    TEST_T,
    adjust,
    bootstrap_ci,
    compare_arms,
    fisher_exact_p,
    mean_ci95,
    min_detectable_effect,
    nested_compare,
    paired_permutation_p,
    placebo,
    replicate_means,
    t_interval,
)


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


# --- statistics whose unit is the trained student ----------------------------------------------------
#
# Synthetic experiments with the structure of the real ones: every student answers the same Q questions;
# values[s, q] = question effect (shared by both arms, large) + student (seed) effect + small
# seed x question noise (+ a planted arm effect). These tests are the specification of the analysis.

Q = 50
QUESTION_SD, SEED_SD, NOISE_SD = 1.0, 0.3, 0.05
REPS = 400


def simulate(rng: np.random.Generator, n_a: int, n_b: int, effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One experiment: (seeds x questions) arrays for arms a and b, arm a shifted by `effect`."""
    question = rng.normal(scale=QUESTION_SD, size=Q)

    def arm(n: int) -> np.ndarray:
        seed = rng.normal(scale=SEED_SD, size=(n, 1))
        return question + seed + rng.normal(scale=NOISE_SD, size=(n, Q))

    return arm(n_a) + effect, arm(n_b)


def binomial_band(p: float, n: int = REPS, coverage: float = 0.999) -> tuple[float, float]:
    """Range of a rejection fraction over n independent repetitions when the true rate is p."""
    from scipy.stats import binom

    lo, hi = binom.interval(coverage, n, p)
    return lo / n, hi / n


@pytest.mark.parametrize(("seeds", "test"), [(4, TEST_T), (7, TEST_PERMUTATION)])
def test_compare_arms_is_calibrated_under_seed_noise(seeds: int, test: str) -> None:
    # No arm effect, but students differ (seed sd 0.3). A test whose unit is the student rejects at
    # 5%; the old test (seed-averaged per-question values, permuted over questions) mistakes the
    # seed-level offset for an arm effect nearly always. 4 seeds per arm: C(8,4) = 70 relabelings ->
    # t-test; 7 per arm: C(14,7) = 3432 -> exact permutation over students.
    rng = np.random.default_rng(10 + seeds)
    new, old, question_level = [], [], []
    for _ in range(REPS):
        a, b = simulate(rng, seeds, seeds)
        cmp = compare_arms(a, b, rng)
        assert cmp.test == test and cmp.p is not None
        new.append(cmp.p < 0.05)
        old.append(paired_permutation_p(a.mean(axis=0), b.mean(axis=0), rng, n_perm=200) < 0.05)
        question_level.append(cmp.p_questions is not None and cmp.p_questions < 0.05)
    lo, hi = binomial_band(0.05)  # about [0.02, 0.09]
    print(f"\n{seeds} vs {seeds} students, no effect, {REPS} repetitions: p < 0.05 in {np.mean(new):.1%} "
          f"({cmp.test}); the old question-level test {np.mean(old):.1%}")
    assert lo <= np.mean(new) <= hi, np.mean(new)
    assert np.mean(old) > 0.5, np.mean(old)  # why the question-level test was replaced
    assert np.mean(question_level) > 0.5  # p_questions says nothing about training


@pytest.mark.parametrize("seeds", [4, 7])
def test_compare_arms_detects_a_planted_effect(seeds: int) -> None:
    rng = np.random.default_rng(20 + seeds)
    rejected = 0
    for _ in range(REPS // 2):
        a, b = simulate(rng, seeds, seeds, effect=3 * SEED_SD)
        cmp = compare_arms(a, b, rng)
        assert cmp.p is not None
        rejected += cmp.p < 0.05
    print(f"\n{seeds} vs {seeds} students, effect 3 student-sds: power {rejected / (REPS // 2):.1%}")
    assert rejected / (REPS // 2) > 0.8


@pytest.mark.parametrize("seeds", [3, 4, 7])
def test_the_ci_belongs_to_the_test_and_covers(seeds: int) -> None:
    # The CI is the interval of the test beside it (t-interval on student means with 3 or 4 per arm,
    # the inverted exact permutation test with 7): it excludes 0 exactly when p < 0.05, and it covers
    # the true effect at the nominal rate at the designs we ship (the old hierarchical bootstrap
    # covered 81% at 3 vs 3 and 88% at 4 vs 4).
    rng = np.random.default_rng(30 + seeds)
    effect = 2 * SEED_SD
    covered = agree = 0
    reps = REPS if seeds < 7 else REPS // 2
    for _ in range(reps):
        a, b = simulate(rng, seeds, seeds, effect=effect)
        cmp = compare_arms(a, b, rng)
        assert cmp.p is not None and cmp.ci[0] <= cmp.effect <= cmp.ci[1]
        covered += cmp.ci[0] <= effect <= cmp.ci[1]
        agree += (cmp.p < 0.05) == (not cmp.ci[0] <= 0 <= cmp.ci[1])
    lo, hi = binomial_band(0.95, reps)
    print(f"\n{seeds} vs {seeds} students ({cmp.test}): 95% CI covers the true effect in {covered / reps:.1%}")
    assert agree == reps
    assert lo <= covered / reps <= hi and covered / reps >= 0.93 - 0.02, covered / reps


def test_placebo_halves_of_one_arm_are_calibrated() -> None:
    # Two halves of one arm of 8 students (4 vs 4) are students trained identically.
    rng = np.random.default_rng(4)
    ps = []
    for _ in range(REPS):
        arm, _ = simulate(rng, 8, 0)
        check = placebo(arm, rng)
        assert check is not None and check.n_seeds == (4, 4) and check.p is not None
        ps.append(check.p)
    lo, hi = binomial_band(0.05)
    assert lo <= np.mean(np.array(ps) < 0.05) <= hi


def test_placebo_small_arms() -> None:
    rng = np.random.default_rng(5)
    a, _ = simulate(rng, 3, 0)
    assert placebo(a[:1], rng) is None
    two = placebo(a[:2], rng)
    assert two is not None and two.p is None and two.n_seeds == (1, 1) and "one unit" in two.note
    three = placebo(a, rng)
    assert three is not None and three.n_seeds == (2, 1) and three.p is not None


def test_compare_arms_exact_values() -> None:
    rng = np.random.default_rng(6)
    a, b = simulate(rng, 3, 5, effect=0.5)
    cmp = compare_arms(a, b, rng)
    assert cmp.effect == pytest.approx(np.mean(a.mean(axis=0) - b.mean(axis=0)))
    # The CI is ttest_ind's own confidence interval (pooled variance).
    assert cmp.ci == pytest.approx(tuple(ttest_ind(a.mean(axis=1), b.mean(axis=1)).confidence_interval(0.95)))
    assert cmp.n_seeds == (3, 5) and cmp.n_questions == Q and cmp.test == TEST_T
    assert cmp.p == pytest.approx(ttest_ind(a.mean(axis=1), b.mean(axis=1)).pvalue)
    assert cmp.p_questions == pytest.approx(ttest_rel(a.mean(axis=0), b.mean(axis=0)).pvalue)
    # Perfectly separated students, 7 vs 7: the exact permutation p is 2 / C(14, 7) (two-sided).
    ones = np.ones((7, 4))
    sep = compare_arms(ones * np.arange(10, 17)[:, None], ones * np.arange(7)[:, None], rng)
    assert sep.test == TEST_PERMUTATION and sep.p == pytest.approx(2 / 3432)
    # Its CI: the shifts of arm a that the same permutation test does not reject, around the effect 10.
    assert sep.ci[0] < 10 < sep.ci[1] and sep.ci[0] > 0
    for shift, rejected in ((sep.ci[0] - 0.01, True), (sep.ci[0] + 0.01, False), (sep.ci[1] + 0.01, True)):
        shifted = compare_arms(ones * (np.arange(10, 17)[:, None] - shift), ones * np.arange(7)[:, None], rng)
        assert (shifted.p is not None and shifted.p < 0.05) == rejected, shift
    # 10 vs 10: C(20, 10) = 184756 relabelings -> Monte Carlo with the +1 correction.
    ones = np.ones((10, 4))
    mc = compare_arms(ones * np.arange(10, 20)[:, None], ones * np.arange(10)[:, None], rng, n_perm=999)
    assert mc.test == TEST_PERMUTATION and mc.p is not None and 1 / 1000 <= mc.p <= 3 / 1000
    assert mc.ci[0] < mc.effect < mc.ci[1] and mc.ci[0] > 0 and mc.as_dict()["unit"] == "students"


def test_compare_arms_degenerate_designs() -> None:
    rng = np.random.default_rng(7)
    a, b = simulate(rng, 1, 1)
    one_each = compare_arms(a, b, rng)
    assert one_each.p is None and one_each.test is None and np.isfinite(one_each.effect)
    # With one student per arm there is no test, so there is no interval either (no resampling stands in).
    assert one_each.as_dict()["ci"] == [None, None] and "one unit per arm" in one_each.note
    empty = compare_arms(np.empty((0, Q)), b, rng)
    assert empty.p is None and "no units" in empty.note
    flat = compare_arms(np.ones((3, Q)), np.zeros((3, Q)), rng)
    assert flat.p is None and "pooled variance 0" in flat.note and flat.effect == 1.0
    with pytest.raises(ValueError, match="same questions"):
        compare_arms(np.ones((2, 3)), np.ones((2, 4)), rng)
    with pytest.raises(ValueError, match="2-D"):
        compare_arms(np.ones(3), np.ones((2, 3)), rng)


def test_adjust() -> None:
    # Holm by hand, m = 4 (the None is not in the family): sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1
    # = 0.04, 0.06, 0.06, 0.04 -> running max 0.04, 0.06, 0.06, 0.06.
    raw = [0.03, None, 0.01, 0.04, 0.02]
    assert adjust(raw) == pytest.approx([0.06, None, 0.04, 0.06, 0.06])
    assert adjust(raw)[1] is None
    assert adjust([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert adjust([None, float("nan")]) == [None, None] and adjust([]) == []
    present = [p for p in raw if p is not None]
    bh = adjust(raw, method="bh")
    assert bh[1] is None
    assert [p for p in bh if p is not None] == pytest.approx(false_discovery_control(present, method="bh"))
    with pytest.raises(ValueError):
        adjust([0.1], method="bonferroni")


def test_t_interval() -> None:
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0])
    # t_{0.975, 3} = 3.182446; sd = 1.290994; n = 4
    assert mean == 2.5 and half == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)
    assert half > mean_ci95([1.0, 2.0, 3.0, 4.0])[1]
    assert t_interval([5.0])[0] == 5.0 and np.isnan(t_interval([5.0])[1])


def unit_sd_seed_means(n: int, sd: float) -> np.ndarray:
    """(n x 1) array whose column has sample sd exactly `sd`."""
    z = np.linspace(-1, 1, n)
    return (z / z.std(ddof=1) * sd)[:, None]


def test_min_detectable_effect() -> None:
    # Textbook value: with 64 per group, a standardized effect of 0.5 has power 0.80 (Cohen).
    big = unit_sd_seed_means(64, 1.0)
    assert min_detectable_effect(big, big) == pytest.approx(0.5, abs=0.005)
    # Simulate the design at its MDE: the seed-level test should reject about 80% of the time.
    sd = float(np.hypot(SEED_SD, NOISE_SD / np.sqrt(Q)))  # sd of a student's mean over questions
    pilot = unit_sd_seed_means(4, sd)
    mde = min_detectable_effect(pilot, pilot)
    assert mde is not None
    rng = np.random.default_rng(8)
    rejected = 0
    for _ in range(REPS):
        a, b = simulate(rng, 4, 4, effect=mde)
        cmp = compare_arms(a, b, rng)
        assert cmp.p is not None
        rejected += cmp.p < 0.05
    assert 0.7 <= rejected / REPS <= 0.9, rejected / REPS
    assert min_detectable_effect(np.ones((1, 3)), np.ones((1, 3))) is None
    assert min_detectable_effect(np.ones((3, 3)), np.ones((3, 3))) is None


def test_difference_of_effects_finds_a_real_reduction_and_not_a_placebo_one() -> None:
    from sublearn.analysis.stats import difference_of_effects

    gen = np.random.default_rng(7)

    def arm(shift: float, n: int = 4) -> np.ndarray:
        # Students differ by a seed offset (sd 0.1) on top of question effects shared by all arms.
        return shift + gen.normal(0, 0.1, size=(n, 1)) + np.linspace(-1, 1, 30)[None, :] + gen.normal(0, 0.05, (n, 30))

    real = difference_of_effects(arm(1.0), arm(0.0), arm(0.1), arm(0.0))
    assert real.ci[0] < 0.9 < real.ci[1] and real.ci[0] > 0.3 and real.p is not None and real.p < 0.01
    # Calibrated: with no change in the effect, p < 0.05 (and a CI without 0) about one time in 20.
    nulls = [difference_of_effects(arm(1.0), arm(0.0), arm(1.0), arm(0.0)) for _ in range(300)]
    rate = np.mean([r.p < 0.05 for r in nulls if r.p is not None])
    assert 0.02 <= rate <= 0.09
    assert all((r.p < 0.05) == (not r.ci[0] <= 0 <= r.ci[1]) for r in nulls if r.p is not None)
    assert nulls[0].n_seeds == (4, 4, 4, 4)
    with pytest.raises(ValueError, match="same questions"):
        difference_of_effects(arm(1.0), arm(0.0), arm(1.0)[:, :5], arm(0.0))


# Nested designs, the structure of every run: an arm is a teacher (its training run and its sampled
# dataset) and the students trained on that dataset. values[s, q] = question effect + TEACHER offset
# (shared by that teacher's students) + student offset + noise (+ a planted arm effect). A claim about
# the teacher's trait must count the teacher offset as noise. Issue 21's simulation: teacher sd 0.2
# log2, student sd 0.1.
TEACHER_SD, STUDENT_SD = 0.2, 0.1
NESTED_REPS = 2000


def simulate_nested(rng: np.random.Generator, teachers: int, students: int,
                    effect: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One experiment: per arm, a list of (students x questions) arrays, one per teacher replicate."""
    question = rng.normal(scale=QUESTION_SD, size=Q)

    def arm() -> list[np.ndarray]:
        return [question + rng.normal(scale=TEACHER_SD) + rng.normal(scale=STUDENT_SD, size=(students, 1))
                + rng.normal(scale=NOISE_SD, size=(students, Q)) for _ in range(teachers)]

    a = arm()
    return [r + effect for r in a], arm()


def test_the_student_level_test_fails_when_teachers_differ() -> None:
    # One teacher per arm, 3 students each, no trait effect: the two teachers' datasets differ (sd 0.2)
    # and a test whose unit is the student calls that an effect about half the time, while its placebo
    # (halves of one arm's students, who share one dataset) stays at 5% and cannot warn. This is why
    # claims about a teacher need teacher replicates (and why one-teacher claims say so).
    rng = np.random.default_rng(40)
    rejected = placebo_rejected = 0
    for _ in range(NESTED_REPS // 4):
        (a,), (b,) = simulate_nested(rng, 1, 4)
        cmp = compare_arms(a[:3], b[:3], rng)
        check = placebo(a, rng)  # 4 students of one teacher: 2 vs 2
        assert cmp.p is not None and check is not None and check.p is not None
        rejected += cmp.p < 0.05
        placebo_rejected += check.p < 0.05
    n = NESTED_REPS // 4
    print(f"\n1 teacher x 3 students per arm, teacher sd {TEACHER_SD}, no effect: the student-level test rejects "
          f"in {rejected / n:.1%}, its placebo in {placebo_rejected / n:.1%}")
    assert rejected / n > 0.3
    lo, hi = binomial_band(0.05, n)
    assert lo <= placebo_rejected / n <= hi


@pytest.mark.parametrize(("teachers", "students"), [(3, 1), (3, 3), (4, 2)])
def test_the_replicate_level_test_is_calibrated_covers_and_has_power(teachers: int, students: int) -> None:
    # The designs we ship (3 teachers x 1 student per arm: the atlas and the replicated demo) and two
    # neighbours: the teacher replicate is the unit (its students averaged), t-test on replicate means.
    rng = np.random.default_rng(50 + 10 * teachers + students)
    false_pos = covered = 0
    for _ in range(NESTED_REPS):
        a, b = simulate_nested(rng, teachers, students)
        cmp = compare_arms(replicate_means(a), replicate_means(b), rng, unit="teachers")
        assert cmp.p is not None and cmp.n_seeds == (teachers, teachers) and cmp.unit == "teachers"
        false_pos += cmp.p < 0.05
        covered += cmp.ci[0] <= 0.0 <= cmp.ci[1]
    unit_sd = float(np.sqrt(TEACHER_SD ** 2 + STUDENT_SD ** 2 / students))
    effect = 4 * unit_sd
    power = 0
    for _ in range(NESTED_REPS // 4):
        a, b = simulate_nested(rng, teachers, students, effect=effect)
        cmp = compare_arms(replicate_means(a), replicate_means(b), rng, unit="teachers")
        power += cmp.p is not None and cmp.p < 0.05
    lo, hi = binomial_band(0.05, NESTED_REPS)
    print(f"\n{teachers} teachers x {students} students per arm: false positives {false_pos / NESTED_REPS:.1%}, "
          f"95% CI coverage {covered / NESTED_REPS:.1%}, power at {effect:.2f} log2 {power / (NESTED_REPS // 4):.1%}")
    assert lo <= false_pos / NESTED_REPS <= min(hi, 0.06 + 0.01)
    assert covered / NESTED_REPS >= 0.93
    assert power / (NESTED_REPS // 4) > 0.8


def test_replicate_means() -> None:
    r1, r2 = np.arange(6.0).reshape(2, 3), np.ones((1, 3))
    assert replicate_means([r1, r2]).tolist() == [[1.5, 2.5, 3.5], [1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="same questions"):
        replicate_means([r1, np.ones((1, 2))])
    with pytest.raises(ValueError, match="no students"):
        replicate_means([r1, np.ones((0, 3))])


def test_nested_compare_balanced_is_the_replicate_t_test() -> None:
    rng = np.random.default_rng(7)
    a, b = simulate_nested(rng, 3, 2)
    cmp = nested_compare(a, b, np.random.default_rng(0))
    ref = compare_arms(replicate_means(a), replicate_means(b), np.random.default_rng(0), unit="teachers")
    assert cmp == ref and cmp.test == TEST_T


def test_nested_compare_unbalanced_mixed_model_is_calibrated_and_covers() -> None:
    # Teachers with 1, 2, 3 students vs 3, 1, 2 (e.g. students that failed): the mixed model weights
    # teachers by their students; its t(teachers - 2) Wald test keeps the false-positive rate and covers.
    rng = np.random.default_rng(60)
    reps, false_pos, covered = 1000, 0, 0
    for _ in range(reps):
        a, b = simulate_nested(rng, 3, 3)
        a = [a[0][:1], a[1][:2], a[2]]
        b = [b[0], b[1][:1], b[2][:2]]
        cmp = nested_compare(a, b, rng)
        assert cmp.unit == "teachers" and cmp.n_seeds == (3, 3) and cmp.p is not None
        assert cmp.test == TEST_MIXED or "degenerate" in cmp.note
        false_pos += cmp.p < 0.05
        covered += cmp.ci[0] <= 0.0 <= cmp.ci[1]
        assert (cmp.p < 0.05) == (not cmp.ci[0] <= 0.0 <= cmp.ci[1])  # the CI belongs to the test
    print(f"\nunbalanced 3 vs 3 teachers (1/2/3 vs 3/1/2 students), no effect: mixed model false positives "
          f"{false_pos / reps:.1%}, 95% CI coverage {covered / reps:.1%}")
    assert false_pos / reps <= 0.07 and covered / reps >= 0.93
    # A planted effect of 4 teacher-level sds is found.
    found = 0
    for _ in range(100):
        a, b = simulate_nested(rng, 3, 3, effect=4 * TEACHER_SD)
        found += (nested_compare([a[0][:1], a[1][:2], a[2]], [b[0], b[1][:1], b[2][:2]], rng).p or 1) < 0.05
    assert found >= 60
