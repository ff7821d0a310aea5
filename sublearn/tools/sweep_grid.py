"""A sweep file (`SweepConfig`: base, set, grid, seeds) and its expansion into grid points, each a
validated pipeline config with a readable id (e.g. `train.steps=24,seed=1`), in an order that lets
runs share stages. Bad input is caught here, before any run starts.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from sublearn.config import Frozen, build_config, check_seeds, merge, read_yaml, set_dotted
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig

SEED_AXIS = "seed"
# Every grid point is a validated config held in memory and a run directory: far beyond any study
# (the dose sweep has 18), and a line of a few values per axis must not expand to millions.
MAX_POINTS = 10_000


# Sections whose settings reach only the students and their evaluations: grid points that differ
# only there share every upstream stage (teachers, data), which decides the order runs start in.
_STUDENT_SECTIONS = ("train", "evaluate", "name", "threads")


class SweepConfig(Frozen):
    """A sweep file: a base pipeline config, fixed overrides, a grid of overrides and seeds."""

    name: str = Field("sweep", description="a label for the aggregated report")
    base: str | dict[str, Any] = Field(
        ..., description="the pipeline config every run starts from: a YAML path (relative to the sweep "
        "file, else to the working directory), a shipped config's name (demo, study/dose) or the config "
        "itself as a mapping")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides applied to every run, dotted "
                                "field -> value (like `sublearn run --set`)")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted field -> values; one run "
                                       "per combination (cartesian product, in the order written)")
    seeds: list[int] | None = Field(None, min_length=1, description="student seeds, a last grid axis: each "
                                    "run trains one seed (train.seeds=[s]); runs differing only in seed are "
                                    "pooled in the seed-level analysis")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid axis '{key}' has no values")
            dumped = [json.dumps(x, sort_keys=True, default=str) for x in values]
            if len(set(dumped)) != len(dumped):
                raise ValueError(f"grid axis '{key}' repeats a value: {values}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v if v is None else check_seeds(v, "seeds")

    @model_validator(mode="after")
    def _axes(self) -> SweepConfig:
        both = set(self.grid) & set(self.set)
        if both:
            raise ValueError(f"'{sorted(both)[0]}' is both in set and in grid; keep it in one")
        if self.seeds is not None and "train.seeds" in {*self.grid, *self.set}:
            raise ValueError("seeds: sets train.seeds of each run; drop train.seeds from grid/set")
        if SEED_AXIS in self.grid:
            raise ValueError("grid: 'seed' would be the pipeline's master seed; list student seeds under seeds:")
        return self


@dataclass(frozen=True)
class Point:
    """One grid point: its readable id (the run directory's name), axis values and validated config."""

    id: str
    values: dict[str, Any]
    config: PipelineConfig

    @property
    def group(self) -> str:
        """The id without the seed: runs of one group differ only in the student seed."""
        return point_id({k: v for k, v in self.values.items() if k != SEED_AXIS}) or "all"


def load_sweep(path: Path) -> SweepConfig:
    """Read and validate a sweep file (one-line errors naming the file and field; at most `MAX_POINTS`
    grid points)."""
    sweep = build_config(SweepConfig, read_yaml(path), str(path))
    check_size(sweep, path)
    return sweep


def grid_size(sweep: SweepConfig) -> int:
    """The number of grid points, from the axis lengths alone (nothing is expanded)."""
    return math.prod(len(values) for values in sweep.grid.values()) * len(sweep.seeds or [None])


def check_size(sweep: SweepConfig, source: Path) -> None:
    """Refuse, in one line naming the axes and their product, a sweep of more than `MAX_POINTS` points."""
    n = grid_size(sweep)
    if n > MAX_POINTS:
        axes = [f"{key} {len(values)}" for key, values in sweep.grid.items()]
        axes += [f"seeds {len(sweep.seeds)}"] if sweep.seeds else []
        raise SublearnError(f"{source}: field 'grid': {' x '.join(axes)} = {n:,} grid points; at most "
                            f"{MAX_POINTS:,} in one sweep: split it into several sweeps")


def _format_value(v: Any) -> str:
    if isinstance(v, dict):
        kind = [str(v["kind"])] if "kind" in v else []
        return "+".join(kind + [f"{k}-{_format_value(x)}" for k, x in v.items() if k != "kind"]) or "{}"
    if isinstance(v, list):
        return "+".join(_format_value(x) for x in v) or "[]"
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return str(v)


def point_id(values: dict[str, Any]) -> str:
    text = ",".join(f"{k}={_format_value(v)}" for k, v in values.items())
    text = re.sub(r"[^A-Za-z0-9._=,+@-]", "_", text)
    if len(text) > 160:  # a file name must stay well below 255 bytes
        import hashlib

        text = f"{text[:150]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return text


def _base_data(sweep: SweepConfig, source: Path) -> dict[str, Any]:
    if isinstance(sweep.base, dict):
        return dict(sweep.base)
    from sublearn.configs import resolve

    relative = source.parent / sweep.base  # a file beside the sweep, else as `resolve` finds it
    return read_yaml(relative if relative.is_file() else resolve(sweep.base, f"{source}: field 'base': config"))


def expand(sweep: SweepConfig, source: Path) -> list[Point]:
    """Every grid point, validated: a one-line error naming the point and field before any work."""
    check_size(sweep, source)  # before anything is expanded
    base = _base_data(sweep, source)
    discriminated = {n: str(f.discriminator) for n, f in PipelineConfig.model_fields.items() if f.discriminator}
    fixed: dict[str, Any] = {}
    for key, value in sweep.set.items():
        set_dotted(fixed, key, value)
    base = merge(base, fixed, discriminated)
    axes: list[tuple[str, list[Any]]] = list(sweep.grid.items())
    if sweep.seeds is not None:
        axes.append((SEED_AXIS, list(sweep.seeds)))
    points: list[Point] = []
    seen: dict[str, int] = {}
    for combo in itertools.product(*(values for _, values in axes)):
        values = dict(zip((name for name, _ in axes), combo, strict=True))
        pid = point_id(values) or "run"
        if pid in seen:  # distinct values that read the same once made file-name safe
            seen[pid] += 1
            pid = f"{pid}-{seen[pid]}"
        seen.setdefault(pid, 1)
        tree: dict[str, Any] = {}
        for key, value in values.items():
            set_dotted(tree, "train.seeds" if key == SEED_AXIS else key, [value] if key == SEED_AXIS else value)
        data = merge(base, tree, discriminated)
        config = build_config(PipelineConfig, data, f"{source}: grid point {pid}")
        points.append(Point(pid, values, config))
    return points


def run_order(points: list[Point]) -> list[Point]:
    """Round robin over groups of points that share their upstream stages (same teachers and data),
    so that parallel workers start on different teachers instead of all waiting for one's lock."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        data = p.config.model_dump(mode="json", exclude=set(_STUDENT_SECTIONS))
        groups.setdefault(json.dumps(data, sort_keys=True, default=str), []).append(p)
    queues = list(groups.values())
    out: list[Point] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out
