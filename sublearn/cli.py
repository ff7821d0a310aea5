"""The `sublearn` command line. Every user error ends as one line `error: ...` and exit status 2.

Configs are named like `demo` or `paper/owl_qwen25_7b` (the YAML files shipped in the package; see
`sublearn list`) or given as a path (a file that exists wins over a name)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sublearn.errors import SublearnError

if TYPE_CHECKING:
    from sublearn.pipeline_config import PipelineConfig

log = logging.getLogger("sublearn")

EXAMPLES = """examples:
  sublearn demo                                      # MNIST + the LM demo, one report (~30 min, 2 cores)
  sublearn list                                      # shipped configs, embedded models, backends
  sublearn run quick --out runs/quick                # the paper's recipe at CPU scale
  sublearn run paper/owl_qwen25_7b --set train.seeds=[1]
  sublearn run my.yaml --only evaluate --only report # a config file of your own
  sublearn status runs/quick                         # what is done, stale, missing
  sublearn report runs/quick                         # re-render a run's report from its files
  sublearn sweep sweeps/dose --workers 2             # a grid of runs, shared stages
"""

# Per subcommand: a few example lines for its --help.
SUB_EXAMPLES = {
    "mnist": ["sublearn mnist --out runs/mnist", "sublearn mnist --config mnist --set seeds=10 --theorem"],
    "run": ["sublearn run quick --out runs/quick", "sublearn run demo --set generate.n_prompts=64",
            "sublearn run sublearn/configs/study/dose.yaml   # or any YAML path",
            "sublearn run quick --out runs/quick --only evaluate --only report"],
    "status": ["sublearn status runs/quick", "sublearn status runs/quick --verify   # also rehash every output"],
    "report": ["sublearn report runs/demo", "sublearn report runs/quick && xdg-open runs/quick/report/report.html"],
    "list": ["sublearn list", "sublearn list configs"],
    "sweep": ["sublearn sweep sweeps/dose --workers 2", "sublearn sweep my_sweep.yaml --ray local"],
    "train": ["sublearn train quick --out runs/quick",
              "accelerate launch --multi_gpu --num_processes 8 -m sublearn train paper/owl_qwen25_7b"],
    "audit": ["sublearn audit runs/demo/filter/owl/kept.jsonl --teacher runs/demo/teacher/owl "
              "--base hf/smollm2-135m --trait owl"],
    "compare": ["sublearn compare runs/def-within runs/def-mask --baseline runs/def-none --treatment elephant "
                "--control neutral"],
    "demo": ["sublearn demo", "sublearn demo --out runs/demo --set evaluate.n_questions=20"],
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sublearn")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """`--version`, looked up only when asked (the metadata lookup costs ~50 ms on every other start)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"sublearn {_version()}")  # stdout, as argparse's own version action
        parser.exit()


def _config_file(ref: str, what: str = "config") -> Path:
    """A config reference (shipped name or path) as a file; one-line error listing near names."""
    from sublearn.configs import resolve

    return resolve(ref, what)


def _add_config_args(p: argparse.ArgumentParser, config_required: bool) -> None:
    if config_required:
        p.add_argument("config", help="a shipped config's name (e.g. quick, paper/owl_qwen25_7b; see "
                       "`sublearn list`) or a YAML file")
    else:
        p.add_argument("--config", default=None, help="a shipped config's name or a YAML file (default: "
                       "the paper's settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set seeds=3 (repeatable; dotted keys for sections)")
    p.add_argument("--out", type=Path, default=None, help="run directory (created; reruns resume here)")


def _sub(sub: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {line}" for line in SUB_EXAMPLES.get(name, []))
    return sub.add_parser(name, help=help, description=description or help,
                          epilog=f"examples:\n{lines}" if lines else None,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def parser() -> argparse.ArgumentParser:
    """The command line's argparse parser (docs/gen_ref.py writes the CLI reference from it)."""
    parser = argparse.ArgumentParser(prog="sublearn", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "mnist", "the MNIST auxiliary-logit experiment (paper §7)")
    _add_config_args(p, config_required=False)
    p.add_argument("--theorem", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure the first-step cosine with the teacher's displacement (default: config)")

    p = _sub(sub, "run", "run the language-model pipeline described by a config")
    _add_config_args(p, config_required=True)
    p.add_argument("--only", choices=["teacher", "generate", "filter", "defend", "classify", "train", "theorem", "evaluate", "report"],
                   action="append", default=None, help="run only these stages (repeatable)")
    p.add_argument("--store", type=Path, default=None, help="share finished stages with other runs through this "
                   "directory (e.g. a sweep's store/): a stage another run finished with the same settings and "
                   "inputs is copied, not recomputed")

    p = _sub(sub, "status", "every stage and student of a run directory: done / stale / missing",
             "Every stage and student of a run directory and its state: done; stale (its inputs changed "
             "upstream, or stale-config: other settings); missing-outputs (finished, but a file it wrote was "
             "deleted since: the next run redoes it); partial (started); missing; waiting (a stage it reads is "
             "not done). With --verify, every finished stage's outputs are hashed again and compared with the "
             "hash its manifest recorded: a difference shows as corrupt (delete that stage directory and rerun "
             "to redo it).")
    p.add_argument("run_dir", type=Path, help="a run directory (its config.json is the config)")
    p.add_argument("--verify", action="store_true", help="also rehash what each finished stage wrote and report a "
                   "mismatch with its manifest as 'corrupt' (reads every output: minutes for large weights)")

    p = _sub(sub, "report", "re-render a run directory's report from its files (no model is run)")
    p.add_argument("run_dir", type=Path, help="a finished run directory (its config.json is the config)")

    p = _sub(sub, "list", "shipped configs, embedded models (installed?) and backends (importable?)")
    p.add_argument("what", nargs="?", choices=["configs", "models", "backends"], default=None,
                   help="only this section")

    p = _sub(sub, "sweep", "a grid of pipeline configs and seeds, one run directory each, identical "
             "stages computed once, one report across the grid (see sublearn.tools.sweep)")
    p.add_argument("sweep", help="sweep YAML, or a shipped sweep's name (sweeps/dose): base (config name, "
                   "path or mapping), set, grid, seeds, name")
    p.add_argument("--out", type=Path, default=None, help="sweep directory (default runs/sweeps/<file stem>; "
                   "reruns finish what is missing)")
    p.add_argument("--workers", type=int, default=None, help="runs at once in a local process pool "
                   "(default: cores / threads per run)")
    p.add_argument("--ray", metavar="ADDRESS", default=None, help="run on a Ray cluster instead: 'local' starts "
                   "one on this machine, 'auto' or host:port joins one (needs pip install 'sublearn[ray]')")
    p.add_argument("--ray-timeout", type=_seconds, default=5.0, metavar="SECONDS", help="how long a Ray cluster at "
                   "host:port has to answer before the sweep stops with an error (default 5)")
    p.add_argument("--store", type=Path, default=None, help="share finished stages through this directory instead "
                   "of <out>/store (e.g. another sweep's store/, to reuse its teachers and data)")

    p = _sub(sub, "train", "the train stage alone; under `accelerate launch` / `torchrun` it trains "
             "each student data-parallel across the processes")
    _add_config_args(p, config_required=True)

    p = _sub(sub, "audit", "will this distillation data carry my teacher's quirks into my student? "
             "(per-token divergence, probe students, weight-space cosine; see sublearn.tools.audit)")
    p.add_argument("data", type=Path, help="chat JSONL ({\"messages\": [...]} per line) or sublearn kept.jsonl")
    p.add_argument("--teacher", required=True, help="hf/<model>, a LoRA adapter dir, a full-weights dir or a "
                   "pipeline teacher dir (runs/X/teacher/<name>)")
    p.add_argument("--base", required=True, help="the student's base model: hf/<model> or a model directory")
    p.add_argument("--trait", default=None, help="an animal word: probe P(reply starts with it) over 50 questions")
    p.add_argument("--probe-seeds", type=_seed_list, default=[1, 2, 3], metavar="1,2,3",
                   help="one data and one control probe student per seed ('' skips the probe)")
    p.add_argument("--probe-steps", type=int, default=24, help="LoRA updates per probe student (default 24)")
    p.add_argument("--probe-batch", type=int, default=4, help="examples per update (default 4)")
    p.add_argument("--holdout", type=int, default=32, help="held-out data rows for the probe's gain metric")
    p.add_argument("--top", type=int, default=10, help="examples shown highlighted in the report")
    p.add_argument("--max-rows", type=int, default=None, help="audit only the first N rows")
    p.add_argument("--control", type=Path, default=None, metavar="DATA", help="control data (same formats; e.g. "
                   "the neutral teacher's kept.jsonl): the likelihood-ratio audit, each row scored by log P(row | "
                   "teacher) - log P(row | base), its AUROC against these rows beside length and loss baselines")
    p.add_argument("--control-regex", default="auto", help="regex the base model's control completions must "
                   "match ('auto': the grammar recorded in kept data; 'none': unconstrained)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/audit-<data stem>; for "
                   "pipeline data .../filter/<name>/kept.jsonl, runs/audit-<name>)")

    p = _sub(sub, "compare", "one trait comparison across run directories and its change from a "
             "baseline run (e.g. transfer under each defense vs none), with the defenses' cost")
    p.add_argument("runs", type=Path, nargs="+", help="run directories (each once, the baseline not among them)")
    p.add_argument("--baseline", type=Path, required=True, help="the run the others are compared with")
    p.add_argument("--treatment", required=True, help="the trait teacher whose students are compared, e.g. elephant")
    p.add_argument("--control", required=True, help="the control teacher's students, e.g. neutral or control")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--csv", type=Path, default=None, help="also write the rows as CSV here, in the columns of a "
                   "run's report/comparisons.csv (sublearn.stages.report.tidy)")

    p = _sub(sub, "demo", "MNIST experiment + the demo LM config, one report",
             "The MNIST experiment, then the `demo` LM config (or --config), one report. Every config, the "
             "MNIST data and the embedded model are checked before any work starts.")
    _add_config_args(p, config_required=False)
    return parser


# What a command's output directory holds once it has started (see each command's layout): an existing
# non-empty --out must hold one of these, so reruns resume while a directory of other files is refused.
_PIPELINE_OUTPUT = ("config.json", "teacher", "generate", "filter", "defend", "classify", "train", "theorem",
                    "evaluate", "report")
_OUTPUT_MARKERS = {
    "run": _PIPELINE_OUTPUT,
    "train": _PIPELINE_OUTPUT,
    "demo": (*_PIPELINE_OUTPUT, "mnist"),
    "mnist": ("config.json", "manifest.json", "results.json", "seeds"),
    "sweep": ("sweep.json", "runs", "store", "pooled"),
    "audit": ("results.json", "control.json", "probe"),
}
# Never a place for a run: writing there risks the system (as root) or mixes results with its files.
_SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt",
                "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/usr", "/var")
# ... nor anywhere inside these (kernel, device and system-file trees); /dev/shm is ordinary memory.
_SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
                 "/usr/bin", "/usr/sbin", "/usr/lib")
_PROBE_PREFIX = ".sublearn-write-check-"


def _is_output_entry(name: str, markers: tuple[str, ...]) -> bool:
    """`name` is one of `markers`, or the temp file an atomic write of one leaves while it runs (a
    parallel process may be writing it: see rundir.write_bytes)."""
    if name in markers:
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{m}.") for m in markers)


def _system_location(out: Path) -> str | None:
    """Why the resolved `out` is no place for a run (a system directory, the home directory), or None."""
    resolved = out.resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry: there is no home to protect
        home = None
    if resolved == home:
        return "is your home directory itself; expected a run directory inside it (e.g. --out ~/runs/NAME)"
    dev_shm = Path("/dev/shm").resolve()
    for name in _SYSTEM_DIRS:
        if resolved == Path(name).resolve():
            return "is a system directory; expected a run directory of your own (e.g. --out runs/NAME)"
    for name in _SYSTEM_TREES:
        tree = Path(name).resolve()
        if tree in resolved.parents and dev_shm not in (resolved, *resolved.parents):
            return f"is inside the system directory {tree}; expected a run directory of your own (e.g. --out runs/NAME)"
    return None


def _check_writable(out: Path, existing: Path) -> None:
    """Create and remove a file in `existing` (`out` itself, or the nearest folder above it that exists
    and that `out` would be created in): a read-only place fails here, not after work."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if existing == out else f" (it would be created in {existing})"
        raise SublearnError(f"--out {out}: not writable{where}: {exc.strerror or exc}; expected a directory "
                            "you can write to") from None


def checked_out(command: str, out: Path) -> Path:
    """The checks of `sublearn COMMAND --out OUT` on `out` (see `_out_dir`), for the Python API."""
    return _out_dir(argparse.Namespace(command=command, out=out), out)


def _out_dir(args: argparse.Namespace, default: Path) -> Path:
    """The output directory (`--out`, else `default`), checked before any work, nothing created: refused
    with a one-line error when it is a system or the home directory, is a file or would be created inside
    one, is not writable, or is an existing non-empty directory that this command did not write (a run,
    sweep or audit directory it wrote is accepted, so reruns resume)."""
    out: Path = args.out or default
    why = _system_location(out)
    if why:
        raise SublearnError(f"--out {out}: {why}")
    try:
        existing = next(path for path in (out, *out.absolute().parents) if path.exists())
    except OSError as exc:  # e.g. a folder on the way that we may not search
        raise SublearnError(f"--out {out}: cannot check it ({exc.strerror or exc})") from None
    if not existing.is_dir():
        what = "is a file" if existing == out else f"would be created inside {existing}, which is a file"
        raise SublearnError(f"--out {out}: {what}; expected a run directory (existing or new)")
    if existing == out:
        markers = _OUTPUT_MARKERS.get(args.command, _PIPELINE_OUTPUT)
        try:
            names = sorted(e.name for e in out.iterdir() if not e.name.startswith(_PROBE_PREFIX))
        except OSError as exc:
            raise SublearnError(f"--out {out}: cannot list it ({exc.strerror or exc})") from None
        if names and not any(_is_output_entry(n, markers) for n in names):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise SublearnError(f"--out {out}: an existing directory that `sublearn {args.command}` did not write "
                                f"(it holds {shown}); expected a new or empty directory, or one of its earlier "
                                f"runs (with {' or '.join(markers[:2])})")
    _check_writable(out, existing)
    return out


def _check_trained(config: PipelineConfig, out: Path, only: list[str] | None) -> None:
    """`--only evaluate` / `--only report` without `--only train` read every student's training
    summary: refuse before any work (teachers included) when a student has not finished training."""
    if not only or "train" in only or not {"evaluate", "report"} & set(only):
        return
    from sublearn.rundir import MANIFEST
    from sublearn.stages.roster import student_dir, students

    missing = [st for st in students(config) if not (student_dir(out, st["student"], st["seed"]) / MANIFEST).is_file()]
    if missing:
        first = student_dir(out, missing[0]["student"], missing[0]["seed"])
        stage = "evaluate" if "evaluate" in only else "report"
        raise SublearnError(f"--only {stage}: {len(missing)} of {len(students(config))} students are not trained "
                            f"(no {first / MANIFEST}); run the train stage first (add --only train)")


def _mnist(args: argparse.Namespace) -> int:
    from sublearn.config import load_config
    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.experiment import run
    from sublearn.mnist.report import summary_table

    overrides = list(args.overrides)
    if args.theorem is not None:
        overrides.append(f"theorem={str(args.theorem).lower()}")
    out = _out_dir(args, Path("runs/mnist"))
    path = _config_file(args.config) if args.config is not None else None
    config = load_config(MnistConfig, path, overrides)
    results = run(config, out)
    print(summary_table(results))
    print(f"results: {out / 'results.json'}  plot: {out / 'mnist.png'}")
    return 0


def _pipeline(args: argparse.Namespace, only: list[str] | None) -> tuple[Path, Path]:
    """Load the config of `sublearn run` / `sublearn train` and run those stages: (run dir, report)."""
    from sublearn.config import load_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages.pipeline import run

    path = _config_file(args.config)
    out = _out_dir(args, Path("runs") / path.stem)
    config = load_config(PipelineConfig, path, args.overrides)
    _check_trained(config, out, only)
    store = getattr(args, "store", None)
    if store is None:
        return out, run(config, out, only=only)
    from sublearn.rundir import check_store, stage_store

    check_store(store)

    with stage_store(store, out):
        return out, run(config, out, only=only)


def _run(args: argparse.Namespace) -> int:
    _, report = _pipeline(args, args.only)
    _print_summary(report.parent / "results.json")
    print(f"report: {report}")
    return 0


def _train(args: argparse.Namespace) -> int:
    out, _ = _pipeline(args, ["train"])
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained students: {out / 'train'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from collections import Counter

    from sublearn.stages.pipeline import run_config, status

    config = run_config(args.run_dir)
    rows = status(config, args.run_dir, verify=args.verify)
    width = max(len(r) for r, _ in rows)
    for stage_dir, state in rows:
        print(f"{stage_dir:<{width}}  {state}")
    counts = Counter(state for _, state in rows)
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 0


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _seed_list(text: str) -> list[int]:
    """`--probe-seeds 1,2,3`: distinct seeds in 0..MAX_SEED ('' = none)."""
    from sublearn.config import MAX_SEED

    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise argparse.ArgumentTypeError(f"expected non-negative integers below 2^63 like 1,2,3, got {text!r}")
    return seeds


def _audit(args: argparse.Namespace) -> int:
    from sublearn.rundir import read_json
    from sublearn.tools.audit import ProbeSettings, run
    from sublearn.tools.audit_report import summary_lines

    if min(args.probe_steps, args.probe_batch - 1, args.holdout, args.top) < 0 or (args.max_rows or 1) < 1:
        raise SublearnError("--probe-steps, --holdout, --top must be >= 0, --probe-batch and --max-rows >= 1")
    # Pipeline data is always named kept.jsonl: name the default after its teacher (filter/<name>/).
    stem = args.data.parent.name if args.data.stem == "kept" and args.data.parent.name else args.data.stem
    out = _out_dir(args, Path("runs") / f"audit-{stem}")
    regex = None if args.control_regex == "none" else args.control_regex
    probe = ProbeSettings(steps=args.probe_steps, batch_size=args.probe_batch, holdout=args.holdout)
    report = run(args.data, args.teacher, args.base, out, trait=args.trait, probe_seeds=args.probe_seeds,
                 probe=probe, top_n=args.top, max_rows=args.max_rows, control_regex=regex, control=args.control)
    print(f"report: {report}")
    for line in summary_lines(read_json(out / "results.json")):
        print(line)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from sublearn.tools.sweep import run_sweep
    from sublearn.tools.sweep_grid import load_sweep

    path = _config_file(args.sweep, "sweep")
    out = _out_dir(args, Path("runs") / "sweeps" / path.stem)
    sweep = load_sweep(path)
    if args.store is not None:
        from sublearn.rundir import check_store

        check_store(args.store)
    report = run_sweep(sweep, path, out, workers=args.workers, ray_address=args.ray, ray_timeout=args.ray_timeout,
                       store=args.store)
    print(f"report: {report}")
    return 0


def _file_target(path: Path, flag: str) -> None:
    """Refuse before any work a path a command will write a file to that is a directory, or under a file."""
    if path.is_dir():
        raise SublearnError(f"{flag} {path}: is a directory; expected a file to write (e.g. {path / 'compare.json'})")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise SublearnError(f"{flag} {path}: would be created inside {existing}, which is a file; expected a file "
                            "path in a directory")


def _compare(args: argparse.Namespace) -> int:
    from sublearn.rundir import write_json
    from sublearn.tools.compare import format_table, run

    if args.json:
        _file_target(args.json, "--json")
    if args.csv:
        _file_target(args.csv, "--csv")
    rows = run(args.runs, args.baseline, treatment=args.treatment, control=args.control)
    print(format_table(rows, args.treatment, args.control))
    if args.json:
        write_json(args.json, rows)
    if args.csv:
        from sublearn.stages.report.tidy import COMPARISON_COLUMNS, compare_rows, write_csv

        write_csv(args.csv, compare_rows(rows, args.treatment, args.control), COMPARISON_COLUMNS)
    return 0


def _embedded_models(data: Any) -> set[str]:
    """The embedded aliases (hf/smollm2-135m, ...) named anywhere in a config's values."""
    from sublearn.backends.models import ALIASES

    if isinstance(data, dict):
        return set().union(*(_embedded_models(v) for v in data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*(_embedded_models(v) for v in data)) if data else set()
    if isinstance(data, str) and data.startswith("hf/") and data[3:] in ALIASES:
        return {data[3:]}
    return set()


def _check_installed(config: PipelineConfig) -> None:
    """Refuse, before any work, a config whose embedded models' packages are not installed."""
    from sublearn.backends.models import embedded_problem

    for alias in sorted(_embedded_models(config.model_dump(mode="json"))):
        problem = embedded_problem(alias)
        if problem:
            raise SublearnError(problem)


def _demo(args: argparse.Namespace) -> int:
    from sublearn.config import load_config
    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.data import wheel_pickle
    from sublearn.mnist.experiment import run_in_new_process
    from sublearn.mnist.report import summary_table
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages.pipeline import run

    # Everything the demo will use is checked first: a missing config, model or data package must not
    # surface after MNIST has run for minutes.
    out = _out_dir(args, Path("runs/demo"))
    path = _config_file(args.config or "demo")
    config = load_config(PipelineConfig, path, args.overrides)
    mnist_config = MnistConfig()
    if mnist_config.data_dir is None:
        wheel_pickle()  # the MNIST data wheel (one-line error with what to install)
    _check_installed(config)
    mnist_results = run_in_new_process(out / "mnist")  # its portable kernels stay out of the LM stages
    print(summary_table(mnist_results))
    report = run(config, out, mnist_dir=out / "mnist")
    _print_summary(Path(report).parent / "results.json")
    print(f"report: {report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sublearn.stages import report
    from sublearn.stages.pipeline import check_report_inputs, run_config, status
    from sublearn.stages.roster import eval_specs, read_teacher, teacher_names

    out: Path = args.run_dir
    config = run_config(out)
    # The report reads the teachers' descriptions and every finished evaluation: refuse, naming the
    # first one that is not done, rather than render a partial report.
    for stage_dir, state in status(config, out):
        if stage_dir.split("/")[0] in ("teacher", "train", "theorem", "evaluate") and state != "done":
            raise SublearnError(f"{out / stage_dir}: {state}; the report needs a finished run: finish it with "
                                f"`sublearn run <config> --out {out}` (see `sublearn status {out}`)")
    teachers = {name: read_teacher(out, name) for name in teacher_names(config)}
    specs = eval_specs(config, out, teachers)
    check_report_inputs(out, specs)
    path = report.run(config, out, specs, mnist_dir=out / "mnist")  # if it has one
    _print_summary(path.parent / "results.json")
    print(f"report: {path}")
    return 0


def _print_summary(results: Path) -> None:
    """The report's claims, one sentence each (what its page opens on), for the terminal. A results file
    that cannot be read (an earlier run's, damaged) is a warning: the command itself has succeeded."""
    import textwrap

    from sublearn.rundir import read_json

    if not results.is_file():
        return
    try:
        summary = read_json(results).get("summary")
    except SublearnError as exc:
        log.warning("no summary printed: %s", exc)
        return
    if not isinstance(summary, dict) or not summary:
        return

    def items(key: str) -> list[Any]:
        value = summary.get(key)
        return [x for x in value if isinstance(x, dict) and isinstance(x.get("text"), str)] if isinstance(
            value, list) else []

    print("What this run showed:")
    for v in items("verdicts"):
        print(textwrap.fill(v["text"], width=100, initial_indent=" * ", subsequent_indent="   "))
    for claim in items("claims"):
        mark = {"detected": "+", "null": "0"}.get(str(claim.get("verdict", "")), "?")
        print(textwrap.fill(claim["text"], width=100, initial_indent=f" {mark} ", subsequent_indent="   "))
    lines = summary.get("lines")
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, str):
            print(textwrap.fill(line, width=100, initial_indent="   ", subsequent_indent="   "))


def _list(args: argparse.Namespace) -> int:
    import importlib.util

    from sublearn import configs
    from sublearn.backends import BACKENDS, REQUIRES
    from sublearn.backends.models import ALIASES, INSTALL, embedded_problem

    sections = [args.what] if args.what else ["configs", "models", "backends"]
    if "configs" in sections:
        print("configs (sublearn run NAME; a YAML path works too):")
        names = configs.names()
        width = max(len(n) for n in names)
        for name in names:
            found = configs.shipped(name)
            print(f"  {name:<{width}}  {configs.description(found) if found else ''}")
    if "models" in sections:
        print("embedded models (hf/NAME, offline):")
        for alias in ALIASES:
            state = "installed" if embedded_problem(alias) is None else f"not installed: {INSTALL[alias]}"
            print(f"  hf/{alias:<14}  {state}")
    if "backends" in sections:
        print("backends (BACKEND/MODEL):")
        for kind, (_, _, extra) in BACKENDS.items():
            missing = [m for m in REQUIRES.get(kind, ()) if importlib.util.find_spec(m) is None]
            state = "available" if not missing else f"missing {', '.join(missing)}: pip install '{extra}'"
            print(f"  {kind:<7}  {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from sublearn.logs import setup_logging  # also filters third-party warnings (quiet_third_party_warnings)

    # In a multi-process launch only the main process logs progress; the others report problems.
    setup_logging(args.verbose, quiet=int(os.environ.get("RANK", "0")) != 0)
    handlers = {"mnist": _mnist, "run": _run, "train": _train, "demo": _demo, "compare": _compare, "status": _status,
                "audit": _audit, "sweep": _sweep, "report": _report, "list": _list}
    try:
        return handlers[args.command](args)
    except SublearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
