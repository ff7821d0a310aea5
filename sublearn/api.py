"""The Python API: drive sublearn from a notebook or a script, and read results as pandas DataFrames.

    import sublearn
    run = sublearn.run("demo", "runs/demo", overrides={"train.steps": 24})   # a shipped name, a YAML path,
    run.status()                    # {stage directory: 'done' | 'stale' | 'missing' | ...}   a mapping or a config
    run.values()                    # report/values.csv as a DataFrame (one row per evaluated value)
    run.comparisons()               # report/comparisons.csv (effect, CI, p, adjusted p, MDE, unit, n)
    run.report_path                 # report/report.html
    same = sublearn.load_run("runs/demo")                  # a finished (or partial) run directory

    sublearn.run_mnist(out="runs/mnist", overrides={"seeds": 2})    # -> dict (the MNIST results)
    sublearn.audit("kept.jsonl", "runs/demo/teacher/owl", "hf/smollm2-135m", "runs/audit")  # -> Audit
    sublearn.sweep("sweeps/dose", "runs/sweeps/dose")                                        # -> Sweep

Each function does what the command of the same name does, with the same checks: a bad config, field
or output directory is a one-line `SublearnError` before any work, and a rerun resumes. DataFrames need
pandas (`pip install pandas`), imported only when a table is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig


def _overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    from sublearn.config import set_dotted

    tree: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    return tree


def load_config(config: str | Path | dict[str, Any] | PipelineConfig, overrides: dict[str, Any] | None = None,
                model: type[Any] = PipelineConfig) -> Any:
    """A validated config from a shipped name ('demo'), a YAML path, a mapping or a config object, with
    dotted `overrides` ({'train.steps': 24}) applied on top (as `--set`)."""
    from sublearn.config import build_config, merge, read_yaml
    from sublearn.configs import resolve

    if isinstance(config, model):
        data: dict[str, Any] = config.model_dump(mode="json")
        source = "config"
    elif isinstance(config, dict):
        data, source = dict(config), "config"
    elif isinstance(config, str | Path):
        path = resolve(str(config), "config")
        data, source = read_yaml(path), str(path)
    else:
        raise SublearnError(f"config: expected a shipped name, a YAML path, a mapping or a {model.__name__}, "
                            f"got {type(config).__name__}")
    discriminated = {n: str(f.discriminator) for n, f in model.model_fields.items() if f.discriminator}
    return build_config(model, merge(data, _overrides(overrides), discriminated), source)


def _checked_out(command: str, out: str | Path) -> Path:
    from sublearn.cli import checked_out

    return checked_out(command, Path(out))


def _table(path: Path) -> Any:
    try:
        import pandas as pd
    except ModuleNotFoundError:
        raise SublearnError("tables as DataFrames need pandas: pip install pandas (or read the CSV yourself: "
                            f"{path})") from None
    if not path.is_file():
        raise SublearnError(f"{path}: not found; the run's report has not been written (finish the run, or "
                            "`sublearn report RUN_DIR`)")
    return pd.read_csv(path)


@dataclass(frozen=True)
class Run:
    """A run directory: its config, stage states, report and tidy tables."""

    dir: Path

    @property
    def config(self) -> PipelineConfig:
        from sublearn.stages.pipeline import run_config

        return run_config(self.dir)

    @property
    def report_path(self) -> Path:
        return self.dir / "report" / "report.html"

    def status(self) -> dict[str, str]:
        """{stage directory: state} (see `sublearn status`)."""
        from sublearn.stages.pipeline import status

        return dict(status(self.config, self.dir))

    @property
    def done(self) -> bool:
        """Every stage done and the report written."""
        return all(s == "done" for s in self.status().values()) and self.report_path.is_file()

    def results(self) -> dict[str, Any]:
        """report/results.json: everything the report shows, as data."""
        from sublearn.rundir import read_json

        return dict(read_json(self.dir / "report" / "results.json"))

    def values(self) -> Any:
        """report/values.csv as a DataFrame (`sublearn.stages.report.tidy`)."""
        return _table(self.dir / "report" / "values.csv")

    def comparisons(self) -> Any:
        """report/comparisons.csv as a DataFrame (`sublearn.stages.report.tidy`)."""
        return _table(self.dir / "report" / "comparisons.csv")


def run(config: str | Path | dict[str, Any] | PipelineConfig, out: str | Path, overrides: dict[str, Any] | None = None,
        *, only: list[str] | None = None, store: str | Path | None = None) -> Run:
    """`sublearn run`: run (or resume) the pipeline of `config` into `out`; `only`: some stages; `store`: share
    finished stages with other runs through that directory (a sweep's store/)."""
    from sublearn.stages import pipeline

    cfg = load_config(config, overrides)
    path = _checked_out("run", out)
    if store is None:
        pipeline.run(cfg, path, only=only)
    else:
        from sublearn.rundir import check_store, stage_store

        with stage_store(check_store(Path(store), "store"), path):
            pipeline.run(cfg, path, only=only)
    return Run(path)


def load_run(path: str | Path) -> Run:
    """A run directory `sublearn run` wrote (its config.json is read and validated now)."""
    found = Run(Path(path))
    found.config  # noqa: B018 - a one-line error now for a directory that is not a run
    return found


def run_mnist(config: str | Path | dict[str, Any] | None = None, out: str | Path = "runs/mnist",
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`sublearn mnist`: the paper's MNIST auxiliary-logit experiment; returns its results (results.json).
    (Not `sublearn.mnist`: that name is the experiment's package.)"""
    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.experiment import run as experiment

    cfg = load_config(config if config is not None else {}, overrides, MnistConfig)
    result: dict[str, Any] = experiment(cfg, _checked_out("mnist", out))
    return result


@dataclass(frozen=True)
class Audit:
    """An audit directory: its results and page."""

    dir: Path

    @property
    def report_path(self) -> Path:
        return self.dir / "report.html"

    def results(self) -> dict[str, Any]:
        from sublearn.rundir import read_json

        return dict(read_json(self.dir / "results.json"))


def audit(data: str | Path, teacher: str | Path, base: str, out: str | Path, **options: Any) -> Audit:
    """`sublearn audit`: `options` are `sublearn.tools.audit.run`'s (trait, probe_seeds, control, ...)."""
    from sublearn.tools.audit import run as run_audit

    options.setdefault("trait", None)
    options.setdefault("probe_seeds", [1, 2, 3])
    if options.get("control") is not None:
        options["control"] = Path(options["control"])
    path = _checked_out("audit", out)
    run_audit(Path(data), str(teacher), base, path, **options)
    return Audit(path)


@dataclass(frozen=True)
class Sweep:
    """A sweep directory: its grid points as runs, and the aggregated results."""

    dir: Path

    def results(self) -> dict[str, Any]:
        from sublearn.rundir import read_json

        return dict(read_json(self.dir / "results.json"))

    def runs(self) -> dict[str, Run]:
        """{grid point id: Run}."""
        return {r["id"]: Run(self.dir / r["run_dir"]) for r in self.results()["runs"]}

    def comparisons(self) -> Any:
        """The sweep's comparisons.csv as a DataFrame: every grid point's pooled comparisons and placebos
        (the point in `source`), adjusted by Holm over the grid; the same columns as a run's."""
        return _table(self.dir / "comparisons.csv")


def sweep(sweep_file: str | Path, out: str | Path, *, workers: int | None = None, ray: str | None = None,
          store: str | Path | None = None) -> Sweep:
    """`sublearn sweep`: run (or resume) a sweep file (a shipped name like 'sweeps/dose', or a path)."""
    from sublearn.configs import resolve
    from sublearn.rundir import check_store
    from sublearn.tools.sweep import run_sweep
    from sublearn.tools.sweep_grid import load_sweep

    path = resolve(str(sweep_file), "sweep")
    target = _checked_out("sweep", out)
    run_sweep(load_sweep(path), path, target, workers=workers, ray_address=ray,
              store=check_store(Path(store), "store") if store is not None else None)
    return Sweep(target)
