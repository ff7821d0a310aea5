"""`sublearn sweep SWEEP.yaml`: a grid of pipeline configs (and seeds), one run directory per grid
point, identical stages computed once, and one report across the grid.

    # sublearn/configs/sweeps/dose.yaml (`sublearn sweep sweeps/dose`)
    name: dose
    base: demo                      # a config file (relative to this file, else to the cwd), a shipped
                                    # config's name, or the config itself as a mapping
    set: {evaluate.n_questions: 20} # fixed overrides of every run (dotted keys, as with --set)
    grid:                           # dotted field -> values; the runs are the cartesian product
      train.steps: [12, 24, 48]
      defense: [{kind: none}, {kind: shuffle}]
    seeds: [1, 2, 3]                # one more axis: each run trains one student seed (train.seeds=[s])

    sublearn sweep sweeps/dose --out runs/dose            # a local process pool
    sublearn sweep sweeps/dose --out runs/dose --ray local  # the same on Ray

Layout of a sweep directory:
    sweep.json                  the expanded grid and each run's status (pending / done / failed)
    runs/<id>/                  one ordinary run directory per grid point, e.g. runs/train.steps=24,seed=1
    store/                      finished stages shared between runs (see `sublearn.rundir.stage_store`)
    pooled/<group>/report/      seed-level report of the runs that differ only in seed
    results.json, report.html   every run's main comparisons, the pooled seed-level comparisons (Holm
                                over the grid, placebo) and a dose curve per numeric grid axis

Every expanded config is validated before any work. Runs share stages through the store: a stage
(teacher, generation, filter, defense, students, evaluations) whose settings and inputs are those of
a stage another run finished is copied, not recomputed, and two workers never compute the same stage
at once. A rerun of an interrupted sweep runs only the grid points not done (and inside each, only
the stages not done). The same function (`run_point`) runs a grid point in this process, in a local
process pool and as a Ray task, with `threads` (default 1) torch threads, so the results are the same
(bit for bit on CPU) whichever executes it.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from sublearn.config import Frozen, _merge, _set_dotted, build_config, read_yaml
from sublearn.errors import SublearnError
from sublearn.rundir import read_json, stage_store, write_json
from sublearn.stages.config import PipelineConfig

log = logging.getLogger(__name__)

SEED_AXIS = "seed"
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
        return v

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
        return _point_id({k: v for k, v in self.values.items() if k != SEED_AXIS}) or "all"


def load_sweep(path: Path) -> SweepConfig:
    """Read and validate a sweep file (one-line errors naming the file and field)."""
    return build_config(SweepConfig, read_yaml(path), str(path))


def _format_value(v: Any) -> str:
    if isinstance(v, dict):
        kind = [str(v["kind"])] if "kind" in v else []
        return "+".join(kind + [f"{k}-{_format_value(x)}" for k, x in v.items() if k != "kind"]) or "{}"
    if isinstance(v, list):
        return "+".join(_format_value(x) for x in v) or "[]"
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return str(v)


def _point_id(values: dict[str, Any]) -> str:
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
    base = _base_data(sweep, source)
    discriminated = {n: str(f.discriminator) for n, f in PipelineConfig.model_fields.items() if f.discriminator}
    fixed: dict[str, Any] = {}
    for key, value in sweep.set.items():
        _set_dotted(fixed, key, value)
    base = _merge(base, fixed, discriminated)
    axes: list[tuple[str, list[Any]]] = list(sweep.grid.items())
    if sweep.seeds is not None:
        axes.append((SEED_AXIS, list(sweep.seeds)))
    points: list[Point] = []
    seen: dict[str, int] = {}
    for combo in itertools.product(*(values for _, values in axes)):
        values = dict(zip((name for name, _ in axes), combo, strict=True))
        pid = _point_id(values) or "run"
        if pid in seen:  # distinct values that read the same once made file-name safe
            seen[pid] += 1
            pid = f"{pid}-{seen[pid]}"
        seen.setdefault(pid, 1)
        tree: dict[str, Any] = {}
        for key, value in values.items():
            _set_dotted(tree, "train.seeds" if key == SEED_AXIS else key, [value] if key == SEED_AXIS else value)
        data = _merge(base, tree, discriminated)
        config = build_config(PipelineConfig, data, f"{source}: grid point {pid}")
        points.append(Point(pid, values, config))
    return points


def _order(points: list[Point]) -> list[Point]:
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


# ---------------------------------------------------------------------------------------------- run

_worker_logging = False


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    """Run one grid point: the ordinary pipeline into `task['run_dir']`, sharing stages through
    `task['store']`. The same function runs in this process, in a process pool and as a Ray task.

    task: {id, config (a PipelineConfig dump), run_dir, store, threads, cwd, subprocess}. Returns
    {id, status: 'done' | 'failed', seconds, error}; a failure is reported, not raised (other
    grid points go on), except an interrupt."""
    import torch

    from sublearn.stages import pipeline

    global _worker_logging
    if task.get("subprocess") and not _worker_logging:
        # A worker's progress bars would interleave with the others': warnings and errors only.
        from rich.console import Console

        from sublearn import logs

        logs.console = Console(stderr=True, force_terminal=False)
        logs.setup_logging(quiet=True)
        _worker_logging = True
    t0 = time.perf_counter()
    config = PipelineConfig.model_validate(task["config"])
    threads = torch.get_num_threads()
    cwd = os.getcwd()
    # One thread count everywhere (unless the config sets one): CPU results then do not depend on
    # how many workers share the machine or which executor ran the point.
    torch.set_num_threads(task["threads"])
    os.chdir(task["cwd"])  # relative model paths in the config resolve as they did for the driver
    try:
        with stage_store(Path(task["store"]), Path(task["run_dir"])):
            pipeline.run(config, Path(task["run_dir"]))
        return {"id": task["id"], "status": "done", "seconds": time.perf_counter() - t0, "error": None}
    except Exception as exc:  # noqa: BLE001 - reported per run; the sweep goes on with the others
        user = isinstance(exc, SublearnError)
        log.error("run %s failed: %s", task["id"], exc, exc_info=not user)
        return {"id": task["id"], "status": "failed", "seconds": time.perf_counter() - t0,
                "error": str(exc) if user else f"{type(exc).__name__}: {exc}"}
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)


def _execute(tasks: list[dict[str, Any]], workers: int, ray_address: str | None,
             done: Callable[[dict[str, Any]], None]) -> None:
    """Run `tasks`, calling `done(result)` as each finishes (in the order they finish)."""
    if ray_address is not None:
        _execute_ray(tasks, workers, ray_address, done)
    elif workers == 1:
        for task in tasks:
            done(run_point(task))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn: a fresh interpreter per worker (forking a process with torch threads is unsafe).
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = {pool.submit(run_point, {**t, "subprocess": True}) for t in tasks}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        done(fut.result())
            except BaseException:
                # Interrupted: start nothing more (each run's finished stages are kept for the rerun).
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SublearnError("--ray needs the ray package: pip install 'sublearn[ray]'") from None
    return ray


def _execute_ray(tasks: list[dict[str, Any]], workers: int, address: str,
                 done: Callable[[dict[str, Any]], None]) -> None:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        if address == "local":
            threads = max(t["threads"] for t in tasks)
            ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=True)
        else:
            try:
                ray.init(address=address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SublearnError(f"--ray {address}: cannot connect to a Ray cluster ({exc})") from None
    try:
        # Each task reserves as many of the cluster's CPUs as it runs torch threads.
        remote = {n: ray.remote(num_cpus=n)(run_point) for n in {t["threads"] for t in tasks}}
        refs = {remote[t["threads"]].remote({**t, "subprocess": True}): t["id"] for t in tasks}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    refs.pop(ref)
                    done(ray.get(ref))
        except BaseException:
            for ref in refs:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()


def _previous(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "sweep.json"
    if not path.is_file():
        return {}
    return {r["id"]: r for r in read_json(path).get("runs", [])}


def run_sweep(sweep: SweepConfig, source: Path, out: Path, *, workers: int | None = None,
              ray_address: str | None = None) -> Path:
    """Expand and run `sweep` (read from `source`) into `out`; returns the aggregated report's path.

    Grid points already done (sweep.json says so for the same config, and the run has its report)
    are skipped; the others run, each resuming its own stages. Raises a one-line SublearnError after
    writing the report when any grid point failed."""
    from sublearn.config import config_hash

    points = expand(sweep, source)  # every config checked before any work
    if workers is not None and workers < 1:
        raise SublearnError(f"--workers {workers}: expected at least 1")
    if ray_address is not None:
        _import_ray()
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous(out)
    runs: dict[str, dict[str, Any]] = {}
    for p in points:
        h = config_hash(p.config)
        old = previous.get(p.id, {})
        complete = (old.get("status") == "done" and old.get("config_hash") == h
                    and (out / "runs" / p.id / "report" / "results.json").is_file())
        runs[p.id] = {"id": p.id, "values": p.values, "group": p.group, "run_dir": f"runs/{p.id}",
                      "config_hash": h, "status": "done" if complete else "pending",
                      "seconds": old.get("seconds") if complete else None, "error": None}

    def save() -> None:
        write_json(out / "sweep.json", {"name": sweep.name, "source": str(source),
                                        "sweep": sweep.model_dump(mode="json"),
                                        "axes": [*sweep.grid, *([SEED_AXIS] if sweep.seeds else [])],
                                        "runs": list(runs.values())})

    save()
    todo = _order([p for p in points if runs[p.id]["status"] != "done"])
    n_threads = {p.id: p.config.threads or 1 for p in todo}
    if workers is None:
        workers = max(1, min(len(todo), (os.cpu_count() or 1) // max(n_threads.values(), default=1)))
    log.info("sweep %s: %d runs, %d done, %d to run (%s)", sweep.name, len(points), len(points) - len(todo),
             len(todo), f"Ray {ray_address}" if ray_address else f"{workers} worker(s)")
    tasks = [{"id": p.id, "config": p.config.model_dump(mode="json"), "run_dir": str((out / "runs" / p.id).resolve()),
              "store": str((out / "store").resolve()), "threads": n_threads[p.id], "cwd": os.getcwd()}
             for p in todo]

    def finished(result: dict[str, Any]) -> None:
        runs[result["id"]].update(status=result["status"], seconds=result["seconds"], error=result["error"])
        save()
        log.info("sweep: %s %s (%.0f s)", result["id"], result["status"], result["seconds"])

    if tasks:
        _execute(tasks, workers, ray_address, finished)
    report = aggregate(sweep, out, points, runs)
    failed = [r for r in runs.values() if r["status"] == "failed"]
    if failed:
        raise SublearnError(f"{len(failed)} of {len(points)} runs failed (first: {failed[0]['id']}: "
                            f"{failed[0]['error']}); see {out / 'sweep.json'}; rerun to retry them")
    return report


# ---------------------------------------------------------------------------------------- report


def _main_cells(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A report's main comparisons (treatment vs control on its own animal) as flat rows."""
    rows = []
    for c in [*data.get("comparisons", []), *data.get("specificity_vs_students", []), *data.get("cross_model", [])]:
        cell = c.get("teacher_forced", {}).get("plain", {})
        sampled = c.get("sampled", {}).get("plain", {})
        rows.append({"treatment": c["treatment"], "control": c["control"], "animal": c["animal"],
                     "label": f"{c['treatment']} vs {c['control']}", "teacher_forced": cell,
                     "sampled_effect": sampled.get("effect"), "sampled_p": sampled.get("p")})
    return rows


def _pool(out: Path, group: str, members: list[Point]) -> dict[str, Any] | None:
    """The seed-level analysis of runs that differ only in seed: their students' evaluations in one
    directory (out/pooled/<group>), analysed by the pipeline's own report with every seed."""
    from sublearn.rundir import MANIFEST
    from sublearn.stages import report

    pdir = out / "pooled" / group
    specs: dict[str, dict[str, Any]] = {}
    seeds: list[int] = []
    for p in members:
        rdir = out / "runs" / p.id
        seeds += [s for s in p.config.train.seeds if s not in seeds]
        for path in sorted((rdir / "evaluate").glob("*/results.json")):
            if not (path.parent / MANIFEST).is_file():
                continue
            spec = read_json(path).get("spec")
            # Shared models (base, teachers) are the same in every run: the first one's is kept.
            if spec is None or spec["name"] in specs:
                continue
            specs[spec["name"]] = spec
            dst = pdir / "evaluate" / spec["name"] / "results.json"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            dst.write_bytes(path.read_bytes())
    if not specs:
        return None
    first = members[0].config
    config = first.model_copy(update={"train": first.train.model_copy(update={"seeds": sorted(seeds)})})
    report.run(config, pdir, list(specs.values()))
    data: dict[str, Any] = read_json(pdir / "report" / "results.json")
    return data


def aggregate(sweep: SweepConfig, out: Path, points: list[Point], runs: dict[str, dict[str, Any]]) -> Path:
    """Write `out/results.json` and `out/report.html` from the finished runs; returns the HTML path."""
    from sublearn.analysis.stats import adjust

    rows = []
    for p in points:
        row: dict[str, Any] = {**runs[p.id], "comparisons": [], "dose": []}
        path = out / "runs" / p.id / "report" / "results.json"
        if runs[p.id]["status"] == "done" and path.is_file():
            data = read_json(path)
            row["comparisons"] = _main_cells(data)
            for d in data.get("dose", []):
                for kind in ("vs_neutral", "vs_students"):
                    if kind in d:
                        row["dose"].append({"updates": d["updates"], "target": d["target"], "kind": kind,
                                            "teacher_forced": d[kind].get("teacher_forced", {}).get("plain", {})})
        rows.append(row)
    groups: dict[str, list[Point]] = {}
    for p in points:
        if runs[p.id]["status"] == "done":
            groups.setdefault(p.group, []).append(p)
    pooled = []
    for group, members in groups.items():
        data = _pool(out, group, members)
        if data is None:
            continue
        values = {k: v for k, v in members[0].values.items() if k != SEED_AXIS}
        pooled.append({"group": group, "values": values, "runs": [m.id for m in members],
                       "seeds": [s for m in members for s in m.config.train.seeds],
                       "comparisons": _main_cells(data), "placebo": data.get("placebo", []),
                       "report": f"pooled/{group}/report/report.html"})
    # Holm over the whole grid: every pooled main comparison is one test of the family.
    cells = [c["teacher_forced"] for g in pooled for c in g["comparisons"] if c["teacher_forced"]]
    for cell, p_adj in zip(cells, adjust([c.get("p") for c in cells], "holm"), strict=True):
        cell["p_holm_grid"] = p_adj
    dose = _grid_dose(sweep, pooled)
    result = {"name": sweep.name, "sweep": sweep.model_dump(mode="json"),
              "axes": [*sweep.grid, *([SEED_AXIS] if sweep.seeds else [])], "runs": rows, "pooled": pooled,
              "dose": dose}
    write_json(out / "results.json", result)
    page = _render(result)
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def _numeric(values: list[Any]) -> bool:
    return len(values) >= 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _grid_dose(sweep: SweepConfig, pooled: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """For each numeric grid axis: the pooled effect (and CI) of each main comparison against the
    axis value, one curve per comparison and per combination of the other axes' values."""
    out: dict[str, list[dict[str, Any]]] = {}
    for axis, values in sweep.grid.items():
        if not _numeric(values):
            continue
        curves: dict[str, dict[str, Any]] = {}
        for g in pooled:
            others = {k: v for k, v in g["values"].items() if k != axis}
            for c in g["comparisons"]:
                cell = c["teacher_forced"]
                if not cell or cell.get("effect") is None:
                    continue
                label = f"{c['label']} ({c['animal']})" + (f" | {_point_id(others)}" if others else "")
                curve = curves.setdefault(label, {"label": label, "comparison": c["label"], "animal": c["animal"],
                                                  "others": others, "points": []})
                curve["points"].append({"value": g["values"][axis], "effect": cell["effect"],
                                        "ci": cell.get("ci"), "p": cell.get("p"),
                                        "p_holm_grid": cell.get("p_holm_grid"), "n_seeds": cell.get("n_seeds"),
                                        "group": g["group"]})
        for curve in curves.values():
            curve["points"].sort(key=lambda q: q["value"])
        out[axis] = list(curves.values())
    return out


def _dose_png(axis: str, curves: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sublearn.stages.report import _png

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for curve in curves:
        pts = curve["points"]
        x = np.array([q["value"] for q in pts], dtype=float)
        y = np.array([q["effect"] for q in pts], dtype=float)
        lo = np.array([(q["ci"] or [None, None])[0] if (q["ci"] or [None])[0] is not None else q["effect"]
                       for q in pts], dtype=float)
        hi = np.array([(q["ci"] or [None, None])[1] if (q["ci"] or [None, None])[1] is not None else q["effect"]
                       for q in pts], dtype=float)
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=curve["label"])
    ax.axhline(0, color="#999", lw=0.8)
    values = [q["value"] for c in curves for q in c["points"]]
    if values and min(values) > 0 and max(values) / min(values) >= 8:
        ax.set_xscale("log", base=2 if all(isinstance(v, int) for v in values) else 10)
    ax.set_xlabel(axis)
    ax.set_ylabel("effect, log2 ratio (95% CI)")
    ax.set_title(f"pooled seed-level effect vs {axis}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _render(result: dict[str, Any]) -> str:
    from sublearn.stages.report import _CELL_HEADERS, _cell_columns, _fmt, _table, html_page

    runs = result["runs"]
    counts = {s: sum(r["status"] == s for r in runs) for s in ("done", "failed", "pending")}
    parts = [f"<h1>sublearn sweep: {html.escape(result['name'])}</h1>",
             f"<p>{len(runs)} runs over axes {html.escape(', '.join(result['axes']) or '(none)')}: "
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ". Each run is an ordinary run "
             "directory under <code>runs/</code>; stages identical between runs were computed once.</p>"]
    if result["dose"]:
        parts.append("<h2>Dose curves: pooled effect against each numeric grid axis</h2><p>Effect: the "
                     "seed-level comparison of the runs that differ only in seed (teacher-forced, log2 ratio "
                     "of geometric means), with its hierarchical bootstrap 95% CI.</p>")
        for axis, curves in result["dose"].items():
            if not curves:
                continue
            parts.append(f'<h3>{html.escape(axis)}</h3><img src="data:image/png;base64,{_dose_png(axis, curves)}">')
            parts.append(_table([axis, "comparison", "effect (log2)", "95% CI", "p (seed-level)", "p (Holm, grid)"],
                                [[q["value"], c["label"], _fmt(q["effect"]),
                                  f"[{_fmt((q['ci'] or [None, None])[0])}, {_fmt((q['ci'] or [None, None])[1])}]",
                                  _fmt(q["p"]), _fmt(q["p_holm_grid"])] for c in curves for q in c["points"]]))
    if result["pooled"]:
        parts.append("<h2>Seed-level analysis across the grid</h2><p>Runs that differ only in the student "
                     "seed are pooled: each arm's students are those of all the group's runs, compared with "
                     "the pipeline report's test (unit: the trained student). p (Holm): within the group's "
                     "report; p (Holm, grid): over every comparison of this table.</p>" +
                     _table(["group", "treatment", "control", "animal", *_CELL_HEADERS, "p (Holm, grid)"],
                            [[g["group"], c["treatment"], c["control"], c["animal"],
                              *_cell_columns(c["teacher_forced"]), _fmt(c["teacher_forced"].get("p_holm_grid"))]
                             for g in result["pooled"] for c in g["comparisons"]]))
        placebo = [[g["group"], r["arm"], r["animal"], *_cell_columns(r.get("teacher_forced", {}))]
                   for g in result["pooled"] for r in g["placebo"]]
        if placebo:
            parts.append("<h3>Placebo: two halves of one arm's pooled students</h3>" +
                         _table(["group", "arm", "animal", *_CELL_HEADERS], placebo))
        links = "".join(f'<li><a href="{html.escape(g["report"])}">{html.escape(g["group"])}</a> '
                        f'({len(g["runs"])} runs)</li>' for g in result["pooled"])
        parts.append(f"<p>Full pooled reports:</p><ul>{links}</ul>")
    rows = []
    for r in runs:
        cells = r["comparisons"] or [{}]
        for c in cells:
            tf = c.get("teacher_forced", {}) if c else {}
            ci = tf.get("ci") or [None, None]
            rows.append([r["id"], r["status"], _fmt(r["seconds"], 3) if r["seconds"] is not None else "-",
                         c.get("label", "-"), c.get("animal", "-"),
                         " vs ".join(str(n) for n in tf.get("n_seeds", [])) or "-", _fmt(tf.get("effect")),
                         f"[{_fmt(ci[0])}, {_fmt(ci[1])}]", _fmt(tf.get("p")), _fmt(c.get("sampled_effect"))])
    parts.append("<h2>Runs</h2><p>Each run's own report (its students only).</p>" +
                 _table(["run", "status", "seconds", "comparison", "animal", "students", "effect (log2)", "95% CI",
                         "p (seed-level)", "sampled effect"], rows))
    links = "".join(f'<li><a href="{html.escape(r["run_dir"])}/report/report.html">{html.escape(r["id"])}</a></li>'
                    for r in runs if r["status"] == "done")
    parts.append(f"<ul>{links}</ul>")
    failed = [[r["id"], r["error"]] for r in runs if r["status"] == "failed"]
    if failed:
        parts.append("<h2>Failed runs</h2>" + _table(["run", "error"], failed))
    return html_page(parts)
