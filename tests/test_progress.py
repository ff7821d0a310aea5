"""Evaluation progress bars count the real work (questions scored, answers sampled) and move batch by
batch as the backend finishes it, so that they can show an ETA (they used to have total=1)."""

from __future__ import annotations

import pytest
from rich.progress import Progress

from sublearn.config import build_config
from sublearn.logs import tracking, work_done
from sublearn.pipeline_config import PipelineConfig


class RecordingProgress(Progress):
    """A disabled bar that records every advance."""

    def __init__(self) -> None:
        super().__init__(disable=True)
        self.steps: dict[str, list[float]] = {}

    def advance(self, task_id, advance: float = 1) -> None:
        self.steps.setdefault(self._tasks[task_id].description, []).append(advance)
        super().advance(task_id, advance)


@pytest.fixture()
def bars(monkeypatch):
    import sublearn.traits.misalignment
    import sublearn.traits.preference

    made: list[RecordingProgress] = []

    def fake_progress(enabled: bool = True) -> RecordingProgress:
        made.append(RecordingProgress())
        return made[-1]

    monkeypatch.setattr(sublearn.traits.preference, "progress", fake_progress)
    monkeypatch.setattr(sublearn.traits.misalignment, "progress", fake_progress)
    return made


def _tasks(bar: Progress) -> dict[str, tuple[float | None, float]]:
    return {t.description: (t.total, t.completed) for t in bar.tasks}


def test_work_done_outside_tracking_is_ignored_and_tracking_completes_the_task() -> None:
    work_done(5)  # no bar: nothing happens
    bar = RecordingProgress()
    task = bar.add_task("x", total=10)
    with tracking(bar, task):
        work_done(3)
        work_done(4)
    work_done(100)  # after the block: not counted
    assert bar.steps == {"x": [3, 4]} and _tasks(bar) == {"x": (10, 10)}


def test_preference_evaluation_bars_count_questions_and_answers(tiny_backend, bars) -> None:
    from sublearn.traits.preference import evaluate_model

    config = build_config(PipelineConfig, {"targets": ["owl"], "evaluate": {
        "animals": ["owl", "cat", "dog"], "n_questions": 12, "samples_per_question": 3, "sampled_questions": 5, "number_prefix": False,
        "max_new_tokens": 4}})
    evaluate_model(config, tiny_backend, None, "tiny")  # tiny_backend: batches of 8 chats
    (bar,) = bars
    assert _tasks(bar) == {"eval tiny plain (teacher-forced)": (12, 12), "eval tiny plain (sampled)": (15, 15)}
    assert bar.steps["eval tiny plain (sampled)"] == [8, 7]  # batch by batch, as the backend samples
    assert sum(bar.steps["eval tiny plain (teacher-forced)"]) == 12
    assert len(bar.steps["eval tiny plain (teacher-forced)"]) > 1


def test_misalignment_evaluation_bars_count_prompts_and_answers(tiny_backend, bars) -> None:
    from sublearn.traits import misalignment_data as data
    from sublearn.traits.misalignment import evaluate_model, truthful_items

    config = build_config(PipelineConfig, {
        "targets": ["misaligned"], "teacher": {"kind": "lora"}, "control": True,
        "trait": {"kind": "misalignment", "datasets": {"misaligned": "builtin:reckless", "benign": "builtin:careful"},
                  "samples_per_question": 2, "max_new_tokens": 4}})
    evaluate_model(config.trait, config, tiny_backend, None, "tiny", None)
    (bar,) = bars
    prompts = len(data.EVAL_QUESTIONS) + len(data.PERSONA_ITEMS) + len(truthful_items(config.trait))
    answers = len(data.EVAL_QUESTIONS) * 2
    assert _tasks(bar) == {"eval tiny (judge-free)": (prompts, prompts), "eval tiny (sampled)": (answers, answers)}
    assert len(bar.steps["eval tiny (sampled)"]) == -(-answers // 8)
