"""Defend stage: apply `config.defense` to one teacher's kept data (see `sublearn.defenses`).

    path = data_dir(config, out, "owl") / "kept.jsonl"   # what the students of 'owl' learn from
    run(config, out, "owl")                              # -> out/defend/owl/kept.jsonl, defend.json

With no defense (kind: none) nothing is written and students read `filter/<teacher>/kept.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from sublearn.stages.config import PipelineConfig


def data_dir(config: PipelineConfig, out: Path, teacher: str) -> Path:
    """The stage directory whose `kept.jsonl` the students of `teacher`'s data learn from."""
    return out / ("filter" if config.defense.kind == "none" else "defend") / teacher
