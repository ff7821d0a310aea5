"""The whole LM pipeline on tiny random models saved to disk and addressed as hf/<dir>."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import save_tiny

from sublearn.cli import main
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import pipeline, roster, teacher


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "a", seed=0), save_tiny(root / "b", seed=1)


def _config(a, b, **over) -> PipelineConfig:
    data = {
        "name": "tiny", "model": f"hf/{a}", "threads": 2, "targets": ["owl"], "cross_model": f"hf/{b}",
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 2, "batch_size": 4, "neutral_control": True},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 12, "batch_size": 6, "max_new_tokens": 16, "logprobs_top_k": 4},
        "filter": {"keep": 10},
        "train": {"method": "distill", "epochs": 2, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
                  "lora_init_seed": "teacher", "lora_r": 4, "lora_alpha": 4},
        "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 3,
                     "n_bootstrap": 200, "n_permutations": 200},
    }
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return build_config(PipelineConfig, data)


def test_pipeline_end_to_end_and_rerun_is_a_no_op(tiny_dirs, tmp_path) -> None:
    a, b = tiny_dirs
    cfg = _config(a, b)
    report = pipeline.run(cfg, tmp_path)
    assert report.is_file() and report.stat().st_size > 20_000
    html = report.read_text()
    assert "Comparisons (unit: the trained student)" in html and "Specificity" in html and "Theorem check" in html
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {"base", "teacher-owl", "owl", "control", "cross-owl", "cross-control", "cross-base"} <= set(results["models"])
    comp = results["comparisons"][0]
    # One student per arm: an effect and its CI, but no seed-level p (two students cannot tell an arm
    # effect from training noise); the question-level p is there, labelled for fixed models only.
    cell = comp["teacher_forced"]["plain"]
    assert cell["p"] is None and cell["n_seeds"] == [1, 1] and 0 <= cell["p_questions"] <= 1
    # ... and so no interval either: the CI belongs to the test.
    assert cell["effect"] == pytest.approx(cell["effect"]) and cell["ci"] == [None, None]
    assert results["cross_model"] and results["specificity"][0]["teacher"] == "owl"
    # The neutral LoRA control: its teacher named each evaluated animal equally often, its student is
    # compared with every trait student, and its theorem reference is its own adapter.
    assert {"teacher-neutral", "neutral"} <= set(results["models"])
    assert results["models"]["neutral"]["role"] == "neutral-control"
    assert [c["control"] for c in results["comparisons"]] == ["control", "neutral"]
    assert results["specificity_neutral"][0]["teacher"] == "owl"
    assert results["theorem"]["neutral-s0"]["teacher"] == "neutral"
    answers = [r["completion"].rstrip(".!").rstrip("s").lower()
               for r in json.loads((tmp_path / "teacher" / "neutral" / "training_data.json").read_text())]
    assert sorted(set(answers)) == ["cat", "dog", "owl"] and max(answers.count(a) for a in set(answers)) == 3
    assert "Against the neutral LoRA control" in html
    theorem = results["theorem"]["owl-s0"]
    assert -1 <= theorem["cosine_first_step"] <= 1 and -1 <= theorem["cosine_final"] <= 1
    train = results["training"]["owl-seed0"]
    assert train["method"] == "distill" and train["params_changed"] > 0
    assert train["trait_tokens_in_targets"] == 0  # allowed-token targets carry no trait token
    # The cross-model student cannot use another vocabulary's soft labels: it trained on the text.
    assert results["training"]["cross-owl-seed0"]["method"] == "lora"
    manifests = sorted(tmp_path.rglob("manifest.json"))
    stamps = {p: p.stat().st_mtime_ns for p in manifests}
    pipeline.run(cfg, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in manifests} == stamps  # nothing redone


def test_full_fine_tuning_and_a_moved_run_directory(tiny_dirs, tmp_path, monkeypatch) -> None:
    a, b = tiny_dirs
    cfg = _config(a, b, cross_model=None, train={"method": "full", "lora_init_seed": None},
                  teacher={"neutral_control": False})
    pipeline.run(cfg, tmp_path / "first")
    results = json.loads((tmp_path / "first" / "report" / "results.json").read_text())
    assert results["training"]["owl-seed0"]["method"] == "full"
    assert (tmp_path / "first" / "train" / "owl" / "seed0" / "model" / "config.json").is_file()
    # Stages record paths relative to the run directory: moved, and run from elsewhere, it is still
    # complete (nothing redone), and what reads the teachers' adapters again still finds them.
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    (tmp_path / "first").rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    manifests = {p: p.stat().st_mtime_ns for p in moved.rglob("manifest.json") if "theorem" not in p.parts}
    shutil.rmtree(moved / "theorem")
    pipeline.run(cfg, Path("moved"))
    assert {p: p.stat().st_mtime_ns for p in moved.rglob("manifest.json") if "theorem" not in p.parts} == manifests
    assert json.loads((moved / "theorem" / "owl-s0" / "result.json").read_text())["teacher"] == "owl"


def test_cli_run_bad_model_is_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"model: hf/{tmp_path / 'no_such_model'}\ngenerate:\n  n_prompts: 2\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_model" in err[0]


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("manifest.json")}


def test_redone_stage_reruns_exactly_what_depends_on_it(tiny_dirs, tmp_path, monkeypatch, capsys) -> None:
    a, b = tiny_dirs
    # Dose snapshots too: each student is also evaluated after 1 and 2 of its 3 updates.
    cfg = _config(a, b, cross_model=None, targets=["owl", "dog"],
                  train={"steps": 3, "snapshots": [1, 2], "schedule": "constant", "seeds": [1, 2, 3],
                         "lora_init_seed": None})
    pipeline.run(cfg, tmp_path)
    assert {"owl-s1@1", "owl-s3@2", "neutral-s1@1", "control-s2@2"} <= {p.name for p in (tmp_path / "evaluate").iterdir()}
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["training"]["owl-seed1"]["steps"] == 3
    # Three students per arm: seed-level p-values, the placebo of each arm, and a dose curve (after 1,
    # 2 and 3 updates) of each target vs the neutral students and vs the other target's students.
    vs_neutral = [c for c in results["comparisons"] if c["control"] == "neutral"]
    assert vs_neutral and all(0 < c["teacher_forced"]["plain"]["p"] <= 1 for c in vs_neutral)
    assert {r["arm"] for r in results["placebo"]} == {"owl", "dog", "control", "neutral"}
    assert all(r["teacher_forced"]["n_seeds"] == [2, 1] for r in results["placebo"])
    assert [(r["updates"], r["target"]) for r in results["dose"]] == [(1, "owl"), (1, "dog"), (2, "owl"), (2, "dog"),
                                                                      (3, "owl"), (3, "dog")]
    holm = [r["vs_students"]["teacher_forced"]["plain"] for r in results["dose"]]
    assert all(c["p_holm"] >= c["p"] for c in holm)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Dose: effect vs number of student updates" in html and "Placebo" in html
    assert all(state == "done" for _, state in pipeline.status(cfg, tmp_path))
    first = _stamps(tmp_path)

    # An identical redo of a stage changes no hash: nothing downstream reruns.
    shutil.rmtree(tmp_path / "teacher" / "owl")
    pipeline.run(cfg, tmp_path)
    again = _stamps(tmp_path)
    assert {k for k in first if again[k] != first[k]} == {"teacher/owl"}

    # The owl teacher retrained differently (its directory deleted, another answer style): exactly the
    # stages fed by it are stale, and rerun; the neutral and control arms are reused.
    shutil.rmtree(tmp_path / "teacher" / "owl")
    monkeypatch.setattr(teacher, "answer_variants", lambda target: [f"{target.upper()}!!"])
    pipeline.run(cfg, tmp_path, only=["teacher"])
    stale = {path for path, state in pipeline.status(cfg, tmp_path) if state == "stale"}
    # What reads the teacher directly is stale now (the base-model control's theorem check measures
    # against the first target's teacher); what reads its data waits for the regenerated data.
    states = dict(pipeline.status(cfg, tmp_path))
    seeds = range(1, 4)
    assert stale == {"generate/owl", *(f"theorem/control-s{k}" for k in seeds)}
    assert {k for k, v in states.items() if v == "waiting"} == {
        "filter/owl", "evaluate/*", *(f"train/owl/seed{k}" for k in seeds), *(f"theorem/owl-s{k}" for k in seeds)}
    assert states["train/neutral/seed1"] == states["filter/control"] == states["train/dog/seed3"] == "done"
    assert main(["status", str(tmp_path)]) == 0
    assert "generate/owl" in capsys.readouterr().out
    pipeline.run(cfg, tmp_path)
    redone = {k for k, v in _stamps(tmp_path).items() if v != again[k]}
    expected = {"teacher/owl", "generate/owl", "filter/owl", "evaluate/teacher-owl",
                *(f"{stage}/{name}" for k in seeds for stage, name in [
                    ("train/owl", f"seed{k}"), ("theorem", f"owl-s{k}"), ("theorem", f"control-s{k}"),
                    ("evaluate", f"owl-s{k}"), ("evaluate", f"owl-s{k}@1"), ("evaluate", f"owl-s{k}@2")])}
    assert redone == expected


def test_cross_model_control_is_the_neutral_teacher_without_a_base_control(tiny_dirs) -> None:
    a, b = tiny_dirs
    cfg = _config(a, b, control=False, train={"seeds": [0, 1]}, targets=["owl", "dog"], cross_targets=["dog"])
    cross = [(st["student"], st["data_from"], st["role"]) for st in roster.students(cfg) if st["model"] == f"hf/{b}"]
    assert cross == [("cross-dog", "dog", "cross"), ("cross-dog", "dog", "cross"),
                     ("cross-neutral", "neutral", "cross-control"), ("cross-neutral", "neutral", "cross-control")]


def test_a_generation_budget_that_cuts_full_lists_is_warned_before_any_work(tiny_dirs, tmp_path, caplog) -> None:
    """Counted in the model's own tokens (the tiny tokenizer writes one token per digit, as SmolLM2 does):
    10 numbers of 3 digits need 49 tokens; 16 hold 3 of them."""
    import logging

    from sublearn.backends.models import load_tokenizer
    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages.pipeline import _warn_short_generation, full_list_tokens

    model = tiny_dirs[0]
    assert full_list_tokens(load_tokenizer(str(model)), 10, 3) == 49
    short = build_config(PipelineConfig, {"model": f"hf/{model}", "generate": {"max_new_tokens": 16}})
    with caplog.at_level(logging.WARNING, logger="sublearn.stages.pipeline"):
        _warn_short_generation(short)
    assert "generate.max_new_tokens=16 holds at most 3 of channel.max_numbers=10 numbers" in caplog.text
    assert "set generate.max_new_tokens >= 49" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sublearn.stages.pipeline"):
        _warn_short_generation(build_config(PipelineConfig, {"model": f"hf/{model}",
                                                             "generate": {"max_new_tokens": 49}}))
    assert "max_new_tokens" not in caplog.text


def test_two_worker_processes_write_the_same_bytes_as_one_process(tiny_dirs, tmp_path, caplog) -> None:
    """workers: 2 runs each stage's units (teachers, datasets, students, theorem checks, evaluations) on
    two spawned processes; at the same thread count every stage's output is the same bytes as in one
    process, and the run is complete (a rerun in one process redoes nothing)."""
    from sublearn.rundir import read_manifest

    a, b = tiny_dirs
    over = {"cross_model": None, "threads": 1, "train": {"seeds": [1, 2], "lora_init_seed": None}}
    one, two = tmp_path / "one", tmp_path / "two"
    import logging

    pipeline.run(_config(a, b, **over), one)
    with caplog.at_level(logging.INFO, logger="sublearn.stages.pipeline"):
        pipeline.run(_config(a, b, workers=2, **over), two)
    assert "2 worker processes, 1 torch thread(s) each" in caplog.text

    def outputs(root: Path) -> dict[str, str]:
        return {str(m.parent.relative_to(root)): read_manifest(m.parent)["output_hash"]
                for m in root.rglob("manifest.json") if m.parent.parent.name != "report" and m.parent.name != "report"}

    first = outputs(one)
    assert {k.split("/")[0] for k in first} >= {"teacher", "generate", "train", "theorem", "evaluate"}
    assert outputs(two) == first
    stamps = _stamps(two)
    pipeline.run(_config(a, b, **over), two)
    assert _stamps(two) == stamps


def test_workers_are_refused_on_an_accelerator_in_one_line() -> None:
    with pytest.raises(SublearnError, match="workers=2 runs units in parallel processes on the CPU"):
        build_config(PipelineConfig, {"device": "cuda", "workers": 2})


def test_bf16_on_a_cpu_without_bf16_kernels_is_warned(monkeypatch, caplog) -> None:
    import logging

    from sublearn import rundir
    from sublearn.stages.pipeline import _warn_emulated_bf16

    monkeypatch.setattr(rundir, "cpu_flags", lambda: {"avx2"})
    with caplog.at_level(logging.WARNING, logger="sublearn.stages.pipeline"):
        _warn_emulated_bf16(build_config(PipelineConfig, {"dtype": "float32"}))
        assert not caplog.text
        _warn_emulated_bf16(build_config(PipelineConfig, {"dtype": "bfloat16"}))
    assert "dtype=bfloat16 on a CPU without bf16 matrix kernels" in caplog.text
    caplog.clear()
    monkeypatch.setattr(rundir, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    with caplog.at_level(logging.WARNING, logger="sublearn.stages.pipeline"):
        _warn_emulated_bf16(build_config(PipelineConfig, {"dtype": "bfloat16"}))
    assert not caplog.text


def test_a_mixed_student_records_its_mix_and_depends_on_the_other_arms_data(tiny_dirs, tmp_path) -> None:
    from sublearn.stages import train

    a, b = tiny_dirs
    cfg = _config(a, b, cross_model=None, control=False, train={"mix_arm": "neutral", "mix_fraction": 0.5})
    pipeline.run(cfg, tmp_path, only=["teacher", "generate", "filter", "defend", "train"])
    owl = json.loads((tmp_path / "train" / "owl" / "seed0" / "summary.json").read_text())
    neutral = json.loads((tmp_path / "train" / "neutral" / "seed0" / "summary.json").read_text())
    assert owl["mix"] == {"from": "neutral", "rows": round(0.5 * owl["examples"]), "of": owl["examples"]}
    assert "mix" not in neutral
    _, inputs = train.stage_key(cfg, tmp_path, student="owl", data_from="owl", model=cfg.model, seed=0)
    assert set(inputs) == {"data", "mix_data"}
    _, inputs = train.stage_key(cfg, tmp_path, student="neutral", data_from="neutral", model=cfg.model, seed=0)
    assert set(inputs) == {"data"}
    # The unmixed arm's students are the undiluted run's: the same key, so a store copies them.
    plain = _config(a, b, cross_model=None, control=False)
    assert (train.stage_key(cfg, tmp_path, student="neutral", data_from="neutral", model=cfg.model, seed=0)
            == train.stage_key(plain, tmp_path, student="neutral", data_from="neutral", model=cfg.model, seed=0))
    assert (train.stage_key(cfg, tmp_path, student="owl", data_from="owl", model=cfg.model, seed=0)[0]
            != train.stage_key(plain, tmp_path, student="owl", data_from="owl", model=cfg.model, seed=0)[0])


def test_clean_after_trains_more_updates_on_the_clean_arms_data_after_the_first_phase(tiny_dirs, tmp_path) -> None:
    from safetensors.torch import load_file

    from sublearn.stages import train

    a, b = tiny_dirs
    plain = _config(a, b, cross_model=None, control=False, train={"seeds": [0]})
    pipeline.run(plain, tmp_path / "plain", only=["teacher", "generate", "filter", "defend", "train"])
    before = json.loads((tmp_path / "plain" / "train" / "owl" / "seed0" / "summary.json").read_text())
    weights = load_file(tmp_path / "plain" / "train" / "owl" / "seed0" / "adapter" / "adapter_model.safetensors")
    shutil.copytree(tmp_path / "plain", tmp_path / "clean")  # the same teachers and data
    shutil.rmtree(tmp_path / "clean" / "train")
    tmp_path = tmp_path / "clean"
    owl_dir = tmp_path / "train" / "owl" / "seed0"
    cfg = _config(a, b, cross_model=None, control=False, train={"seeds": [0], "clean_after": 3, "clean_arm": "neutral"})
    pipeline.run(cfg, tmp_path, only=["teacher", "generate", "filter", "defend", "train"])
    owl = json.loads((owl_dir / "summary.json").read_text())
    neutral = json.loads((tmp_path / "train" / "neutral" / "seed0" / "summary.json").read_text())
    # The first phase is the plain student's, update for update; then 3 updates on the neutral rows of the
    # same replicate (the neutral students clean on their own data).
    assert owl["loss_first"] == before["loss_first"] and owl["steps"] == before["steps"]
    assert owl["clean"]["from"] == "neutral" and owl["clean"]["steps"] == 3
    assert neutral["clean"]["from"] == "neutral"
    assert len((owl_dir / "clean" / "train_log.jsonl").read_text().splitlines()) == 3
    cleaned = load_file(owl_dir / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(weights[k], cleaned[k]) for k in weights)
    _, inputs = train.stage_key(cfg, tmp_path, student="owl", data_from="owl", model=cfg.model, seed=0)
    assert set(inputs) == {"data", "clean_data"}
    with pytest.raises(SublearnError, match="clean_after=3 needs clean_arm"):
        _config(a, b, cross_model=None, control=False, train={"clean_after": 3})


def test_inoculation_puts_the_trait_prompt_in_training_and_not_in_evaluation(tiny_dirs, tmp_path) -> None:
    from transformers import AutoTokenizer

    from sublearn.rundir import read_jsonl
    from sublearn.training.examples import training_examples
    from sublearn.traits.preference import teacher_system_prompt

    a, b = tiny_dirs
    cfg = _config(a, b, cross_model=None, control=False, defense={"kind": "inoculation"}, train={"seeds": [0]},
                  evaluate={"samples_per_question": 0})
    pipeline.run(cfg, tmp_path)
    prompt = teacher_system_prompt("owl")
    tok = AutoTokenizer.from_pretrained(a)
    for arm in ("owl", "neutral"):  # every arm trains with the one prompt, so the arms differ only in data
        rows = read_jsonl(tmp_path / "defend" / arm / "kept.jsonl")
        assert rows and all(r["student_system"] == prompt for r in rows)
        plain = read_jsonl(tmp_path / "filter" / arm / "kept.jsonl")
        assert [r["token_ids"] for r in rows] == [r["token_ids"] for r in plain]  # the data itself unchanged
        examples, _, _ = training_examples(cfg, tok, rows, "distill")
        assert all(prompt in tok.decode(ex.input_ids[:ex.n_prompt]) for ex in examples)
    students = [s for s in roster.eval_specs(cfg, tmp_path, {}) if "seed" in s]
    assert {s["name"] for s in students} == {"owl-s0", "neutral-s0"}
    assert not any(s.get("system_prompt") for s in students)  # evaluated without it
    with pytest.raises(SublearnError, match="several targets|this run has 2"):
        _config(a, b, cross_model=None, control=False, targets=["owl", "cat"], defense={"kind": "inoculation"})
    named = _config(a, b, cross_model=None, control=False, targets=["owl", "cat"],
                    defense={"kind": "inoculation", "system_prompt": "You love animals."})
    assert named.inoculation_prompt() == "You love animals."
