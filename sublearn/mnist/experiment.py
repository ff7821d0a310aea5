"""`sublearn mnist`: the auxiliary-logit experiment over many seeds, resumable, with a theorem check.

    results = run(MnistConfig(), Path("runs/mnist"))     # or: sublearn mnist --out runs/mnist
    print(summary_table(results))                        # sublearn.mnist.report

This module trains and records: the per-seed random streams, the teacher and student tasks, the
theorem cosines measured while training, the worker-thread scheduling and the resumable run
directory. The condition names and labels are in sublearn.mnist.config; the summaries, tables and
figure made from the finished seeds are in sublearn.mnist.report.

For every seed: a reference init θ0; a teacher trained from θ0 on digits (cross-entropy on the 10
digit logits only); four students distilled on noise images only, from θ0 ("same init") or from an
independent init ("different init"), imitating the teacher's m auxiliary logits only ("aux") or all
10+m logits ("all"). Test accuracy = argmax over the 10 digit logits on the 10k test set.

Parallelism: every model (a teacher, or one student) is a task trained by one worker thread with one
intra-op thread; `threads` workers run at once, students before new teachers. This keeps both cores
busy without OpenMP barriers (which stall badly when other processes share the cores) and makes
every number independent of `threads` and `chunk_size`: same seed, same bits.

Gradient-projection defense (`defense="project"` or "project_update", see MnistConfig.defense): every
student in `defense_conditions` also gets a defended twin, `defended_<condition>`, trained from the same
init on the same noise batches while the gradient of the digit cross-entropy on the defender's labelled
digits is projected out of every step; results.json["defense"] compares the two arms seed by seed
(sublearn.mnist.report.defense_comparison). Without a defense nothing of this runs and no result
changes.

Run directory: `config.json` (first), `seeds/seed_NNNNN.json` as each seed finishes (an interrupted
run resumes from them), then `results.json`, `mnist.png` and `manifest.json` (last).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sublearn.analysis.stats import mean_ci95
from sublearn.errors import SublearnError
from sublearn.logs import progress
from sublearn.mnist import model as mlp
from sublearn.mnist.config import CONDITIONS, DEFENDED, PAPER, STUDENTS, MnistConfig
from sublearn.mnist.data import load_mnist
from sublearn.mnist.report import defense_comparison, plot, summarize
from sublearn.mnist.train import (
    NoiseSource,
    TraitDefense,
    accuracy,
    distill_loss,
    make_noise,
    steps_per_epoch,
    train_student,
    train_teacher,
)
from sublearn.rundir import (
    check_config_matches,
    kernels,
    read_json,
    stage_done,
    use_portable_kernels,
    versions,
    write_json,
    write_manifest,
)

log = logging.getLogger(__name__)

# Independent random streams per seed (a SeedSequence of [seed, stream]).
S_REF_INIT, S_OTHER_INIT, S_TEACHER_BATCHES, S_NOISE, S_STUDENT_BATCHES, S_PERTURB, S_THEOREM = range(7)
S_DEFENSE_POOL, S_DEFENSE_BATCHES = 7, 8


def students(config: MnistConfig) -> list[str]:
    """Every student trained per seed: the four of STUDENTS, then the defended twins (if any)."""
    return STUDENTS + [DEFENDED + c for c in config.defended()]


def conditions(config: MnistConfig) -> list[str]:
    """Every accuracy recorded per seed, in the order of the table."""
    return CONDITIONS + [DEFENDED + c for c in config.defended()]


def generator(seed: int, stream: int) -> torch.Generator:
    """The torch generator of one seed's random stream (see the S_* constants)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))


def sizes(config: MnistConfig) -> list[int]:
    return [784, config.hidden, config.hidden, 10 + config.n_aux]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def first_gradient(params: list[torch.Tensor], x: torch.Tensor, teacher_logits: torch.Tensor, aux_only: bool,
                   n_aux: int) -> torch.Tensor:
    """−∇θ of the distillation loss at `params`, on inputs `x`, flattened."""
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(distill_loss(mlp.forward(leaves, x), teacher_logits, aux_only, n_aux), leaves)
    return -mlp.flatten(list(grads))


def theorem_cosines(displacement: torch.Tensor, minus_grad: torch.Tensor, start: torch.Tensor,
                    after_k: torch.Tensor | None, final: torch.Tensor) -> dict[str, float | None]:
    """The theorem check for one student, all vectors flattened over every parameter:

    - cos_first_gradient = cos(−∇L_distill(θ_S,init), θ_T − θ_0): the direction of an infinitesimal
      gradient step of the student at its init, on a batch of `theorem_examples` noise images,
      against the teacher's displacement from the reference init. This is the theorem's quantity:
      with a shared init (θ_S,init = θ_0) it is predicted ≥ 0 (for a small teacher step), with a
      different init there is no such guarantee.
    - cos_after_k_steps = cos(θ_S after `theorem_steps` Adam steps − θ_S,init, θ_T − θ_0): the same
      after the real optimiser's first few steps (Adam rescales the gradient per coordinate).
    - cos_final = cos(θ_S final − θ_S,init, θ_T − θ_0): the whole distillation run.
    """
    return {"cos_first_gradient": _cos(minus_grad, displacement),
            "cos_after_k_steps": None if after_k is None else _cos(after_k - start, displacement),
            "cos_final": _cos(final - start, displacement)}


@dataclass
class SeedState:
    """What one seed's students need from its teacher task, and their results so far."""

    seed: int
    reference: list[torch.Tensor]
    other: list[torch.Tensor]
    teacher: list[torch.Tensor]
    source: NoiseSource
    theorem_x: torch.Tensor | None
    theorem_t: torch.Tensor | None
    record: dict[str, Any]
    pending: set[str] = field(default_factory=lambda: set(STUDENTS))
    # Indices of the defender's labelled training digits (only with a defense).
    pool: torch.Tensor | None = None


class _Cancelled(Exception):
    """Raised inside workers once the run is being torn down (interrupt or error elsewhere)."""


def teacher_task(seed: int, data: tuple[torch.Tensor, ...], config: MnistConfig, tick: Callable[[], None]
                 ) -> SeedState:
    """Inits, teacher, the noise set and the teacher's logits on it, for one seed."""
    t0 = time.perf_counter()
    train_x, train_y, test_x, test_y = data
    shape = sizes(config)
    reference = mlp.init_params(shape, generator(seed, S_REF_INIT))
    other = mlp.init_params(shape, generator(seed, S_OTHER_INIT))
    teacher = [p.clone() for p in reference]
    train_teacher(teacher, train_x, train_y, config, generator(seed, S_TEACHER_BATCHES), tick)
    source = NoiseSource.make(config, generator(seed, S_NOISE), teacher)
    theorem_x = theorem_t = None
    if config.theorem:
        k = config.theorem_examples
        if source.images is not None and source.teacher_logits is not None and k <= len(source.images):
            theorem_x, theorem_t = source.images[:k], source.teacher_logits[:k]
        else:
            theorem_x = make_noise(config, generator(seed, S_THEOREM), k)
            with torch.no_grad():
                theorem_t = mlp.forward(teacher, theorem_x)
    record: dict[str, Any] = {
        "seed": seed,
        "accuracy": {"reference": accuracy(reference, test_x, test_y), "teacher": accuracy(teacher, test_x, test_y)},
        "seconds": {}}
    if config.theorem:
        record["theorem"] = {}
    pool = None
    if config.defended():
        # The defender's pool: a seeded subset of the training digits (all of them by default).
        pool = torch.randperm(len(train_x), generator=generator(seed, S_DEFENSE_POOL))[:config.defense_examples]
        record["defense"] = {}
    record["seconds"]["teacher"] = time.perf_counter() - t0
    return SeedState(seed, reference, other, teacher, source, theorem_x, theorem_t, record,
                     set(students(config)), pool)


def student_init(state: SeedState, condition: str, config: MnistConfig) -> list[torch.Tensor]:
    """The student's starting parameters: θ0 (optionally perturbed) or the seed's other init."""
    if condition.startswith("diff_init"):
        return [p.clone() for p in state.other]
    if config.student_init_std == 0:
        return [p.clone() for p in state.reference]
    gen = generator(state.seed, S_PERTURB)  # the same perturbation for both same-init students
    return [p + config.student_init_std * torch.randn(p.shape, generator=gen) for p in state.reference]


def student_task(state: SeedState, condition: str, data: tuple[torch.Tensor, ...], config: MnistConfig,
                 tick: Callable[[], None]) -> dict[str, Any]:
    """Distill one student (a `defended_` one with the defense); returns its accuracy, theorem cosines,
    time, and for a defended student what the defense did."""
    t0 = time.perf_counter()
    aux_only = condition.endswith("_aux")
    defense = None
    if condition.startswith(DEFENDED):
        assert state.pool is not None and config.defense != "none"
        # Its own stream, the same for every defended student of a seed.
        defense = TraitDefense(data[0], data[1], state.pool, generator(state.seed, S_DEFENSE_BATCHES),
                               config.defense, config.defense_batch_size)
    params = student_init(state, condition.removeprefix(DEFENDED), config)
    start = mlp.flatten(params)
    minus_grad = None
    if state.theorem_x is not None and state.theorem_t is not None:
        minus_grad = first_gradient(params, state.theorem_x, state.theorem_t, aux_only, config.n_aux)
    snapshot = train_student(params, state.source, aux_only, config, generator(state.seed, S_STUDENT_BATCHES),
                             tick, config.theorem_steps if config.theorem else None, defense)
    out: dict[str, Any] = {"accuracy": accuracy(params, data[2], data[3])}
    if defense is not None:
        out["defense"] = defense.stats()
        # Diagnostic: the projection moves the digit head too (t has digit-head components that g lacks
        # for an aux-only student). With θ0's digit head put back, does the body still carry the trait?
        reset = [p.clone() for p in params]
        reset[-2][:, :10], reset[-1][:10] = state.reference[-2][:, :10], state.reference[-1][:10]
        out["defense"]["accuracy_init_digit_head"] = accuracy(reset, data[2], data[3])
    if minus_grad is not None:
        displacement = mlp.flatten(state.teacher) - mlp.flatten(state.reference)
        out["theorem"] = theorem_cosines(displacement, minus_grad, start,
                                         None if snapshot is None else mlp.flatten(snapshot), mlp.flatten(params))
    out["seconds"] = time.perf_counter() - t0
    return out


def _seed_path(out: Path, seed: int) -> Path:
    return out / "seeds" / f"seed_{seed:05d}.json"


def _save_seed(out: Path, record: dict[str, Any]) -> None:
    write_json(_seed_path(out, record["seed"]), record)


def _train_seeds(seeds: list[int], data: tuple[torch.Tensor, ...], config: MnistConfig, out: Path,
                 advance: Callable[[int], None]) -> None:
    """Run the teacher and student tasks of `seeds` on `config.workers()` threads, saving each seed as
    it finishes. Students of started seeds go first, and at most `chunk_size` seeds are in flight."""
    stop = threading.Event()

    def tick() -> None:
        if stop.is_set():
            raise _Cancelled
        advance(1)

    def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
        # Each worker computes on its own thread only (torch's thread count is per calling thread).
        torch.set_num_threads(1)
        return fn(*args)

    todo = deque(seeds)
    ready: deque[tuple[SeedState, str]] = deque()
    active: set[int] = set()  # seeds started and not yet saved
    inflight: dict[Future[Any], tuple[str, Any]] = {}
    workers = config.workers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mnist")
    try:
        while todo or ready or inflight:
            while len(inflight) < workers and (ready or (todo and len(active) < config.chunk_size)):
                if ready:
                    state, cond = ready.popleft()
                    fut = pool.submit(in_worker, student_task, state, cond, data, config, tick)
                    inflight[fut] = ("student", (state, cond))
                else:
                    seed = todo.popleft()
                    active.add(seed)
                    inflight[pool.submit(in_worker, teacher_task, seed, data, config, tick)] = ("teacher", seed)
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, what = inflight.pop(fut)
                result = fut.result()
                if kind == "teacher":
                    ready.extend((result, cond) for cond in students(config))
                    continue
                state, cond = what
                state.record["accuracy"][cond] = result["accuracy"]
                state.record["seconds"][cond] = result["seconds"]
                if "theorem" in result:
                    state.record["theorem"][cond] = result["theorem"]
                if "defense" in result:
                    state.record["defense"][cond] = result["defense"]
                state.pending.discard(cond)
                if not state.pending:
                    rec = state.record
                    rec["accuracy"] = {c: rec["accuracy"][c] for c in conditions(config)}
                    rec["kernels"] = kernels()  # a resumed run may span processes
                    _save_seed(out, rec)
                    active.discard(state.seed)
                    log.info("seed %d done: %s", state.seed,
                             ", ".join(f"{c} {rec['accuracy'][c]:.3f}" for c in conditions(config)))
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run(config: MnistConfig, out: Path) -> dict[str, Any]:
    """Run (or resume, or reload when finished) the experiment into `out`; returns the results dict."""
    if stage_done(out, config):
        cached: dict[str, Any] = read_json(out / "results.json")
        return cached
    out.mkdir(parents=True, exist_ok=True)
    check_config_matches(out, config)
    t0 = time.perf_counter()
    seeds = config.seed_list()
    todo = [s for s in seeds if not _seed_path(out, s).is_file()]
    if len(todo) < len(seeds):
        log.info("resuming: %d of %d seeds already done in %s", len(seeds) - len(todo), len(seeds), out)
    if todo:
        arrays = load_mnist(config.data_dir)
        if config.kernels == "portable" and not use_portable_kernels():
            log.warning("kernels=portable asked for, but torch had already computed in this process: the "
                        "native kernels run (%s), whose last bits depend on the processor; `sublearn mnist` "
                        "starts a process of its own", kernels())
        data = tuple(torch.from_numpy(a) for a in arrays)
        per_seed = (config.teacher_epochs * steps_per_epoch(len(arrays[0]), config.batch_size)
                    + len(students(config)) * config.student_epochs * steps_per_epoch(config.n_noise, config.batch_size))
        threads_before = torch.get_num_threads()
        try:
            with progress() as bar:
                task = bar.add_task(f"mnist: {len(todo)} seeds", total=per_seed * len(todo))
                _train_seeds(todo, data, config, out, lambda n: bar.advance(task, n))
        finally:
            torch.set_num_threads(threads_before)
    records = [read_json(_seed_path(out, s)) for s in seeds]
    results = {**summarize(records), **({"defense": defense_comparison(records, config)} if config.defended() else {}),
               "paper": PAPER, "seeds": records, "config": config.model_dump(mode="json"),
               "versions": versions(),
               "timing": {"seconds_this_session": time.perf_counter() - t0, "seeds_trained_this_session": len(todo),
                          "workers": config.workers(),
                          "model_seconds_per_seed": mean_ci95([sum(r["seconds"].values()) for r in records])[0]}}
    write_json(out / "results.json", results)
    plot(results, out / "mnist.png")
    write_manifest(out, config)
    return results


def run_in_new_process(out: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """`sublearn mnist --out OUT [--set KEY=VALUE ...]` (the shipped defaults, changed by `overrides`) in a
    child process, and its results: the portable kernels it asks for are then chosen before torch
    computes there, while this process keeps its own (the demo's language-model stages run on the
    native ones). Its progress shows on stderr."""
    cmd = [sys.executable, "-m", "sublearn", "mnist", "--out", str(out)]
    for override in overrides:
        cmd += ["--set", override]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise SublearnError(f"the MNIST experiment (`{' '.join(cmd[2:])}`) stopped with status "
                            f"{done.returncode}; its message is above")
    results: dict[str, Any] = read_json(out / "results.json")
    return results
