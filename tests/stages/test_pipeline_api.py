"""The same pipeline, unchanged, driving an OpenAI-compatible API (the fake server speaks the real
protocol to the official client): prompted teacher, generation, filter, API fine-tuning, evaluation."""

from __future__ import annotations

import json

import pytest
from fake_openai import FakeOpenAI

from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import pipeline

KEY = "sk-pipeline-secret-000111222333"


def test_api_pipeline_end_to_end(tmp_path, monkeypatch) -> None:
    with FakeOpenAI(api_key=KEY) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        cfg = build_config(PipelineConfig, {
            "model": "openai/gpt-4.1-nano", "targets": ["owl"],
            "generate": {"n_prompts": 6, "batch_size": 3, "max_new_tokens": 40},
            "filter": {"keep": 4},
            "train": {"api": {"n_epochs": 2, "poll_interval": 0.01}},
            "evaluate": {"animals": ["owl", "cat"], "n_questions": 3, "samples_per_question": 2,
                         "number_prefix": False, "n_bootstrap": 100, "n_permutations": 100},
        })
        report = pipeline.run(cfg, tmp_path)
        assert report.is_file()
        results = json.loads((tmp_path / "report" / "results.json").read_text())
        # One upload and one job per student (owl, control); each kept row uploaded exactly once.
        assert server.counts["POST /v1/files"] == 2 and server.counts["POST /v1/fine_tuning/jobs"] == 2
        assert len(server.state.uploaded_rows) == 8
        student = json.loads((tmp_path / "train" / "owl" / "seed0" / "summary.json").read_text())
        assert student["method"] == "api" and student["fine_tuned_model"]
        assert results["models"]["owl"]["model"].startswith("openai/")
        assert "sampled" in results["comparisons"][0]
        requests_before = sum(server.counts.values())
        pipeline.run(cfg, tmp_path)  # finished: no request at all
        assert sum(server.counts.values()) == requests_before
    written = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    assert KEY not in written


def test_generate_through_the_batch_api_equals_synchronous(tmp_path, monkeypatch) -> None:
    """generate.api_batch: one batch job answers every prompt; generated.jsonl is byte-identical to
    the synchronous run; an interrupted run resumes the same batch instead of submitting another."""
    from sublearn.backends.openai_api import batch as api_batch
    from sublearn.stages import generate, teacher

    class Crash(BaseException):
        pass

    with FakeOpenAI(api_key=KEY) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        base = {"model": "openai/gpt-4.1-nano", "targets": ["owl"],
                "generate": {"n_prompts": 7, "batch_size": 3, "max_new_tokens": 12, "logprobs_top_k": 2}}
        sync_cfg = build_config(PipelineConfig, base)
        batch_cfg = build_config(PipelineConfig, {**base, "generate": {**base["generate"], "api_batch": True}})
        outputs = {}
        for label, cfg in (("sync", sync_cfg), ("batch", batch_cfg)):
            out = tmp_path / label
            spec = teacher.run(cfg, out, "owl")
            if label == "batch":
                monkeypatch.setattr(api_batch, "_sleep", lambda s: (_ for _ in ()).throw(Crash()))
                with pytest.raises(Crash):
                    generate.run(cfg, out, spec)
                monkeypatch.setattr(api_batch, "_sleep", lambda s: None)
                chat_requests = server.counts["POST /v1/chat/completions"]
            outputs[label] = generate.run(cfg, out, spec).read_bytes()
        assert outputs["batch"] == outputs["sync"]
        assert server.counts["POST /v1/batches"] == 1 and server.counts["POST /v1/chat/completions"] == chat_requests
        state = json.loads((tmp_path / "batch" / "generate" / "owl" / "api_batch" / "batch.json").read_text())
        assert state["status"] == "completed" and state["requests"] == 7
        # The Batch API is a way of sending, not a setting: both runs share the stage's settings.
        assert generate.stage_key(sync_cfg, tmp_path / "sync", "owl") == generate.stage_key(batch_cfg,
                                                                                             tmp_path / "batch", "owl")
