"""The Inspect tasks (sublearn.tools.inspect_tasks) give the evaluate stage's numbers on the same model.

Each equality test runs the real evaluate stage (`sublearn.stages.evaluate.run`, its own model load,
results.json) and the real `inspect_ai.eval` with the `sublearn` provider (a second load) and asserts
the per-question values are equal exactly: the tasks run the trait's evaluation function over the
same questions in the same batches with the same seeds, so no tolerance is needed on CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

inspect_ai = pytest.importorskip("inspect_ai")

from tiny import save_tiny  # noqa: E402

from sublearn.backends.base import request_seed  # noqa: E402
from sublearn.config import build_config  # noqa: E402
from sublearn.pipeline_config import PipelineConfig  # noqa: E402
from sublearn.stages import evaluate  # noqa: E402
from sublearn.tools.inspect_tasks import preference  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    """One torch thread (the tests run pinned to one core) and Inspect's logs under tmp_path."""
    before = torch.get_num_threads()
    monkeypatch.setenv("INSPECT_LOG_DIR", str(tmp_path / "logs"))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny", seed=0)


def _eval(tasks, model: str, tmp_path, **kw):
    logs = inspect_ai.eval(tasks, model=model, model_args={"threads": 1}, log_dir=str(tmp_path / "logs"),
                           display="none", **kw)
    for log in logs:
        assert log.status == "success", log.error
    assert list((tmp_path / "logs").iterdir())  # the logs went where they were sent
    return logs


@pytest.mark.parametrize("model", [
    "tiny",
    pytest.param("hf/smollm2-135m", marks=pytest.mark.slow),
])
def test_preference_task_equals_the_evaluate_stage(model, tiny_dir, tmp_path) -> None:
    model = f"hf/{tiny_dir}" if model == "tiny" else model
    n_q, n = 3, 2
    # The stage's config, written independently of the task's: plain and number-prefixed variants.
    config = build_config(PipelineConfig, {"model": model, "threads": 1, "evaluate": {
        "n_questions": n_q, "samples_per_question": n, "number_prefix": True}})
    stage = evaluate.run(config, tmp_path / "run", {"name": "base", "model": model})
    logs = _eval([preference(questions=n_q, samples=n, prefixed=False),
                  preference(questions=n_q, samples=n, prefixed=True)], f"sublearn/{model}", tmp_path)
    animals = stage["animals"]
    for log, variant in zip(logs, ["plain", "prefixed"], strict=True):
        samples = sorted(log.samples, key=lambda s: s.metadata["question"])
        assert [s.metadata["question"] for s in samples] == list(range(n_q))
        for q, sample in enumerate(samples):
            score = sample.scores["preference"]
            assert score.metadata["probabilities"] == {a: stage["teacher_forced"][variant][a][q] for a in animals}
            assert score.metadata["hit_rates"] == {a: stage["sampled"][variant][a][q] for a in animals}
            assert score.value == {"teacher_forced": stage["teacher_forced"][variant]["owl"][q],
                                   "sampled": stage["sampled"][variant]["owl"][q]}
            assert len(score.metadata["answers"]) == n
            assert score.metadata["answers"][0] == stage["examples"][variant][q]  # the same sampled reply
            assert sample.output.completion == stage["examples"][variant][q]
        # The task's headline metric is the mean over questions (up to summation order).
        metrics = {s.name: s.metrics for s in log.results.scores}
        assert metrics["teacher_forced"]["mean"].value == pytest.approx(
            np.mean(stage["teacher_forced"][variant]["owl"]), rel=1e-12, abs=0)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_misalignment_task_equals_the_evaluate_stage(tiny_dir, tmp_path) -> None:
    model = f"hf/{tiny_dir}"
    config = build_config(PipelineConfig, {"model": model, "threads": 1, "targets": ["misaligned"],
                                           "teacher": {"kind": "lora"},
                                           "trait": {"kind": "misalignment", "samples_per_question": 0}})
    stage = evaluate.run(config, tmp_path / "run", {"name": "base", "model": model})["metrics"]
    # By registered name, as `inspect eval sublearn/misalignment` finds it.
    [log] = _eval("sublearn/misalignment", f"sublearn/{model}", tmp_path)
    got: dict[str, dict[int, float]] = {}
    for sample in log.samples:
        got.setdefault(sample.metadata["kind"], {})[sample.metadata["index"]] = sample.scores["misalignment_score"].value
    assert set(got) == {"logodds", "persona", "truthful"}
    for kind, values in got.items():
        assert sorted(values) == list(range(len(stage[kind])))
        assert all(_same(values[i], stage[kind][i]) for i in values), kind
    means = {name: m.value for s in log.results.scores for name, m in s.metrics.items()}
    assert means["persona"] == pytest.approx(np.nanmean(stage["persona"]), rel=1e-12)


def test_models_without_teacher_forcing_sample_with_the_stage_seeds(tiny_dir, tmp_path) -> None:
    """Inspect's own models (its mock; its hf provider on the tiny model) cannot give P(animal): a one-line
    error says what to run instead; the sampled rate asks each row with the seed the stage gives it."""
    [log] = inspect_ai.eval(preference(questions=2), model="mockllm/model", log_dir=str(tmp_path / "logs"),
                            display="none")
    assert log.status == "error" and "--model sublearn/hf/smollm2-135m" in log.error.message
    n = 3
    [log] = inspect_ai.eval(preference(questions=2, samples=n, teacher_forced=False, prefixed=True),
                            model=f"hf/{tiny_dir}", model_args={"device": "cpu"}, log_dir=str(tmp_path / "logs"),
                            display="none")
    assert log.status == "success", log.error
    assert log.results.scores[0].name == "sampled" and 0 <= log.results.scores[0].metrics["mean"].value <= 1
    call_seed = int(np.random.SeedSequence([0, 1, 0xE7A1]).generate_state(1)[0]) & 0x7FFFFFFF  # prefixed: variant 1
    for sample in log.samples:
        q = sample.metadata["question"]
        seeds = [e.config.seed for e in sample.events if e.event == "model"]
        assert seeds == [request_seed(call_seed, q * n + j) for j in range(n)]
        assert len(sample.scores["preference"].metadata["answers"]) == n
