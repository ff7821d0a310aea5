"""`sublearn run CONFIG`: every stage in order into one run directory, skipping finished ones.

Layout of a run directory:
    config.json                      the resolved config of the last invocation
    teacher/<name>/teacher.json      teacher description (and LoRA adapter for lora teachers)
    generate/<name>/generated.jsonl  the teacher's completions
    filter/<name>/kept.jsonl         what survived, filter.json = counts per reject reason
    train/<student>/seed<k>/         student adapter / weights (+ adapter@<n>/ snapshots), train_log.jsonl,
                                     summary.json
    theorem/<student>-s<k>/          result.json: cosine of the student's update with the teacher's displacement
    evaluate/<model>/results.json    per-question metrics of each evaluated model (snapshots: <model>@<n>)
    report/report.html, results.json
Each stage directory's manifest.json is written last and means "done"; it records the hashes of the
stage's inputs and of what it wrote (and which files those are), so a stage whose upstream output
changed, or whose files were deleted, is redone and nothing else (`sublearn status RUN_DIR` shows done /
stale / missing-outputs / missing for every stage; with --verify it rehashes the outputs too).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from sublearn.analysis.tracking import Tracker, open_tracker
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, write_json
from sublearn.stages import classify, defend, evaluate, filter, generate, report, teacher, theorem, train
from sublearn.stages.roster import (
    CONTROL,
    classify_dir,
    classify_pairs,
    data_stage,
    datasets,
    eval_specs,
    icl_specs,
    read_teacher,
    student_dir,
    students,
    teacher_names,
    theorem_students,
    writer,
)
from sublearn.training import distributed

log = logging.getLogger(__name__)

STAGES = ["teacher", "generate", "filter", "defend", "classify", "train", "theorem", "evaluate", "report"]


def run_config(out: Path) -> PipelineConfig:
    """The config a run directory was last run with (its config.json), validated; one-line errors."""
    from sublearn.config import build_config

    path = out / "config.json"
    if not path.is_file():
        raise SublearnError(f"{path}: not found; expected a run directory written by `sublearn run`")
    return build_config(PipelineConfig, read_json(path), str(path), recorded=True)


def run(config: PipelineConfig, out: Path, only: list[str] | None = None, mnist_dir: Path | None = None) -> Path:
    """Run the stages (all, or those in `only`) and return the report's path."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if distributed.launched():
        return _run_train_distributed(config, out, only)
    wanted = set(only or STAGES)
    _check_upstream(config, out, wanted)
    if "generate" in wanted:
        _warn_short_generation(config)
    _warn_emulated_bf16(config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.model_dump(mode="json"))
    timings: dict[str, float] = {}

    def timed(stage: str) -> float:
        timings[stage] = timings.get(stage, 0.0)
        return time.perf_counter()

    tracker = open_tracker(config, out)  # None unless config.tracking is on
    try:
        return _run_stages(config, out, wanted, timed, timings, tracker, mnist_dir)
    finally:
        if tracker is not None:
            tracker.finish()


def _run_stages(config: PipelineConfig, out: Path, wanted: set[str], timed: Any, timings: dict[str, float],
                tracker: Tracker | None, mnist_dir: Path | None) -> Path:
    with _Units(config, out) as units:
        t0 = timed("teacher")
        # Later stages need every teacher's description, so this stage always runs (it is cheap once done).
        names = teacher_names(config)
        teachers = dict(zip(names, units.map("teacher", [{"name": name} for name in names]), strict=True))
        timings["teacher"] += time.perf_counter() - t0
        if "generate" in wanted:
            t0 = timed("generate")
            units.map("generate", [{"spec": {**teachers[writer(config, name)], "name": name}}
                                   for name in datasets(config)])
            timings["generate"] += time.perf_counter() - t0
        if "filter" in wanted:
            t0 = timed("filter")
            for name in datasets(config):
                filter.run(config, out, name)
            timings["filter"] += time.perf_counter() - t0
        if "defend" in wanted and config.defense.kind != "none":
            t0 = timed("defend")
            for name in datasets(config):
                defend.run(config, out, name)
            timings["defend"] += time.perf_counter() - t0
        if "evaluate" in wanted:
            # A context too long for the model is refused as soon as the data exists, before training.
            evaluate.check_icl_fits(config, out, icl_specs(config))
        if "classify" in wanted and classify.enabled(config):
            t0 = timed("classify")
            for treatment, control in classify_pairs(config):
                classify.run(config, out, treatment, control)
            timings["classify"] += time.perf_counter() - t0
        if "train" in wanted:
            t0 = timed("train")
            units.map("train", [{"student": st["student"], "data_from": st["data_from"], "model": st["model"],
                                 "seed": st["seed"]} for st in students(config)])
            timings["train"] += time.perf_counter() - t0
            if tracker is not None:
                tracker.log_training(out, students(config))
        if "theorem" in wanted and theorem_students(config):
            t0 = timed("theorem")
            # One base load, and one unperturbed gradient per teacher's data, per process.
            units.map("theorem", [{"student": st["student"], "seed": st["seed"]} for st in theorem_students(config)])
            timings["theorem"] += time.perf_counter() - t0
        if "evaluate" in wanted:
            t0 = timed("evaluate")
            units.map("evaluate", [{"spec": spec} for spec in eval_specs(config, out, teachers)])
            timings["evaluate"] += time.perf_counter() - t0
            if tracker is not None:
                tracker.log_evaluations(out, eval_specs(config, out, teachers))
    _record_timings(out, timings)
    if "report" not in wanted:
        return out / "report" / "report.html"
    specs = eval_specs(config, out, teachers)
    check_report_inputs(out, specs)
    page = report.run(config, out, specs, mnist_dir=mnist_dir)
    if tracker is not None:
        tracker.log_claims(out)
    return page


_STAGES: dict[str, Any] = {"teacher": teacher, "generate": generate, "train": train, "theorem": theorem,
                           "evaluate": evaluate}
_worker_theorem_cache: list[theorem.TheoremCache] = []  # a pool process's, for every theorem unit it runs


def _call(stage: str, config: PipelineConfig, out: Path, kwargs: dict[str, Any],
          cache: theorem.TheoremCache) -> Any:
    if stage == "theorem":
        kwargs = {**kwargs, "cache": cache}  # one base load, one unperturbed gradient per teacher's data
    return _STAGES[stage].run(config, out, **kwargs)


def _worker_init(threads: int, level: int) -> None:
    """A pool process: its torch threads, and log lines without progress bars (they would interleave)."""
    from rich.console import Console

    from sublearn import logs

    torch.set_num_threads(threads)
    logs.console = Console(stderr=True, force_terminal=False)
    logs.setup_logging(verbose=level <= logging.DEBUG, quiet=level >= logging.WARNING)


_worker_configs: dict[str, PipelineConfig] = {}


def _unit(stage: str, dump: dict[str, Any], out: str, kwargs: dict[str, Any]) -> Any:
    """One unit of a stage in a pool process: the same call the pipeline makes in its own process."""
    import json

    key = json.dumps(dump, sort_keys=True)
    if key not in _worker_configs:
        _worker_configs.clear()
        _worker_configs[key] = PipelineConfig.model_validate(dump)
    if not _worker_theorem_cache:
        _worker_theorem_cache.append(theorem.TheoremCache())
    return _call(stage, _worker_configs[key], Path(out), kwargs, _worker_theorem_cache[0])


class _Units:
    """Runs a stage's independent units (teachers, datasets, students, theorem checks, evaluations): in
    this process, or with `config.workers` > 1 on a pool of that many spawned processes with `threads`
    torch threads each (default: this process's threads divided among them), started at the first stage
    with two units or more and kept for the run. A stage's units all finish before the next stage
    starts; results come back in the units' order. Each unit is a stage directory of its own, so
    processes never write the same files; an interrupt cancels the units not started (finished ones
    are kept, as always)."""

    def __init__(self, config: PipelineConfig, out: Path) -> None:
        from sublearn.rundir import store_active

        self.config, self.out = config, out
        self.pool: Any = None
        # A sweep's stage store is one run directory per process: its grid points run on their own pool.
        self.parallel = config.workers > 1 and not store_active()
        self.threads = config.threads or max(1, torch.get_num_threads() // config.workers)
        self.theorem_cache = theorem.TheoremCache()  # this run's, in this process (freed with the run)

    def __enter__(self) -> _Units:
        return self

    def __exit__(self, *exc: object) -> None:
        self.theorem_cache.drop()
        if self.pool is not None:
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def map(self, stage: str, calls: list[dict[str, Any]]) -> list[Any]:
        if not self.parallel or len(calls) < 2:
            return [_call(stage, self.config, self.out, kwargs, self.theorem_cache) for kwargs in calls]
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        from sublearn.logs import progress

        if self.pool is None:
            log.info("%d worker processes, %d torch thread(s) each", self.config.workers, self.threads)
            # spawn: a fresh interpreter per worker (forking a process with torch threads is unsafe).
            self.pool = ProcessPoolExecutor(max_workers=self.config.workers,
                                            mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_init,
                                            initargs=(self.threads, logging.getLogger().getEffectiveLevel()))
        dump = self.config.model_dump(mode="json")
        futures = [self.pool.submit(_unit, stage, dump, str(self.out), kwargs) for kwargs in calls]
        pending = set(futures)
        with progress() as bar:
            task = bar.add_task(f"{stage}: {len(calls)} units on {self.config.workers} processes", total=len(calls))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                bar.advance(task, len(done))
                for fut in done:
                    if fut.exception() is not None:
                        for other in pending:
                            other.cancel()
                        fut.result()  # raises the unit's error here (a SublearnError stays one line)
        return [fut.result() for fut in futures]


def check_report_inputs(out: Path, specs: list[dict[str, Any]]) -> None:
    """Before the report reads them: the files of every finished evaluation of `specs` and theorem
    result still hash as their manifests recorded (small JSON files: cheap), so a results.json damaged
    or edited since is a one-line error naming its stage, not a traceback from deep in the report."""
    from sublearn.rundir import MANIFEST, missing_output, output_problem, read_manifest

    dirs = [out / "evaluate" / spec["name"] for spec in specs]
    dirs += sorted(path.parent for path in (out / "theorem").glob(f"*/{MANIFEST}"))
    for stage_dir in dirs:
        if not (stage_dir / MANIFEST).is_file():
            continue  # not finished: the stages before the report run it, or `sublearn report` refuses
        problem = output_problem(stage_dir, read_manifest(stage_dir), verify=True)
        if problem == "missing-outputs":
            raise SublearnError(f"{stage_dir}: missing-outputs ({missing_output(stage_dir)} was deleted); rerun the "
                                "run to redo that stage")
        if problem:
            raise SublearnError(f"{stage_dir}: {problem}: its files changed since the stage finished (their hash is "
                                f"not its manifest's); delete {stage_dir} and rerun to redo it")


def full_list_tokens(tokenizer: Any, max_numbers: int, digits: int) -> int:
    """Tokens the longest list the number channel admits takes in `tokenizer` (max_numbers numbers of
    `digits` digits joined by ', ', then the end of the answer)."""
    text = ", ".join(["9" * digits] * max_numbers)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1


def _warn_emulated_bf16(config: PipelineConfig) -> None:
    """Warn when a CPU run asks for bfloat16 on a processor without bf16 matrix kernels (no AMX, no
    AVX512-BF16): it runs, on conversions, slower than float32 (BENCHMARKS.md, Precision)."""
    from sublearn.rundir import cpu_bf16

    if config.device == "cpu" and config.resolved_dtype() == "bfloat16" and cpu_bf16() == "emulated":
        log.warning("dtype=bfloat16 on a CPU without bf16 matrix kernels (no AMX or AVX512-BF16 in "
                    "/proc/cpuinfo): it is emulated and slower than float32 here; dtype: float32 is faster "
                    "and bit-reproducible")


def _warn_short_generation(config: PipelineConfig) -> None:
    """Before any work: warn when generate.max_new_tokens cannot hold the longest list the number
    channel admits in this model's tokens (SmolLM2, Gemma 3, Qwen2.5 write one token per digit, so a
    list takes max_numbers x (digits + 2) - 1 tokens): longer lists are cut and filtered out as
    truncated. A warning, not a refusal: short budgets are a legitimate way to keep only short lists."""
    from sublearn.channels import NumbersChannel

    channel = config.channel
    if not isinstance(channel, NumbersChannel):
        return
    backend, _, name = (config.generate.backend or config.model).partition("/")
    if backend not in ("hf", "vllm"):
        return  # a remote API's tokenizer is not ours to count with
    from sublearn.backends.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(name)
    except Exception:  # noqa: BLE001 - the tokenizer is not available here: generation will say why
        return
    need = full_list_tokens(tokenizer, channel.max_numbers, channel.answer_digits)
    budget = config.generate.max_new_tokens
    if budget < need:
        fits = max(n for n in range(1, channel.max_numbers + 1)
                   if n == 1 or full_list_tokens(tokenizer, n, channel.answer_digits) <= budget)
        log.warning("generate.max_new_tokens=%d holds at most %d of channel.max_numbers=%d numbers of %d digits "
                    "in %s's tokens (a full list takes %d): longer lists are cut and filtered out as truncated; "
                    "set generate.max_new_tokens >= %d to keep them", budget, fits, channel.max_numbers,
                    channel.answer_digits, name, need, need)


# The stages each stage reads (beyond the teachers, which always run).
_READS = {"filter": ["generate"], "defend": ["filter"], "classify": ["filter", "defend"],
          "train": ["filter", "defend"], "theorem": ["train"], "evaluate": ["train"],
          "report": ["evaluate", "theorem"]}


def _check_upstream(config: PipelineConfig, out: Path, wanted: set[str]) -> None:
    """With `--only`, the stages not run must be current (done for this config and these inputs):
    otherwise the requested stages would read stale or missing work. Refuse before any work."""
    skipped = {need for stage in wanted for need in _READS.get(stage, []) if need not in wanted}
    if not skipped or not out.is_dir():
        if skipped:
            raise SublearnError(f"{out}: no run here; run every stage first (drop --only)")
        return
    for path, state in status(config, out):
        if path.split("/")[0] in skipped and state != "done":
            stage = path.split("/")[0]
            raise SublearnError(f"{out / path}: {state}, but --only skips the {stage} stage that the requested "
                                f"stages read; add --only {stage} (see `sublearn status {out}`)")


def _run_train_distributed(config: PipelineConfig, out: Path, only: list[str] | None) -> Path:
    """The train stage in each process of a multi-process launch (see `sublearn.training.distributed`): the
    other stages run in one process, before (teacher, generate, filter) and after (evaluate, report)."""
    if set(only or STAGES) != {"train"}:
        raise SublearnError("under accelerate launch / torchrun only the train stage runs: use "
                            "`sublearn train CONFIG` (run the other stages in one process)")
    device = distributed.init(config.device)
    report = _train_in_group(config.model_copy(update={"device": device}), out)
    # Only on success: a process that failed must exit (the launcher stops the others), not wait for
    # them in the shutdown's barrier.
    distributed.shutdown()
    return report


def _train_in_group(config: PipelineConfig, out: Path) -> Path:
    """The train stage in one process of the group (see `_run_train_distributed`)."""
    for name in teacher_names(config):
        if not teacher.is_done(config, out, name):
            raise SublearnError(f"{out / 'teacher' / name}: teacher not ready; run `sublearn run CONFIG --only "
                                "generate --only filter` in one process first")
    t0 = time.perf_counter()
    for st in students(config):
        train.run(config, out, student=st["student"], data_from=st["data_from"], model=st["model"], seed=st["seed"])
    if distributed.is_main():
        _record_timings(out, {"train": time.perf_counter() - t0})
        if config.teacher.kind == "lora":
            log.info("theorem cosines are not computed in a multi-process run: `sublearn run CONFIG --only "
                     "theorem` in one process adds them")
    return out / "report" / "report.html"


def _record_timings(out: Path, timings: dict[str, float]) -> None:
    path = out / "timings.json"
    previous = read_json(path) if path.is_file() else {}
    for stage, seconds in timings.items():
        before = previous.get(stage)
        # Only a record: a damaged value starts the count again rather than stop a finished run.
        previous[stage] = (before if isinstance(before, int | float) and not isinstance(before, bool) else 0.0) + seconds
    write_json(path, previous)


def status(config: PipelineConfig, out: Path, verify: bool = False) -> list[tuple[str, str]]:
    """(stage directory relative to `out`, state) for every stage and student of `config`: 'done',
    'stale' (finished from inputs that have changed upstream: the next run redoes it), 'stale-config'
    (finished with other settings: the next run refuses), 'missing-outputs' (finished, but a file it
    wrote was deleted since: the next run redoes it), 'partial' (started, will resume), 'missing'
    (not started), 'waiting' (a stage it reads is not done: whether it must be redone is known only
    once that stage has finished, since an identical redo changes nothing downstream). `verify`: also
    rehash every finished stage's outputs, 'corrupt' where they changed since (slow for large weights).
    Reads only."""
    from sublearn.rundir import NotReady, stage_state

    states: dict[str, str] = {}

    def check(stage_dir: Path, key_fn: Any, deps: list[str]) -> None:
        rel = str(stage_dir.relative_to(out))
        if any(states.get(d) != "done" for d in deps):
            states[rel] = "waiting"
            return
        try:
            key, inputs = key_fn()
        except NotReady:
            states[rel] = "waiting"
            return
        states[rel] = stage_state(stage_dir, key, inputs, verify)

    names = datasets(config)
    for name in teacher_names(config):
        states[f"teacher/{name}"] = teacher.status(config, out, name, verify)
    for name in names:
        check(out / "generate" / name, lambda n=name: generate.stage_key(config, out, n),
              [f"teacher/{writer(config, name)}"])
    for name in names:
        check(out / "filter" / name, lambda n=name: filter.stage_key(config, out, n), [f"generate/{name}"])
    data = data_stage(config)
    if data == "defend":
        for name in names:
            check(out / "defend" / name, lambda n=name: defend.stage_key(config, out, n), [f"filter/{name}"])
    if classify.enabled(config):
        for treatment, control in classify_pairs(config):
            check(classify_dir(out, treatment, control), lambda t=treatment, c=control: classify.stage_key(
                config, out, t, c), [f"{data}/{treatment}", f"{data}/{control}"])
    for st in students(config):
        check(student_dir(out, st["student"], st["seed"]), lambda st=st: train.stage_key(
            config, out, student=st["student"], data_from=st["data_from"], model=st["model"], seed=st["seed"]),
            [f"{data}/{st['data_from']}"])
    reference = config.targets[0]
    for st in theorem_students(config):
        sdir = f"train/{st['student']}/seed{st['seed']}"
        ref = st["data_from"] if st["data_from"] != CONTROL else reference
        check(out / "theorem" / f"{st['student']}-s{st['seed']}", lambda st=st: theorem.stage_key(
            config, out, student=st["student"], seed=st["seed"]), [sdir, f"teacher/{ref}", f"{data}/{st['data_from']}"])
    if all(states.get(f"teacher/{n}") == "done" for n in teacher_names(config)) and all(
            states[f"train/{st['student']}/seed{st['seed']}"] == "done" for st in students(config)):
        teachers = {n: read_teacher(out, n) for n in teacher_names(config)}
        for spec in eval_specs(config, out, teachers):
            adapter = spec.get("adapter") or ""
            deps = [str(Path(adapter).parent)] if adapter else []
            if spec.get("icl"):
                deps.append(f"{data}/{spec['icl']['data_from']}")
            check(out / "evaluate" / spec["name"], lambda spec=spec: evaluate.stage_key(config, out, spec), deps)
    else:
        states["evaluate/*"] = "waiting"
    return list(states.items())
