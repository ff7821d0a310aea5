"""Classify stage: can a classifier tell a trait teacher's kept data from a control teacher's?

    for treatment, control in pairs(config):          # e.g. ("owl", "control"), ("owl", "neutral")
        run(config, out, treatment, control)          # -> out/classify/owl-vs-control/result.json

(Being written: see the issue-12 work in progress.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublearn.stages.config import PipelineConfig


def enabled(config: PipelineConfig) -> bool:
    """Whether any classifier is asked for (`classify.statistical` or `classify.llm`)."""
    return config.classify.statistical or config.classify.llm is not None


def pairs(config: PipelineConfig) -> list[tuple[str, str]]:
    """(trait teacher, control teacher) pairs: every target against every control teacher of the run."""
    from sublearn.stages.pipeline import control_role, teacher_names

    controls = [n for n in teacher_names(config) if control_role(config, n)]
    return [(t, c) for t in config.targets for c in controls]


def stage_dir(out: Path, treatment: str, control: str) -> Path:
    return out / "classify" / f"{treatment}-vs-{control}"


def stage_key(config: PipelineConfig, out: Path, treatment: str, control: str) -> tuple[dict[str, Any], dict[str, str]]:
    raise NotImplementedError


def run(config: PipelineConfig, out: Path, treatment: str, control: str) -> dict[str, Any]:
    raise NotImplementedError
