"""The `sublearn` command line. Every user error ends as one line `error: ...` and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sublearn.errors import SublearnError

if TYPE_CHECKING:
    from sublearn.stages.config import PipelineConfig

log = logging.getLogger("sublearn")


def _add_config_args(p: argparse.ArgumentParser, config_required: bool) -> None:
    if config_required:
        p.add_argument("config", type=Path, help="YAML config file")
    else:
        p.add_argument("--config", type=Path, default=None, help="YAML config file (defaults: the paper's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set seeds=3 (repeatable; dotted keys for sections)")
    p.add_argument("--out", type=Path, default=None, help="run directory (created; reruns resume here)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sublearn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mnist", help="the MNIST auxiliary-logit experiment (paper §7)")
    _add_config_args(p, config_required=False)
    p.add_argument("--theorem", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure the first-step cosine with the teacher's displacement (default: config)")

    p = sub.add_parser("run", help="run the language-model pipeline described by a config")
    _add_config_args(p, config_required=True)
    p.add_argument("--only", choices=["teacher", "generate", "filter", "defend", "classify", "train", "theorem", "evaluate", "report"],
                   action="append", default=None, help="run only these stages (repeatable)")

    p = sub.add_parser("status", help="every stage and student of a run directory: done / stale / missing")
    p.add_argument("run_dir", type=Path, help="a run directory (its config.json is the config)")

    p = sub.add_parser("sweep", help="a grid of pipeline configs and seeds, one run directory each, identical "
                       "stages computed once, one report across the grid (see sublearn.sweep)")
    p.add_argument("sweep", type=Path, help="sweep YAML: base (config path or mapping), set, grid, seeds, name")
    p.add_argument("--out", type=Path, default=None, help="sweep directory (default runs/sweeps/<file stem>; "
                   "reruns finish what is missing)")
    p.add_argument("--workers", type=int, default=None, help="runs at once in a local process pool "
                   "(default: cores / threads per run)")
    p.add_argument("--ray", metavar="ADDRESS", default=None, help="run on a Ray cluster instead: 'local' starts "
                   "one on this machine, 'auto' or host:port joins one (needs pip install 'sublearn[ray]')")

    p = sub.add_parser("train", help="the train stage alone; under `accelerate launch` / `torchrun` it trains "
                       "each student data-parallel across the processes")
    _add_config_args(p, config_required=True)

    p = sub.add_parser("audit", help="will this distillation data carry my teacher's quirks into my student? "
                       "(per-token divergence, probe students, weight-space cosine; see sublearn.audit)")
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
    p.add_argument("--control-regex", default="auto", help="regex the base model's control completions must "
                   "match ('auto': the grammar recorded in kept data; 'none': unconstrained)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/audit-<data stem>; for "
                   "pipeline data .../filter/<name>/kept.jsonl, runs/audit-<name>)")

    p = sub.add_parser("compare", help="one trait comparison across run directories and its change from a "
                       "baseline run (e.g. transfer under each defense vs none), with the defenses' cost")
    p.add_argument("runs", type=Path, nargs="+", help="run directories")
    p.add_argument("--baseline", type=Path, required=True, help="the run the others are compared with")
    p.add_argument("--treatment", required=True, help="the trait teacher whose students are compared, e.g. elephant")
    p.add_argument("--control", required=True, help="the control teacher's students, e.g. neutral or control")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")

    p = sub.add_parser("demo", help="MNIST experiment + the demo LM config, one report")
    _add_config_args(p, config_required=False)
    return parser


def _out_dir(args: argparse.Namespace, default: Path) -> Path:
    """The run directory (`--out`, else `default`), refused with a one-line error before any work when
    it, or a folder it would be created in, is an existing file."""
    out: Path = args.out or default
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"would be created inside {path}, which is a file"
                raise SublearnError(f"--out {out}: {what}; expected a run directory (existing or new)")
            break
    return out


def _check_trained(config: PipelineConfig, out: Path, only: list[str] | None) -> None:
    """`--only evaluate` / `--only report` without `--only train` read every student's training
    summary: refuse before any work (teachers included) when a student has not finished training."""
    if not only or "train" in only or not {"evaluate", "report"} & set(only):
        return
    from sublearn.rundir import MANIFEST
    from sublearn.stages.pipeline import students
    from sublearn.stages.train import student_dir

    missing = [st for st in students(config) if not (student_dir(out, st["student"], st["seed"]) / MANIFEST).is_file()]
    if missing:
        first = student_dir(out, missing[0]["student"], missing[0]["seed"])
        stage = "evaluate" if "evaluate" in only else "report"
        raise SublearnError(f"--only {stage}: {len(missing)} of {len(students(config))} students are not trained "
                            f"(no {first / MANIFEST}); run the train stage first (add --only train)")


def _mnist(args: argparse.Namespace) -> int:
    from sublearn.config import load_config
    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.experiment import run, summary_table

    overrides = list(args.overrides)
    if args.theorem is not None:
        overrides.append(f"theorem={str(args.theorem).lower()}")
    out = _out_dir(args, Path("runs/mnist"))
    config = load_config(MnistConfig, args.config, overrides)
    results = run(config, out)
    print(summary_table(results))
    print(f"results: {out / 'results.json'}  plot: {out / 'mnist.png'}")
    return 0


def _pipeline(args: argparse.Namespace, only: list[str] | None) -> tuple[Path, Path]:
    """Load the config of `sublearn run` / `sublearn train` and run those stages: (run dir, report)."""
    from sublearn.config import load_config
    from sublearn.stages.config import PipelineConfig
    from sublearn.stages.pipeline import run

    out = _out_dir(args, Path("runs") / args.config.stem)
    config = load_config(PipelineConfig, args.config, args.overrides)
    _check_trained(config, out, only)
    return out, run(config, out, only=only)


def _run(args: argparse.Namespace) -> int:
    _, report = _pipeline(args, args.only)
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
    rows = status(config, args.run_dir)
    width = max(len(r) for r, _ in rows)
    for stage_dir, state in rows:
        print(f"{stage_dir:<{width}}  {state}")
    counts = Counter(state for _, state in rows)
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None


def _audit(args: argparse.Namespace) -> int:
    from sublearn.audit import ProbeSettings, run, summary_lines
    from sublearn.rundir import read_json

    if min(args.probe_steps, args.probe_batch - 1, args.holdout, args.top) < 0 or (args.max_rows or 1) < 1:
        raise SublearnError("--probe-steps, --holdout, --top must be >= 0, --probe-batch and --max-rows >= 1")
    # Pipeline data is always named kept.jsonl: name the default after its teacher (filter/<name>/).
    stem = args.data.parent.name if args.data.stem == "kept" and args.data.parent.name else args.data.stem
    out = _out_dir(args, Path("runs") / f"audit-{stem}")
    regex = None if args.control_regex == "none" else args.control_regex
    probe = ProbeSettings(steps=args.probe_steps, batch_size=args.probe_batch, holdout=args.holdout)
    report = run(args.data, args.teacher, args.base, out, trait=args.trait, probe_seeds=args.probe_seeds,
                 probe=probe, top_n=args.top, max_rows=args.max_rows, control_regex=regex)
    print(f"report: {report}")
    for line in summary_lines(read_json(out / "results.json")):
        print(line)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from sublearn.sweep import load_sweep, run_sweep

    out = _out_dir(args, Path("runs") / "sweeps" / args.sweep.stem)
    sweep = load_sweep(args.sweep)
    report = run_sweep(sweep, args.sweep, out, workers=args.workers, ray_address=args.ray)
    print(f"report: {report}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from sublearn.compare import format_table, run
    from sublearn.rundir import write_json

    rows = run(args.runs, args.baseline, treatment=args.treatment, control=args.control)
    print(format_table(rows, args.treatment, args.control))
    if args.json:
        write_json(args.json, rows)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sublearn.config import load_config
    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.experiment import run as run_mnist
    from sublearn.mnist.experiment import summary_table
    from sublearn.stages.config import PipelineConfig
    from sublearn.stages.pipeline import run

    out = _out_dir(args, Path("runs/demo"))
    path = args.config or Path("configs/demo.yaml")
    config = load_config(PipelineConfig, path, args.overrides)  # a bad config fails before MNIST runs
    mnist_results = run_mnist(MnistConfig(), out / "mnist")
    print(summary_table(mnist_results))
    report = run(config, out, mnist_dir=out / "mnist")
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sublearn.logs import setup_logging

    # In a multi-process launch only the main process logs progress; the others report problems.
    setup_logging(args.verbose, quiet=int(os.environ.get("RANK", "0")) != 0)
    handlers = {"mnist": _mnist, "run": _run, "train": _train, "demo": _demo, "compare": _compare, "status": _status, "audit": _audit,
                "sweep": _sweep}
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
