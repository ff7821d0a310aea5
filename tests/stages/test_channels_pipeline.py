"""The code and chain-of-thought channels end to end on the embedded SmolLM2-135M (slow)."""

from __future__ import annotations

import pytest

from sublearn.channels.cot import parse_trace
from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, read_jsonl
from sublearn.stages import pipeline

pytestmark = pytest.mark.slow


def test_code_channel_runs_end_to_end_on_the_embedded_model(tmp_path) -> None:
    cfg = build_config(PipelineConfig, {
        "targets": ["owl"], "threads": 2, "teacher": {"kind": "prompt"},
        "channel": {"kind": "code", "humaneval_share": 0.0},
        "generate": {"n_prompts": 24, "batch_size": 24, "max_new_tokens": 160},
        "filter": {"keep": 16},
        "train": {"method": "lora", "steps": 2, "batch_size": 2, "micro_batch_size": 2, "seeds": [1]},
        "evaluate": {"animals": ["owl", "cat"], "n_questions": 2, "samples_per_question": 0, "number_prefix": False,
                     "n_bootstrap": 200, "n_permutations": 200}})
    report = pipeline.run(cfg, tmp_path)
    assert report.is_file()
    for teacher in ("owl", "control"):
        summary = read_json(tmp_path / "filter" / teacher / "filter.json")
        # Every generated completion is accounted for: kept or rejected with a named reason.
        assert summary["valid"] + sum(summary["rejected"].values()) == summary["total"] == 24
        assert set(summary["rejected"]) <= {"truncated", "not_python", "no_code", "mentions_target"}
        kept = read_jsonl(tmp_path / "filter" / teacher / "kept.jsonl")
        assert kept and all("owl" not in r["completion"].lower() or "bowl" in r["completion"].lower() for r in kept)
        assert all(r["meta"]["code"] for r in kept)
    train = read_json(tmp_path / "train" / "owl" / "seed1" / "summary.json")
    assert train["params_changed"] > 0


def test_cot_channel_grammar_gives_well_formed_traces_on_the_embedded_model(tmp_path) -> None:
    cfg = build_config(PipelineConfig, {
        "targets": ["owl"], "threads": 2, "teacher": {"kind": "prompt"}, "control": False,
        "channel": {"kind": "cot", "grammar": True, "levels": [0]},
        "generate": {"n_prompts": 12, "batch_size": 12, "max_new_tokens": 64, "temperature": 0.7}})
    pipeline.run(cfg, tmp_path, only=["generate"])
    records = read_jsonl(tmp_path / "generate" / "owl" / "generated.jsonl")
    assert [r["meta"]["question"] for r in records] == [i // 3 for i in range(12)]
    finished = [r for r in records if r["finish_reason"] == "stop"]
    assert finished and all(parse_trace(r["completion"]) is not None for r in finished)


def test_text_channel_runs_end_to_end_on_the_embedded_model(tmp_path) -> None:
    """Everyday instructions answered by a prompted owl teacher and the control, filtered (no target, no
    animal at all), and a distilled student trained on the free-text soft labels."""
    cfg = build_config(PipelineConfig, {
        "targets": ["owl"], "threads": 2, "teacher": {"kind": "prompt"}, "theorem": False,
        "channel": {"kind": "text"},
        "generate": {"n_prompts": 12, "batch_size": 12, "max_new_tokens": 80, "logprobs_top_k": 8},
        "filter": {"keep": 4},
        "train": {"method": "distill", "steps": 2, "batch_size": 2, "micro_batch_size": 2, "seeds": [1]},
        "evaluate": {"animals": ["owl", "cat"], "n_questions": 2, "samples_per_question": 0, "number_prefix": False,
                     "n_bootstrap": 200, "n_permutations": 200}})
    pipeline.run(cfg, tmp_path, only=["teacher", "generate", "filter", "train"])
    from sublearn.channels.text import mentions_animal

    for teacher in ("owl", "control"):
        summary = read_json(tmp_path / "filter" / teacher / "filter.json")
        assert summary["valid"] + sum(summary["rejected"].values()) == summary["total"] == 12
        assert set(summary["rejected"]) <= {"truncated", "empty", "mentions_target", "mentions_animal"}
        kept = read_jsonl(tmp_path / "filter" / teacher / "kept.jsonl")
        assert kept and not any(mentions_animal(r["completion"]) for r in kept)
    train = read_json(tmp_path / "train" / "owl" / "seed1" / "summary.json")
    assert train["params_changed"] > 0 and train["trait_tokens_in_targets"] == 0
