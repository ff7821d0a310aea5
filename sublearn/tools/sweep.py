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

The command is three modules: `sweep_grid` (the sweep file and its expansion into runs), this one
(running the grid points), `sweep_report` (pooling seeds and the report across the grid).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, stage_store, write_json
from sublearn.tools.sweep_grid import SEED_AXIS, SweepConfig, expand, run_order
from sublearn.tools.sweep_report import aggregate

log = logging.getLogger(__name__)


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
    threads = torch.get_num_threads()
    cwd = os.getcwd()
    # One thread count everywhere (unless the config sets one): CPU results then do not depend on
    # how many workers share the machine or which executor ran the point.
    torch.set_num_threads(task["threads"])
    # Before validating: relative model paths in the config resolve (and are checked) as for the driver.
    os.chdir(task["cwd"])
    try:
        config = PipelineConfig.model_validate(task["config"])
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


# Seconds `--ray HOST:PORT` waits for the cluster to answer (`--ray-timeout`): Ray itself retries for
# minutes when nothing listens there.
RAY_TIMEOUT = 5.0


def check_ray_address(address: str, timeout: float = RAY_TIMEOUT) -> None:
    """For `--ray HOST:PORT` (or ray://HOST:PORT): a one-line SublearnError unless something accepts a
    TCP connection there within `timeout` seconds. 'local' and 'auto' are not addresses: no check."""
    import socket

    if address in ("local", "auto"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SublearnError(f"--ray {address}: expected 'local', 'auto' or HOST:PORT of a Ray cluster's head "
                            "(e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SublearnError(f"--ray {address}: no Ray cluster reachable there within {timeout:g} s ({why}); start "
                            f"one with `ray start --head --port {port}` or give its address (--ray-timeout sets the "
                            "wait)") from None


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
    runs = read_json(path, {"runs": list})["runs"]
    if not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in runs):
        raise SublearnError(f"{path}: field 'runs' is not a list of runs with ids (damaged, or not a file sublearn "
                            "wrote); delete it and rerun: grid points already done are found again in runs/")
    return {r["id"]: r for r in runs}


def run_sweep(sweep: SweepConfig, source: Path, out: Path, *, workers: int | None = None,
              ray_address: str | None = None, ray_timeout: float = RAY_TIMEOUT, store: Path | None = None) -> Path:
    """Expand and run `sweep` (read from `source`) into `out`; returns the aggregated report's path.

    Grid points already done (sweep.json says so for the same config, and the run has its report)
    are skipped; the others run, each resuming its own stages. Raises a one-line SublearnError after
    writing the report when any grid point failed. `ray_timeout`: seconds a Ray cluster at HOST:PORT
    has to answer before anything runs (see `check_ray_address`). `store`: the stage store to share
    (default `out/store`); another sweep's store lets a new grid reuse that sweep's teachers and data."""
    from sublearn.rundir import config_hash

    points = expand(sweep, source)  # every config checked before any work
    if workers is not None and workers < 1:
        raise SublearnError(f"--workers {workers}: expected at least 1")
    if ray_address is not None:
        _import_ray()
        check_ray_address(ray_address, ray_timeout)
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
    todo = run_order([p for p in points if runs[p.id]["status"] != "done"])
    n_threads = {p.id: p.config.threads or 1 for p in todo}
    if workers is None:
        workers = max(1, min(len(todo), (os.cpu_count() or 1) // max(n_threads.values(), default=1)))
    log.info("sweep %s: %d runs, %d done, %d to run (%s)", sweep.name, len(points), len(points) - len(todo),
             len(todo), f"Ray {ray_address}" if ray_address else f"{workers} worker(s)")
    tasks = [{"id": p.id, "config": p.config.model_dump(mode="json"), "run_dir": str((out / "runs" / p.id).resolve()),
              "store": str((store or out / "store").resolve()), "threads": n_threads[p.id], "cwd": os.getcwd()}
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
