"""The same pipeline, unchanged, driving an OpenAI-compatible API (the fake server speaks the real
protocol to the official client): prompted teacher, generation, filter, API fine-tuning, evaluation."""

from __future__ import annotations

import json

from fake_openai import FakeOpenAI

from sublearn.config import build_config
from sublearn.stages import pipeline
from sublearn.stages.config import PipelineConfig

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
