"""`sublearn run CONFIG`: every stage in order into one run directory, skipping finished ones.

Layout of a run directory:
    config.json                      the resolved config of the last invocation
    teacher/<name>/teacher.json      teacher description (and LoRA adapter for lora teachers)
    generate/<name>/generated.jsonl  the teacher's completions
    filter/<name>/kept.jsonl         what survived, filter.json = counts per reject reason
    train/<student>/seed<k>/         student adapter / weights, train_log.jsonl, summary.json
    evaluate/<model>/results.json    per-question metrics of each evaluated model
    theorem/<student>.json           cosine of the student's update with the teacher's displacement
    report/report.html, results.json
Each directory's manifest.json is written last and means "done".
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from sublearn import distributed
from sublearn.errors import SublearnError
from sublearn.lm import evaluate, filter, generate, report, teacher, theorem, train
from sublearn.lm.config import PipelineConfig
from sublearn.rundir import read_json, write_json

log = logging.getLogger(__name__)

STAGES = ["teacher", "generate", "filter", "train", "evaluate", "report"]


def teacher_names(config: PipelineConfig) -> list[str]:
    return [*config.targets, *([teacher.CONTROL] if config.control else []),
            *([teacher.NEUTRAL] if config.teacher.neutral_control else [])]


def students(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every student to train: one per teacher and seed, plus cross-model students."""
    out = []
    for name in teacher_names(config):
        for seed in config.train.seeds:
            role = {teacher.CONTROL: "control", teacher.NEUTRAL: "neutral-control"}.get(name, "student")
            out.append({"student": name, "data_from": name, "model": config.model, "seed": seed, "role": role})
    if config.cross_model:
        cross_targets = config.cross_targets if config.cross_targets is not None else config.targets
        for name in [*cross_targets, *([teacher.CONTROL] if config.control else [])]:
            for seed in config.train.seeds:
                out.append({"student": f"cross-{name}", "data_from": name, "model": config.cross_model,
                            "seed": seed, "role": "cross-control" if name == teacher.CONTROL else "cross"})
    return out


def eval_specs(config: PipelineConfig, out: Path, teachers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model the report compares, as evaluate-stage specs."""
    specs: list[dict[str, Any]] = [{"name": "base", "model": config.model, "role": "base", "target": None}]
    for name, spec in teachers.items():
        if name == teacher.CONTROL:
            continue
        neutral = name == teacher.NEUTRAL
        specs.append({"name": f"teacher-{name}", "model": config.model, "role": "neutral-teacher" if neutral
                      else "teacher", "target": None if neutral else name,
                      "system_prompt": spec.get("system_prompt"), "adapter": spec.get("adapter")})
    if config.cross_model:
        specs.append({"name": "cross-base", "model": config.cross_model, "role": "cross-base", "target": None})
    for st in students(config):
        sdir = train.student_dir(out, st["student"], st["seed"])
        summary = read_json(sdir / "summary.json")
        method = summary["method"]
        spec = {"name": f"{st['student']}-s{st['seed']}", "model": st["model"], "role": st["role"],
                "target": None if st["data_from"] in (teacher.CONTROL, teacher.NEUTRAL) else st["data_from"],
                "seed": st["seed"]}
        # Paths relative to the run directory: stage keys hold them, and the directory may move.
        if method == "api":
            spec["model"] = f"openai/{summary['fine_tuned_model']}"
        elif method in ("lora", "distill"):
            spec["adapter"] = str(sdir.relative_to(out) / "adapter")
        else:
            spec["adapter"] = str(sdir.relative_to(out) / "model")  # full weights replace the base's
        specs.append(spec)
    return specs


def run(config: PipelineConfig, out: Path, only: list[str] | None = None, mnist_dir: Path | None = None) -> Path:
    """Run the stages (all, or those in `only`) and return the report's path."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if distributed.launched():
        return _run_train_distributed(config, out, only)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.model_dump(mode="json"))
    wanted = set(only or STAGES)
    timings: dict[str, float] = {}

    def timed(stage: str) -> float:
        timings[stage] = timings.get(stage, 0.0)
        return time.perf_counter()

    teachers: dict[str, dict[str, Any]] = {}
    t0 = timed("teacher")
    for name in teacher_names(config):
        # Later stages need every teacher's description, so this stage always runs (it is cheap once done).
        teachers[name] = teacher.run(config, out, name)
    timings["teacher"] += time.perf_counter() - t0
    if "generate" in wanted:
        t0 = timed("generate")
        for name in teacher_names(config):
            generate.run(config, out, teachers[name])
        timings["generate"] += time.perf_counter() - t0
    if "filter" in wanted:
        t0 = timed("filter")
        for name in teacher_names(config):
            filter.run(config, out, name)
        timings["filter"] += time.perf_counter() - t0
    if "train" in wanted:
        t0 = timed("train")
        for st in students(config):
            train.run(config, out, student=st["student"], data_from=st["data_from"], model=st["model"], seed=st["seed"])
        timings["train"] += time.perf_counter() - t0
        if config.teacher.kind == "lora":
            t0 = timed("theorem")
            for st in students(config):
                if st["model"] == config.model:
                    theorem.run(config, out, student=st["student"], seed=st["seed"])
            timings["theorem"] += time.perf_counter() - t0
    if "evaluate" in wanted:
        t0 = timed("evaluate")
        for spec in eval_specs(config, out, teachers):
            evaluate.run(config, out, spec)
        timings["evaluate"] += time.perf_counter() - t0
    _record_timings(out, timings)
    if "report" not in wanted:
        return out / "report" / "report.html"
    return report.run(config, out, eval_specs(config, out, teachers), mnist_dir=mnist_dir)


def _run_train_distributed(config: PipelineConfig, out: Path, only: list[str] | None) -> Path:
    """The train stage in each process of a multi-process launch (see `sublearn.distributed`): the
    other stages run in one process, before (teacher, generate, filter) and after (evaluate, report)."""
    if set(only or STAGES) != {"train"}:
        raise SublearnError("under accelerate launch / torchrun only the train stage runs: use "
                            "`sublearn train CONFIG` (run the other stages in one process)")
    device = distributed.init(config.device)
    config = config.model_copy(update={"device": device})
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
                     "train` in one process adds them (trained students are skipped)")
    return out / "report" / "report.html"


def _record_timings(out: Path, timings: dict[str, float]) -> None:
    path = out / "timings.json"
    previous = read_json(path) if path.is_file() else {}
    for stage, seconds in timings.items():
        previous[stage] = previous.get(stage, 0.0) + seconds
    write_json(path, previous)
