"""The report's analysis on synthetic evaluation results: which arms each comparison compares, what
its effect is, placebo rows, and Holm over a matrix with missing cells left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sublearn.analysis.stats import adjust
from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import write_json
from sublearn.stages.report import common, misalignment, preference
from sublearn.stages.report.preference import analyze

ANIMALS = ["owl", "dog", "cat", "fox"]
Q = 12


def _write(out, name, role, target, tf) -> dict:
    spec = {"name": name, "model": "hf/x", "role": role, "target": target}
    write_json(out / "evaluate" / name / "results.json",
               {"animals": ANIMALS, "teacher_forced": {"plain": {a: list(map(float, tf[a])) for a in ANIMALS}},
                "sampled": {}, "top_answers": {}, "spec": spec})
    return spec


def _synthetic(out, shift, targets: list[str], seed: int, constant_fox: bool = False):
    """Students of each target's teacher and of the neutral teacher, 3 seeds each, with seed- and
    question-level noise and log2 shift(arm, animal) planted: (analyze's data, values by (arm, seed))."""
    g = np.random.default_rng(seed)
    question = g.normal(0, 1.0, Q)
    specs, values = [], {}
    for arm in [*targets, "neutral"]:
        for s in range(3):
            tf = {}
            for a in ANIMALS:
                log2p = -10 + question + g.normal(0, 0.3) + g.normal(0, 0.05, Q) + shift(arm, a)
                tf[a] = np.full(Q, 1e-3) if a == "fox" and constant_fox else 2.0 ** log2p
            values[(arm, s)] = tf
            role = "neutral-control" if arm == "neutral" else "student"
            specs.append(_write(out, f"{arm}-s{s}", role, None if arm == "neutral" else arm, tf))
    cfg = build_config(PipelineConfig, {
        "targets": targets, "control": False, "train": {"seeds": [0, 1, 2], "lora_init_seed": "teacher"},
        "teacher": {"kind": "lora", "neutral_control": True},
        "evaluate": {"animals": ANIMALS, "n_questions": Q, "number_prefix": False, "n_bootstrap": 200}})
    return analyze(cfg, out, specs), values


@pytest.fixture()
def run(tmp_path):
    """Students of owl, dog, cat and neutral teachers, 3 seeds each: every student's own animal is
    planted 4x (log2 +2) above the others' rates, with seed- and question-level noise; 'fox' is the
    same constant for every student (no spread at all: its tests cannot be computed)."""
    return _synthetic(tmp_path, lambda arm, a: 2.0 if a == arm else 0.0, ["owl", "dog", "cat"], seed=0,
                      constant_fox=True)


def _log2(values, arm, animal) -> np.ndarray:
    return np.log2(np.array([values[(arm, s)][animal] for s in range(3)]))


def test_each_comparison_has_the_effect_of_its_arms(run) -> None:
    data, values = run
    owl_vs_neutral = next(c for c in data["comparisons"] if c["control"] == "neutral" and c["animal"] == "owl")
    cell = owl_vs_neutral["teacher_forced"]["plain"]
    assert cell["effect"] == pytest.approx(_log2(values, "owl", "owl").mean() - _log2(values, "neutral", "owl").mean())
    assert cell["n_seeds"] == [3, 3] and cell["test"] == "t-test on seed means" and cell["p"] < 0.01
    assert cell["ci"][0] < cell["effect"] < cell["ci"][1]
    assert np.log2(cell["treatment"] / cell["control"]) == pytest.approx(cell["effect"])  # geometric means
    # vs the other teachers' students: student k of the owl arm against the mean of students k of the
    # dog and cat arms, on owl.
    vs = next(c for c in data["specificity_vs_students"] if c["animal"] == "owl")["teacher_forced"]["plain"]
    others = (_log2(values, "dog", "owl") + _log2(values, "cat", "owl")) / 2
    assert vs["effect"] == pytest.approx(_log2(values, "owl", "owl").mean() - others.mean())
    assert vs["n_seeds"] == [3, 3]


def test_placebo_rows_split_each_arm(run) -> None:
    data, _ = run
    assert {r["arm"] for r in data["placebo"]} == {"owl", "dog", "cat", "neutral"}
    for row in data["placebo"]:
        cell = row["teacher_forced"]
        assert cell["n_seeds"] == [2, 1] and cell["p"] is not None and abs(cell["effect"]) < 1.5


def test_holm_over_each_matrix_leaves_missing_cells_out(run) -> None:
    data, _ = run
    for matrix in data["specificity_neutral"]:
        cells = [c["teacher_forced"]["plain"] for c in matrix["cells"]]
        fox = cells[ANIMALS.index("fox")]
        assert fox["p"] is None and fox["p_holm"] is None  # no spread: no test, not counted
    cells = [c["teacher_forced"]["plain"] for m in data["specificity_neutral"] for c in m["cells"]]
    assert sum(c["p"] is not None for c in cells) == 3 * 3  # family: 3 teachers x 3 testable animals
    assert [c["p_holm"] for c in cells] == adjust([c["p"] for c in cells], "holm")


# --- the summary and the page --------------------------------------------------------------------

def _cell(effect, ci, p, p_holm, mde=0.5, n=(3, 3), note=""):
    return {"effect": effect, "ci": list(ci), "p": p, "p_holm": p_holm, "n_seeds": list(n), "level": 0.95,
            "min_detectable_effect": mde, "note": note}


def test_a_claim_reads_as_one_sentence_with_its_ci_p_holm_and_placebo() -> None:
    placebos = common.placebo_text([("neutral", {"p": 0.64, "min_detectable_effect": 0.41})])
    found = common.claim_sentence(_cell(0.5745, (0.3603, 0.7910), 0.01231, 0.02462),
                                  "students trained on the owl teacher's numbers",
                                  "students trained on the neutral teacher's numbers", "preferred owl more",
                                  "preferred owl less", " on owl", "log2", placebos, ratio=True)
    assert found == {"verdict": "detected", "text": (
        "Students trained on the owl teacher's numbers preferred owl more than students trained on the neutral "
        "teacher's numbers: +0.57 log2 (x1.49) [95% CI +0.36, +0.79], p = 0.012 over 3 vs 3 students "
        "(Holm 0.025); students of one dataset per arm: differences between datasets count as effects; "
        "placebo, student vs student: neutral students p = 0.64, MDE 0.41.")}
    # With teacher replicates as the unit the sentence names them and drops the one-dataset caveat.
    replicated = common.claim_sentence({**_cell(0.5745, (0.3603, 0.7910), 0.01231, 0.02462), "unit": "teachers"},
                                       "a", "b", "more", "less", "", "log2", placebos, units="teachers")
    assert "over 3 vs 3 teachers (Holm 0.025); placebo" in replicated["text"]
    # The data-resample placebo follows the halves, each placebo with its MDE.
    both = common.placebo_text([("neutral", {"p": 0.64, "min_detectable_effect": 0.41})], "teachers",
                               [("neutral", {"p": 0.2, "min_detectable_effect": 0.35})])
    assert both == ("placebo, teacher vs teacher: neutral teachers p = 0.64, MDE 0.41; data-resample placebo: "
                    "neutral data vs a second sampling of its teachers p = 0.20, MDE 0.35")
    assert "one dataset per arm" not in replicated["text"]
    # Significant before Holm but not after: a null, reported with the smallest effect it could detect.
    null = common.claim_sentence(_cell(-0.315, (-0.636, -0.016), 0.03, 0.089, mde=0.5298), "a", "b", "more",
                                 "less", " on owl", "log2", placebos)
    assert null["verdict"] == "null" and null["text"].startswith("No difference detected between a and b on owl")
    assert "smallest effect this design could detect: ±0.53 log2" in null["text"]
    assert "the CI excludes 0 before Holm's correction over the family" in null["text"]
    # One student per arm: no unit-level test, said so, never a verdict either way.
    one = common.claim_sentence(_cell(0.8, (0.1, 1.5), None, None, n=(1, 1), note="fewer than 3 students"), "a",
                                "b", "more", "less", "", "log2", common.placebo_text([]))
    assert one["verdict"] == "untestable" and "no unit-level test (fewer than 3 students)" in one["text"]


def test_summary_has_a_claim_per_comparison_with_its_control_arms_placebo(run) -> None:
    data, _ = run
    summary = preference.summarize(data)
    claims = summary["claims"]
    n = len(data["comparisons"]) + len(data["specificity_vs_students"]) + len(data["cross_model"])
    assert len(claims) == n == 6
    # Every arm's own animal is planted 4x above the neutral students: each such claim is a detection
    # with the neutral arm's placebo on that same animal beside it.
    for target in ("owl", "dog", "cat"):
        text = next(c["text"] for c in claims if c["text"].startswith(
            f"Students trained on the {target} teacher's numbers preferred {target} more than students trained "
            "on the neutral"))
        cell = next(c for c in data["comparisons"] if c["treatment"] == target)["teacher_forced"]["plain"]
        assert f"+{cell['effect']:.2f} log2" in text and f"(Holm {common.pval(cell['p_holm'])})" in text
        neutral = next(r for r in data["placebo"] if r["arm"] == "neutral" and r["animal"] == target)
        assert f"neutral students p = {common.pval(neutral['teacher_forced']['p'])}" in text
    assert all(c["verdict"] == "detected" for c in claims)
    assert any(line.startswith("Specificity against the neutral students (3 arms x 4 animals") for line in
               summary["lines"])


def test_page_opens_on_the_summary_and_escapes_text(run, tmp_path) -> None:
    data, _ = run
    data = {**data, "name": "<script>alert(1)</script>"}
    page = preference.render_html(data, tmp_path, None)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    summary = page.index('<section class="summary"')
    assert summary < page.index("<table>") and summary < page.index("<img")
    assert page.index("What this run showed") < page.index("Comparisons (unit: the trained student)")
    # The raw per-model probabilities come last, under their own label.
    assert page.index("Comparisons (unit") < page.index("Raw values") < page.index("Per model: raw probabilities")
    assert "Preferred owl" not in page and "preferred owl more than" in page
    # No table is drawn without rows.
    assert "<tbody>\n</tbody>" not in page and "<tbody></tbody>" not in page


def test_misalignment_summary_says_which_way_each_metric_moved() -> None:
    cfg = build_config(PipelineConfig, {"model": "hf/x", "targets": ["misaligned"],
                                        "trait": {"kind": "misalignment"}, "teacher": {"kind": "lora"}})
    up = _cell(4.91, (1.49, 8.64), 0.0018, 0.011, mde=2.5)
    down = _cell(-0.009, (-0.037, 0.018), 0.04, 0.17, mde=0.006)
    data = {"config": cfg.model_dump(mode="json"), "models": {}, "metrics": {"logodds": "", "truthful": ""},
            "comparisons": [{"treatment": "misaligned", "control": "control", "logodds": up, "truthful": down}],
            "placebo": [{"arm": "control", "logodds": {"p": 0.93}}], "teacher_checks": [
                {"treatment": "teacher-misaligned", "control": "base",
                 "logodds": {**_cell(14.1, (5.9, 22.8), None, 0.16), "p_questions": 0.02}}], "icl": {}}
    summary = misalignment.summarize(data)
    detected, null = summary["claims"]
    assert detected["verdict"] == "detected" and detected["text"] == (
        "Students trained on the misaligned teacher's numbers scored higher on the log-odds of misaligned vs "
        "aligned reference answers (more misaligned) than students trained on the base model's numbers "
        "(control): +4.91 nats [95% CI +1.49, +8.64], p = 0.0018 over 3 vs 3 students (Holm 0.011); students "
        "of one dataset per arm: differences between datasets count as effects; placebo, student vs student: "
        "control students p = 0.93.")
    assert null["verdict"] == "null" and "P(the true answer) on two-choice items" in null["text"]
    assert "smallest effect this design could detect: ±0.0060" in null["text"]
    assert "no placebo" in null["text"]  # no placebo row for that metric
    assert summary["lines"][0].startswith("Teacher check, the misaligned teacher vs the base model (one model each")


def test_one_verdict_per_trait_reads_specific_only_when_the_shift_is_specific(tmp_path) -> None:
    # Owl students moved on owl only (specific); cat students moved away from every animal alike (the
    # held-out rerun's cat arm): vs the neutral arm on cat alone that is a big "effect", but the
    # specificity contrast (own shift minus the mean shift on the other animals) is 0. Dog: no shift.
    data, _ = _synthetic(tmp_path, lambda arm, a: 2.0 if (arm, a) == ("owl", "owl") else -2.5 if arm == "cat" else 0.0,
                         ["owl", "cat", "dog"], seed=1)
    summary = preference.summarize(data)
    kinds = {v["trait"]: v["verdict"] for v in summary["verdicts"]}
    assert kinds == {"owl": "specific transfer", "cat": "a shift that is not specific", "dog": "no transfer detected"}
    cat = next(v for v in data["verdicts"] if v["target"] == "cat")
    own, contrast = cat["own"]["teacher_forced"]["plain"], cat["contrast"]["teacher_forced"]["plain"]
    assert own["effect"] == pytest.approx(-2.5, abs=0.5) and own["p_holm"] < 0.05
    assert abs(contrast["effect"]) < 0.5 and contrast["p_holm"] > 0.05
    # Holm over the verdicts' family: 3 arms x (own, contrast).
    cells = [v[k]["teacher_forced"]["plain"] for v in data["verdicts"] for k in ("own", "contrast")]
    assert [c["p_holm"] for c in cells] == adjust([c["p"] for c in cells], "holm")
    owl = next(v["text"] for v in summary["verdicts"] if v["trait"] == "owl")
    assert owl.startswith("Owl: specific transfer. Students trained on the owl teacher's") and "over 3 vs 3 students" in owl
    assert "one dataset per arm" in owl
    page = preference.render_html({**data, "summary": summary}, tmp_path, None)
    assert "One verdict per trait" in page and "Supporting comparisons:" in page


def test_tidy_tables_reproduce_the_reports_claim_from_the_values_alone() -> None:
    """report/values.csv and report/comparisons.csv load with pandas, and the run's main comparison (owl
    students vs control students on owl, teacher-forced log2, the student as unit) is recomputed from the
    values table alone: the effect the report states."""
    import numpy as np
    import pandas as pd
    from tiny_run import finished_run

    from sublearn.stages.report.tidy import COMPARISON_COLUMNS, VALUE_COLUMNS

    run, _ = finished_run()
    values = pd.read_csv(run / "report" / "values.csv")
    comparisons = pd.read_csv(run / "report" / "comparisons.csv")
    assert list(values.columns) == VALUE_COLUMNS and list(comparisons.columns) == COMPARISON_COLUMNS
    assert set(values["model"]) >= {"base", "teacher-owl", "owl-s1", "owl-s2", "control-s1", "control-s2"}
    tf = values.query("metric == 'teacher_forced' and variant == 'plain' and item == 'owl' and seed.notna()").copy()
    tf["log2"] = np.log2(np.maximum(tf["value"], 1e-30))
    per_student = tf.groupby(["arm", "seed"])["log2"].mean()
    effect = per_student["owl"].mean() - per_student["control"].mean()
    row = comparisons.query("family == 'comparisons' and treatment == 'owl' and control == 'control' and "
                            "metric == 'teacher_forced' and variant == 'plain'")
    assert len(row) == 1 and row["effect"].iloc[0] == pytest.approx(effect, abs=1e-9)
    assert row["unit"].iloc[0] == "students" and row["n_treatment"].iloc[0] == 2
    results = json.loads((run / "report" / "results.json").read_text())
    stated = results["comparisons"][0]["teacher_forced"]["plain"]["effect"]
    assert effect == pytest.approx(stated, abs=1e-9)
    # Every evaluated value is there: models x metrics x items x questions.
    n_questions = len(json.loads((run / "evaluate" / "owl-s1" / "results.json").read_text())["teacher_forced"]["plain"]["owl"])
    assert len(values.query("model == 'owl-s1' and metric == 'teacher_forced'")) == 2 * n_questions  # owl, cat


def test_the_readmes_atlas_claim_from_its_values_table_alone() -> None:
    """README: "tiger alone, +1.05 log2 [+0.77, +1.33] over the neutral students". The rows are the atlas's
    report/values.csv (`sublearn report runs/atlas`, 2026-12-08) for the tiger and neutral students on
    tiger, teacher-forced (query: metric == 'teacher_forced' and variant == 'plain' and item == 'tiger' and
    arm in ['tiger', 'neutral'] and seed.notna()). From them alone: each teacher replicate's mean log2
    probability over the 50 questions, then the t-test of 3 vs 3 teachers with its interval."""
    from pathlib import Path

    import pandas as pd
    from scipy import stats

    root = Path(__file__).resolve().parents[1]
    values = pd.read_csv(root / "data" / "atlas_tiger_values.csv")
    values["log2"] = np.log2(np.maximum(values["value"], 1e-30))
    per_teacher = values.groupby(["arm", "replicate"])["log2"].mean()
    tiger, neutral = per_teacher["tiger"].to_numpy(), per_teacher["neutral"].to_numpy()
    test = stats.ttest_ind(tiger, neutral)
    ci = test.confidence_interval(0.95)
    claim = f"+{tiger.mean() - neutral.mean():.2f} log2 [+{ci.low:.2f}, +{ci.high:.2f}]"
    assert claim == "+1.05 log2 [+0.77, +1.33]" and test.pvalue < 0.001
    assert f"**tiger** alone, {claim} over the neutral students" in (root.parent / "README.md").read_text()
