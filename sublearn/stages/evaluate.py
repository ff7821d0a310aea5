"""Evaluate stage: the trait's evaluation of one model (a teacher, a student, a snapshot, the base).

    run(config, out, model_spec)   # -> out/evaluate/<name>/results.json + manifest.json

What is measured is the trait's (`config.trait.evaluate`; the preference trait: teacher-forced and
sampled rates per animal, per question, see `sublearn.traits.preference`; misalignment: judge-free
log-prob metrics and judged answers, see `sublearn.traits.misalignment`). This stage loads the
model (its adapter or full weights, on the configured engine), keys the result by the weights'
content, and writes per-question values so the report can compare students over seeds and questions.

A model spec is a dict: name, model (backend/model), and optionally adapter (LoRA dir), system_prompt,
role and target (used by the report).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.backends import Backend
from sublearn.rundir import NotReady, begin_stage, finish_stage, output_hash, read_json, write_json
from sublearn.stages.config import PipelineConfig

log = logging.getLogger(__name__)


# An input of every evaluation: bump it when the metrics' definition changes, so old results are redone.
METRICS_VERSION = 2  # 2: spellings scored in context (encode(prompt + word) minus encode(prompt))

# Fields that only the report uses: changing them must not redo (or refuse) any evaluation.
_REPORT_ONLY = {"n_bootstrap", "n_permutations"}


def stage_key(config: PipelineConfig, out: Path, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, inputs) of one evaluation. Settings: what the user chose (the evaluation config, the
    spec's name, role, adapter path, system prompt). Inputs: the content of the evaluated weights (the
    adapter or full-weights directory), the model id (an API student's changes when it is retrained)
    and the metrics' version, so a retrained student is re-evaluated and nothing else."""
    settings = {"evaluate": config.evaluate.model_dump(mode="json", exclude=_REPORT_ONLY), "seed": config.seed,
                "spec": {k: v for k, v in spec.items() if k not in ("model", "updates")}}
    trait_key = config.trait.evaluation_key()
    if trait_key is not None:
        settings["trait"] = trait_key
        settings["channel"] = config.channel.kind  # picks the sampled answers' suffix
    inputs = {"model": str(spec["model"]), "metrics": str(METRICS_VERSION)}
    adapter = spec.get("adapter")
    if adapter:
        path = out / adapter
        if not path.is_dir():
            raise NotReady(f"{path}: weights to evaluate not found; run the stage that writes them")
        inputs["weights"] = output_hash(path)
    return settings, inputs


def run(config: PipelineConfig, out: Path, spec: dict[str, Any], backend: Backend | None = None) -> dict[str, Any]:
    """Evaluate model `spec`; writes and returns `out/evaluate/<name>/results.json`. Skips when done."""
    from sublearn.stages.generate import open_backend

    name = spec["name"]
    edir = out / "evaluate" / name
    key, inputs = stage_key(config, out, spec)
    if begin_stage(edir, key, inputs):
        cached: dict[str, Any] = read_json(edir / "results.json")
        return cached
    own = backend is None
    if backend is None:
        # evaluate.backend swaps the engine for the pipeline's own base model (e.g. vLLM for Qwen);
        # only hf backends expose the weights the teacher-forced metric needs.
        model, adapter = spec["model"], spec.get("adapter")
        full_weights = adapter is not None and (out / adapter / "config.json").is_file()
        if config.evaluate.backend and model == config.model and not full_weights:
            model = config.evaluate.backend
        backend = open_backend(config, model, out, adapter, batch_size=config.evaluate.batch_size)
    try:
        result = config.trait.evaluate(config, backend, spec.get("system_prompt"), name, out)
    finally:
        if own:
            backend.close()
    result["spec"] = spec
    write_json(edir / "results.json", result)
    finish_stage(edir, key, inputs, [edir / "results.json"])
    values = result.get("metrics") or result.get("teacher_forced", {}).get("plain", {})
    log.info("evaluated %s: %s", name, ", ".join(f"{a} {np.nanmean(v):.3g}" for a, v in list(values.items())[:5]))
    return result
