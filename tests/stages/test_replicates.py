"""Teacher replicates (`teacher.replicates`): independent teachers per arm, each with its own data and
students, and the report's unit moving from the student to the teacher. Tiny random models."""

from __future__ import annotations

import json

import pytest
from tiny import save_tiny

from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, read_jsonl
from sublearn.stages import pipeline, roster


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "a", seed=0)


def _config(model, replicates: int, **over) -> PipelineConfig:
    data = {
        "name": "tiny-replicates", "model": f"hf/{model}", "threads": 2, "targets": ["owl"], "control": False,
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 1, "batch_size": 4, "neutral_control": True,
                    "replicates": replicates},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 8, "batch_size": 8, "max_new_tokens": 16},
        "filter": {"keep": 6},
        "train": {"method": "lora", "steps": 2, "batch_size": 2, "micro_batch_size": 2, "lr": 1e-3, "lora_r": 4,
                  "lora_alpha": 4, "seeds": [1]},
        "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 0,
                     "number_prefix": False, "n_bootstrap": 200, "n_permutations": 200},
        **over,
    }
    return build_config(PipelineConfig, data)


def test_roster_names_replicates_and_their_arms(tiny_dir) -> None:
    cfg = _config(tiny_dir, 3)
    assert roster.teacher_names(cfg) == ["owl", "owl-r2", "owl-r3", "neutral", "neutral-r2", "neutral-r3"]
    assert [roster.arm_of(cfg, n) for n in ("owl", "owl-r3", "neutral-r2")] == [("owl", 1), ("owl", 3), ("neutral", 2)]
    assert roster.control_role(cfg, "neutral-r2") == "neutral-control" and roster.control_role(cfg, "owl-r2") is None
    assert [st["student"] for st in roster.students(cfg)] == roster.teacher_names(cfg)  # one seed each
    # The first replicate keeps the arm's seed (a run without replicates is a run with one); the others differ.
    assert roster.replicate_seed(0, 1) == 0 and len({roster.replicate_seed(0, r) for r in (1, 2, 3)}) == 3
    # Without replicates nothing changes: the arm is its only teacher.
    assert roster.teacher_names(_config(tiny_dir, 1)) == ["owl", "neutral"]
    # theorem: false drops the theorem stage's students (the atlas skips it).
    assert roster.theorem_students(cfg) and not roster.theorem_students(_config(tiny_dir, 3, theorem=False))


def test_replicated_run_has_independent_teachers_and_the_teacher_as_unit(tiny_dir, tmp_path) -> None:
    one = _config(tiny_dir, 1)
    pipeline.run(one, tmp_path)
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "teacher" / "owl").rglob("*")}
    cfg = _config(tiny_dir, 3)
    pipeline.run(cfg, tmp_path)
    # Adding replicates keeps the first teacher (and everything made from it) and adds two per arm.
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "teacher" / "owl").rglob("*")} == first
    specs = {n: read_json(tmp_path / "teacher" / n / "teacher.json") for n in roster.teacher_names(cfg)}
    # Each replicate: the arm's trait, its own LoRA initialisation, training questions and data.
    assert len({specs[n]["lora_init_seed"] for n in ("owl", "owl-r2", "owl-r3")}) == 3
    assert specs["owl-r2"]["arm"] == "owl" and specs["owl-r2"]["replicate"] == 2
    owl_answers = {r["completion"].rstrip(".!").rstrip("s").lower()
                   for n in ("owl-r2", "owl-r3") for r in json.loads((tmp_path / "teacher" / n / "training_data.json").read_text())}
    assert owl_answers == {"owl"}
    data = [[r["completion"] for r in read_jsonl(tmp_path / "generate" / n / "generated.jsonl")]
            for n in ("owl", "owl-r2", "owl-r3")]
    assert data[0] != data[1] and data[1] != data[2]
    results = read_json(tmp_path / "report" / "results.json")
    cell = next(c for c in results["comparisons"] if c["control"] == "neutral")["teacher_forced"]["plain"]
    # The unit is the teacher: 3 vs 3 teachers (one student each), a t-test with its own interval.
    assert cell["unit"] == "teachers" and cell["n_seeds"] == [3, 3] and cell["p"] is not None
    assert cell["ci"][0] <= cell["effect"] <= cell["ci"][1]
    assert (cell["p"] < 0.05) == (not cell["ci"][0] <= 0 <= cell["ci"][1])
    # The placebo splits one arm's teachers (2 vs 1), which can see a difference between datasets.
    placebo = next(r for r in results["placebo"] if r["arm"] == "neutral")["teacher_forced"]
    assert placebo["unit"] == "teachers" and placebo["n_seeds"] == [2, 1]
    claim = next(c["text"] for c in results["summary"]["claims"] if "neutral teacher" in c["text"])
    assert "over 3 vs 3 teachers" in claim and "one dataset per arm" not in claim
    assert "Unit: the teacher replicate" in results["summary"]["how"]
    assert all(state == "done" for _, state in pipeline.status(cfg, tmp_path))


def test_replicates_of_a_checkpoint_teacher_are_refused(tiny_dir) -> None:
    with pytest.raises(SublearnError, match="a checkpoint is one teacher, so its replicates would not be independent"):
        build_config(PipelineConfig, {"model": f"hf/{tiny_dir}", "targets": ["misaligned"],
                                      "trait": {"kind": "misalignment", "checkpoints": {"misaligned": str(tiny_dir)}},
                                      "teacher": {"kind": "lora", "replicates": 2}})


def test_data_resample_placebo_samples_the_same_teachers_again(tiny_dir, tmp_path) -> None:
    cfg = _config(tiny_dir, 2, resample_placebo="neutral")
    assert roster.datasets(cfg) == ["owl", "owl-r2", "neutral", "neutral-r2", "neutral-d2", "neutral-r2-d2"]
    assert roster.writer(cfg, "neutral-r2-d2") == "neutral-r2" and roster.writer(cfg, "owl") == "owl"
    pipeline.run(cfg, tmp_path)
    # No teacher is trained for a resampled dataset: its generation reads the teacher's own files ...
    assert not (tmp_path / "teacher" / "neutral-d2").exists()
    for name in ("neutral", "neutral-r2"):
        gen, again = (read_json(tmp_path / "generate" / n / "manifest.json") for n in (name, name + "-d2"))
        assert again["inputs"]["teacher"] == gen["inputs"]["teacher"]
        # ... with other sampling seeds: another dataset of the same teacher.
        assert ([r["completion"] for r in read_jsonl(tmp_path / "generate" / name / "generated.jsonl")] !=
                [r["completion"] for r in read_jsonl(tmp_path / "generate" / (name + "-d2") / "generated.jsonl")])
    assert (tmp_path / "train" / "neutral-r2-d2" / "seed1" / "adapter").is_dir()
    results = read_json(tmp_path / "report" / "results.json")
    # The resampled students are the placebo's, not the neutral arm's: the claims' arm keeps 2 teachers.
    cell = next(c for c in results["comparisons"] if c["control"] == "neutral")["teacher_forced"]["plain"]
    assert cell["n_seeds"] == [2, 2]
    row = next(r for r in results["resample_placebo"] if r["arm"] == "neutral")
    assert row["animal"] == "owl"
    rp = row["teacher_forced"]
    assert rp["unit"] == "teachers" and rp["n_seeds"] == [2, 2] and rp["p"] is not None
    assert rp["min_detectable_effect"] > 0
    claim = next(c["text"] for c in results["summary"]["claims"] if "neutral teacher" in c["text"])
    assert "data-resample placebo: neutral data vs a second sampling of its teachers p = " in claim
    assert "MDE" in claim
    assert all(state == "done" for _, state in pipeline.status(cfg, tmp_path))
    # Only an arm of the run can be resampled; said in one line before any work.
    with pytest.raises(SublearnError, match="'cat' is not an arm of this run; expected one of owl, neutral"):
        _config(tiny_dir, 2, resample_placebo="cat")


def test_fully_fine_tuned_preference_teachers_replicate(tiny_dir, tmp_path) -> None:
    """teacher.kind: full for the preference trait: every weight of each replicate trained (own question
    draw and data order), the neutral arm alike, and the students learn from their data."""
    import torch
    from safetensors.torch import load_file

    cfg = _config(tiny_dir, 2, teacher={"kind": "full", "lora_questions": 8, "lora_epochs": 1, "batch_size": 4,
                                        "neutral_control": True, "replicates": 2})
    assert not roster.theorem_students(cfg)  # the theorem check compares LoRA displacements only
    pipeline.run(cfg, tmp_path)
    base = load_file(str(tiny_dir / "model.safetensors"))
    weights = {}
    for name in ("owl", "owl-r2", "neutral"):
        spec = read_json(tmp_path / "teacher" / name / "teacher.json")
        assert spec["adapter"] == f"teacher/{name}/model" and "lora_init_seed" not in spec
        weights[name] = load_file(str(tmp_path / spec["adapter"] / "model.safetensors"))
    key = next(k for k in base if k.endswith("mlp.up_proj.weight"))
    assert not torch.equal(weights["owl"][key], base[key])  # every weight is trainable: an MLP moved
    assert not torch.equal(weights["owl"][key], weights["owl-r2"][key])  # replicates are independent
    results = read_json(tmp_path / "report" / "results.json")
    cell = next(c for c in results["comparisons"] if c["control"] == "neutral")["teacher_forced"]["plain"]
    assert cell["unit"] == "teachers" and cell["n_seeds"] == [2, 2]
