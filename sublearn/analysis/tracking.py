"""Experiment tracking: the pipeline's metrics in a tracker, logged as its stages finish.

    tracking: {kind: trackio, project: sublearn, dir: runs/trackio}     # in a pipeline config

    tracker = open_tracker(config, out)        # None when tracking.kind is none
    tracker.log_training(out, students)        # every student's loss and gradient norm per update
    tracker.log_evaluations(out, specs)        # each evaluated model's mean P(reply starts with animal)
    tracker.log_claims(out)                    # the report's comparisons: effect, CI, p, adjusted p, MDE
    tracker.finish()

The metrics are read from the files the stages wrote (train/<student>/seed<n>/train_log.jsonl,
evaluate/<model>/results.json, report/comparisons.csv), so the tracker sees what the run directory
holds, whichever process computed it (the pipeline's workers, a sweep's store). One tracker run per
pipeline run, named `<config name>/<run directory name>`. trackio (`pip install trackio`) writes a local
SQLite store per project, offline; open it with `trackio show --project NAME` or read it back with
`trackio.SQLiteStorage.get_logs(project, run)` (what the test does). The tracker is imported only when
tracking is on, with a one-line error naming what to install.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError
from sublearn.rundir import read_json, read_jsonl


class Tracker:
    """A trackio run (see the module docstring)."""

    def __init__(self, project: str, name: str, config: dict[str, Any], directory: str | None) -> None:
        if directory is not None:
            where = str(Path(directory).resolve())
            module = sys.modules.get("trackio")
            if module is not None and str(getattr(module, "TRACKIO_DIR", where)) != where:
                raise SublearnError(f"tracking.dir {directory}: trackio was already loaded in this process with "
                                    f"its store at {module.TRACKIO_DIR}; run in a new process")
            os.environ["TRACKIO_DIR"] = where  # read by trackio when it is first imported
        try:
            import trackio
        except ModuleNotFoundError:
            raise SublearnError("tracking.kind: trackio needs the trackio package: pip install trackio (or "
                                "'sublearn[tracking]'); or set tracking.kind: none") from None
        self._trackio = trackio
        self.project, self.name = project, name
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would mix with the CLI's output
            trackio.init(project=project, name=name, config=config, embed=False, auto_log_cpu=False,
                         auto_log_gpu=False, resume="allow")

    def _log(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(float(v))}
        if clean:
            self._trackio.log(clean, step=step)

    def log_training(self, out: Path, students: Iterable[dict[str, Any]]) -> None:
        """Each student's loss and gradient norm per update, as train/<student>-s<seed>/{loss,grad_norm}."""
        for st in students:
            path = out / "train" / str(st["student"]) / f"seed{st['seed']}" / "train_log.jsonl"
            if not path.is_file():
                continue  # an API student has no local log
            key = f"train/{st['student']}-s{st['seed']}"
            for rec in read_jsonl(path):
                self._log({f"{key}/loss": rec["loss"], f"{key}/grad_norm": rec.get("grad_norm", math.nan)},
                          step=int(rec["step"]))

    def log_evaluations(self, out: Path, specs: Iterable[dict[str, Any]]) -> None:
        """Each evaluated model's mean teacher-forced value per item and variant, as eval/<model>/<variant>/<item>."""
        for spec in specs:
            path = out / "evaluate" / str(spec["name"]) / "results.json"
            if not path.is_file():
                continue
            forced = read_json(path).get("teacher_forced") or {}
            self._log({f"eval/{spec['name']}/{variant}/{item}": sum(values) / len(values)
                       for variant, items in forced.items() if isinstance(items, dict)
                       for item, values in items.items() if isinstance(values, list) and values})

    def log_claims(self, out: Path) -> None:
        """The report's comparisons (report/comparisons.csv), as claim/<family>/<label>/<metric>/<statistic>."""
        import csv

        path = out / "report" / "comparisons.csv"
        if not path.is_file():
            return
        metrics: dict[str, float] = {}
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                key = f"claim/{row['family']}/{row['label']}/{row['metric']}" + (
                    f"/{row['variant']}" if row["variant"] else "")
                for stat in ("effect", "ci_low", "ci_high", "p", "p_adjusted", "mde"):
                    if row[stat] not in ("", "nan"):
                        metrics[f"{key}/{stat}"] = float(row[stat])
        self._log(metrics)

    def finish(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self._trackio.finish()


def open_tracker(config: Any, out: Path) -> Tracker | None:
    """The tracker `config.tracking` asks for (None when off), its run named after the config and `out`."""
    t = config.tracking
    if t.kind == "none":
        return None
    return Tracker(t.project, f"{config.name}/{out.resolve().name}", config.model_dump(mode="json"), t.dir)
