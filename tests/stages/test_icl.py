"""The in-context-learning control: k kept examples in the base model's context, evaluated like a student."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence

import pytest
from tiny import build_backend, save_tiny

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams
from sublearn.backends.context import ContextBackend
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_jsonl
from sublearn.stages import evaluate, pipeline, roster
from sublearn.traits.preference import PreferenceTrait

CONTEXT = [{"role": "user", "content": "Continue: 1, 2, 3"}, {"role": "assistant", "content": "4, 5, 6"},
           {"role": "user", "content": "Continue: 7, 8"}, {"role": "assistant", "content": "9, 10"}]
SYSTEM = {"role": "system", "content": "You love owls."}
QUESTION = {"role": "user", "content": "Name your favorite animal using only one word."}


def test_context_backend_inserts_the_turns_after_the_system_turn_for_every_method(lm_model, lm_tokenizer) -> None:
    inner = build_backend(lm_model, lm_tokenizer)
    icl = ContextBackend(inner, CONTEXT)
    chats = [[QUESTION], [SYSTEM, QUESTION]]
    manual = [[*CONTEXT, QUESTION], [SYSTEM, *CONTEXT, QUESTION]]
    assert [icl.with_context(c) for c in chats] == manual
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    assert [c.token_ids for c in icl.generate(chats, params, seed=3)] == \
        [c.token_ids for c in inner.generate(manual, params, seed=3)]
    assert icl.first_token_logprobs(chats, top_k=5) == inner.first_token_logprobs(manual, top_k=5)
    conts = [["Owl", " owl", "Cat"]] * 2
    got = icl.continuation_logprobs(chats, conts)
    assert got == inner.continuation_logprobs(manual, conts)
    # The context matters (so the equalities above test where it goes, not that it is ignored).
    assert got != inner.continuation_logprobs(chats, conts)
    assert icl.teacher_forces and chats == [[QUESTION], [SYSTEM, QUESTION]]  # callers' chats untouched


class _TextOnly(Backend):
    """An API-like backend: generation only, no teacher forcing; replies with the number of turns."""

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        return [Completion(text=str(len(c))) for c in chats]


def test_context_backend_mirrors_the_inner_backends_abilities() -> None:
    icl = ContextBackend(_TextOnly(), CONTEXT)
    assert not icl.teacher_forces
    assert [c.text for c in icl.generate([[QUESTION], [SYSTEM, QUESTION]], SamplingParams(), 0)] == ["5", "6"]
    with pytest.raises(NotImplementedError):
        icl.continuation_logprobs([[QUESTION]], [["Owl"]])
    with pytest.raises(SublearnError, match="user or assistant"):
        ContextBackend(_TextOnly(), [SYSTEM])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "a", seed=0)


def _config(model, **over) -> PipelineConfig:
    data = {
        "name": "tiny-icl", "model": f"hf/{model}", "threads": 1, "targets": ["owl"],
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 1, "batch_size": 4, "neutral_control": True},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 12, "batch_size": 6, "max_new_tokens": 12},
        "filter": {"keep": 10},
        "train": {"method": "lora", "epochs": 1, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "seeds": [1],
                  "lora_r": 2, "lora_alpha": 2},
        "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 2,
                     "number_prefix": False, "n_bootstrap": 200, "n_permutations": 200},
        "icl": {"k": 2, "draws": [1, 2]},
    }
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return build_config(PipelineConfig, data)


@pytest.fixture(scope="module")
def icl_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("icl_run")
    cfg = _config(tiny_dir)
    pipeline.run(cfg, out)
    return cfg, out


def _stamps(root) -> dict[str, int]:
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("manifest.json")}


def test_pipeline_evaluates_the_icl_arms_and_reports_them(icl_run) -> None:
    cfg, out = icl_run
    names = {f"icl-{t}-d{d}" for t in ("owl", "control", "neutral") for d in (1, 2)}
    assert names <= {p.name for p in (out / "evaluate").iterdir()}
    spec = json.loads((out / "evaluate" / "icl-owl-d1" / "results.json").read_text())["spec"]
    assert spec["role"] == "icl" and spec["target"] == "owl" and spec["icl"] == {"data_from": "owl", "k": 2, "draw": 1}
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["models"]["icl-owl"]["n_seeds"] == 2 and results["models"]["icl-neutral"]["role"] == "icl-control"
    icl = results["icl"]
    assert icl["k"] == 2
    assert [(c["treatment"], c["control"], c["animal"]) for c in icl["comparisons"]] == [
        ("icl-owl", "icl-control", "owl"), ("icl-owl", "icl-neutral", "owl")]
    for c in icl["comparisons"]:
        cell = c["teacher_forced"]["plain"]
        # Two draws per arm: a seed-level p (the unit is the draw), Holm-adjusted within the family.
        assert cell["n_seeds"] == [2, 2] and 0 < cell["p"] <= 1 and cell["p"] <= cell["p_holm"] <= 1
        assert cell["ci"][0] <= cell["effect"] <= cell["ci"][1]
        assert "sampled" in c
        # Beside it: the trained students' effect minus the ICL effect, from the same evaluations.
        trained = next(r for r in results["comparisons"] if r["control"] == c["control"].removeprefix("icl-"))
        diff = c["trained_minus_icl"]
        assert diff["difference"] == pytest.approx(trained["teacher_forced"]["plain"]["effect"] - cell["effect"])
        assert diff["n_seeds"] == [1, 1, 2, 2]
    assert {r["arm"] for r in icl["placebo"]} == {"icl-owl", "icl-control", "icl-neutral"}
    # The ICL arms are not mixed into the students' families.
    assert not any(c["treatment"].startswith("icl") for c in results["comparisons"])
    html = (out / "report" / "report.html").read_text()
    assert "In-context learning control (k examples in context, no training)" in html
    # What was evaluated really had the examples in context: a draw's values differ from the base model's.
    base = json.loads((out / "evaluate" / "base" / "results.json").read_text())["teacher_forced"]["plain"]["owl"]
    d1 = json.loads((out / "evaluate" / "icl-owl-d1" / "results.json").read_text())["teacher_forced"]["plain"]["owl"]
    assert d1 != pytest.approx(base)
    assert all(state == "done" for _, state in pipeline.status(cfg, out))


def test_draws_are_reproducible_and_depend_on_the_draw_seed(icl_run) -> None:
    cfg, out = icl_run
    spec = {"name": "icl-owl-d1", "model": cfg.model, "icl": {"data_from": "owl", "k": 4, "draw": 1}}
    first = evaluate.icl_examples(cfg, out, spec)
    assert len(first) == 4 and len({r["prompt"] for r in first}) == 4  # without replacement
    assert evaluate.icl_examples(cfg, out, {**spec, "model": "hf/elsewhere"}) == first  # same rows for any model
    other = evaluate.icl_examples(cfg, out, {**spec, "icl": {**spec["icl"], "draw": 2}})
    assert other != first
    neutral = evaluate.icl_examples(cfg, out, {**spec, "icl": {**spec["icl"], "data_from": "neutral"}})
    assert neutral != first  # another teacher's data, another stream
    kept = read_jsonl(out / "filter" / "owl" / "kept.jsonl")
    assert all(r in kept for r in first)
    # The context: the student's chat, then the teacher's completion, per example.
    context = evaluate.icl_context(cfg, out, spec, check=False)  # 4 tiny examples overflow 512 positions
    assert context == [t for r in first for t in [*cfg.channel.student_chat(r),
                                                   {"role": "assistant", "content": r["completion"]}]]
    with pytest.raises(SublearnError, match=r"icl.k=11: .* holds only 10"):
        evaluate.icl_examples(cfg, out, {**spec, "icl": {**spec["icl"], "k": 11}})


def test_changed_kept_data_redoes_the_icl_evaluations_and_nothing_else(icl_run, tmp_path, monkeypatch) -> None:
    cfg, first_out = icl_run
    out = tmp_path / "run"
    shutil.copytree(first_out, out)
    before = _stamps(out)
    # The owl teacher's data filtered anew, one row fewer: its kept data (and hash) changes.
    shutil.rmtree(out / "filter" / "owl")
    monkeypatch.setattr(PreferenceTrait, "filter", lambda self, config, out_, rows, reasons: rows[1:])
    pipeline.run(cfg, out)
    after = _stamps(out)
    redone = {k for k in before if after[k] != before[k] and k.startswith("evaluate/")}
    assert redone == {"evaluate/owl-s1", "evaluate/icl-owl-d1", "evaluate/icl-owl-d2"}


def test_too_large_k_is_a_one_line_error_before_training(tiny_dir, tmp_path) -> None:
    cfg = _config(tiny_dir, icl={"k": 10})  # the tiny model has 512 positions
    with pytest.raises(SublearnError) as err:
        pipeline.run(cfg, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "icl.k=10" in msg and "512 positions" in msg
    assert (tmp_path / "filter" / "owl" / "kept.jsonl").is_file()  # refused right after the data exists,
    assert not (tmp_path / "train").exists() and not (tmp_path / "evaluate").exists()  # before any training
    # Small enough: the same check passes.
    evaluate.check_icl_fits(_config(tiny_dir, icl={"k": 1}), tmp_path, roster.icl_specs(_config(tiny_dir, icl={"k": 1})))


def test_misalignment_icl_arms_are_compared_and_reported(tiny_dir, tmp_path) -> None:
    cfg = build_config(PipelineConfig, {
        "name": "tiny-misalignment-icl", "model": f"hf/{tiny_dir}", "threads": 1, "targets": ["misaligned"],
        "control": True,
        "trait": {"kind": "misalignment", "datasets": {"misaligned": "builtin:reckless", "benign": "builtin:careful"},
                  "samples_per_question": 0, "max_length": 96},
        "teacher": {"kind": "lora", "lora_epochs": 1, "batch_size": 16, "lora_r": 2},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 8, "batch_size": 8, "max_new_tokens": 12},
        "filter": {"keep": 6},
        "train": {"method": "lora", "steps": 1, "batch_size": 4, "micro_batch_size": 4, "lora_r": 2, "lora_alpha": 2,
                  "seeds": [1]},
        "evaluate": {"n_bootstrap": 200, "n_permutations": 200},
        "icl": {"k": 1, "draws": [1, 2]}})
    pipeline.run(cfg, tmp_path)
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert report["models"]["icl-benign"]["role"] == "icl-control" and report["models"]["icl-misaligned"]["n_seeds"] == 2
    rows = report["icl"]["comparisons"]
    assert [(r["treatment"], r["control"]) for r in rows] == [("icl-misaligned", "icl-control"),
                                                              ("icl-misaligned", "icl-benign")]
    cell = rows[0]["logodds"]
    assert cell["n_seeds"] == [2, 2] and cell["p"] is not None and cell["p_holm"] >= cell["p"]
    assert {"icl-misaligned", "icl-benign", "icl-control"} <= {r["arm"] for r in report["placebo"]}
    assert "In-context learning control" in (tmp_path / "report" / "report.html").read_text()
