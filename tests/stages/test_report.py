"""The report's analysis on synthetic evaluation results: which arms each comparison compares, what
its effect is, placebo rows, and Holm over a matrix with missing cells left out."""

from __future__ import annotations

import numpy as np
import pytest

from sublearn.analysis.stats import adjust
from sublearn.config import build_config
from sublearn.rundir import write_json
from sublearn.stages.config import PipelineConfig
from sublearn.stages.report import analyze

ANIMALS = ["owl", "dog", "cat", "fox"]
Q = 12


def _write(out, name, role, target, tf) -> dict:
    spec = {"name": name, "model": "hf/x", "role": role, "target": target}
    write_json(out / "evaluate" / name / "results.json",
               {"animals": ANIMALS, "teacher_forced": {"plain": {a: list(map(float, tf[a])) for a in ANIMALS}},
                "sampled": {}, "top_answers": {}, "spec": spec})
    return spec


@pytest.fixture()
def run(tmp_path):
    """Students of owl, dog, cat and neutral teachers, 3 seeds each: every student's own animal is
    planted 4x (log2 +2) above the others' rates, with seed- and question-level noise; 'fox' is the
    same constant for every student (no spread at all: its tests cannot be computed)."""
    g = np.random.default_rng(0)
    question = g.normal(0, 1.0, Q)
    specs, values = [], {}
    for arm in ["owl", "dog", "cat", "neutral"]:
        for seed in range(3):
            tf = {}
            for a in ANIMALS:
                log2p = -10 + question + g.normal(0, 0.3) + g.normal(0, 0.05, Q) + (2.0 if a == arm else 0.0)
                tf[a] = 2.0 ** log2p if a != "fox" else np.full(Q, 1e-3)
            values[(arm, seed)] = tf
            role = "neutral-control" if arm == "neutral" else "student"
            specs.append(_write(tmp_path, f"{arm}-s{seed}", role, None if arm == "neutral" else arm, tf))
    cfg = build_config(PipelineConfig, {
        "targets": ["owl", "dog", "cat"], "control": False, "train": {"seeds": [0, 1, 2], "lora_init_seed": "teacher"},
        "teacher": {"kind": "lora", "neutral_control": True},
        "evaluate": {"animals": ANIMALS, "n_questions": Q, "number_prefix": False, "n_bootstrap": 200}})
    return analyze(cfg, tmp_path, specs), values


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
