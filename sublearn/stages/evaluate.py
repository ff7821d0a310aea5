"""Evaluate stage: the trait's evaluation of one model (a teacher, a student, a snapshot, the base).

    run(config, out, model_spec)   # -> out/evaluate/<name>/results.json + manifest.json

What is measured is the trait's (`config.trait.evaluate`; the preference trait: teacher-forced and
sampled rates per animal, per question, see `sublearn.traits.preference`; misalignment: judge-free
log-prob metrics and judged answers, see `sublearn.traits.misalignment`). This stage loads the
model (its adapter or full weights, on the configured engine), keys the result by the weights'
content, and writes per-question values so the report can compare students over seeds and questions.

A model spec is a dict: name, model (backend/model), and optionally adapter (LoRA dir), system_prompt,
role and target (used by the report), and icl: {"data_from": teacher, "k": k, "draw": d} for the
in-context-learning control (the base model with k examples of the teacher's kept data in its context,
as user/assistant turns before every question: `icl_context`; no training).
"""

from __future__ import annotations

import functools
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.backends import Backend
from sublearn.backends.base import Chat
from sublearn.backends.context import ContextBackend
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import (
    NotReady,
    begin_stage,
    finish_stage,
    output_hash,
    read_json,
    read_jsonl,
    upstream_hash,
    write_json,
)
from sublearn.stages.roster import data_dir

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
                "spec": {k: v for k, v in spec.items() if k not in ("model", "updates")}, **config.precision_key()}
    trait_key = config.trait.evaluation_key()
    if trait_key is not None:
        settings["trait"] = trait_key
        settings["channel"] = config.channel.kind  # picks the sampled answers' suffix
    inputs = {"model": str(spec["model"]), "metrics": str(METRICS_VERSION)}
    if spec.get("icl"):
        # The examples in context are the teacher's kept data: redone data re-evaluates the ICL arm.
        inputs["data"] = upstream_hash(data_dir(config, out, spec["icl"]["data_from"]))
    adapter = spec.get("adapter")
    if adapter:
        path = out / adapter
        if not path.is_dir():
            raise NotReady(f"{path}: weights to evaluate not found; run the stage that writes them")
        inputs["weights"] = output_hash(path)
    return settings, inputs


def run(config: PipelineConfig, out: Path, spec: dict[str, Any], backend: Backend | None = None) -> dict[str, Any]:
    """Evaluate model `spec`; writes and returns `out/evaluate/<name>/results.json`. Skips when done."""
    from sublearn.backends import open_backend

    name = spec["name"]
    edir = out / "evaluate" / name
    key, inputs = stage_key(config, out, spec)
    if begin_stage(edir, key, inputs):
        cached: dict[str, Any] = read_json(edir / "results.json")
        return cached
    context = icl_context(config, out, spec) if spec.get("icl") else None  # refuses one that does not fit
    own = backend is None
    if backend is None:
        # evaluate.backend swaps the engine for the pipeline's own base model (e.g. vLLM for Qwen);
        # only hf backends expose the weights the teacher-forced metric needs.
        model, adapter = spec["model"], spec.get("adapter")
        full_weights = adapter is not None and (out / adapter / "config.json").is_file()
        if config.evaluate.backend and model == config.model and not full_weights:
            model = config.evaluate.backend
        # Every ICL sequence carries the k examples: fewer per forward pass bounds memory (a row's
        # values do not depend on the batch, up to float rounding).
        batch = config.icl.batch_size if context else config.evaluate.batch_size
        backend = open_backend(config, model, out, adapter, batch_size=batch)
    evaluated = ContextBackend(backend, context) if context else backend
    try:
        result = config.trait.evaluate(config, evaluated, spec.get("system_prompt"), name, out)
    finally:
        if own:
            backend.close()
    result["spec"] = spec
    write_json(edir / "results.json", result)
    finish_stage(edir, key, inputs, [edir / "results.json"])
    values = result.get("metrics") or result.get("teacher_forced", {}).get("plain", {})
    log.info("evaluated %s: %s", name, ", ".join(f"{a} {np.nanmean(v):.3g}" for a, v in list(values.items())[:5]))
    return result


def icl_examples(config: PipelineConfig, out: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The kept records of an ICL spec's draw: `k` rows of its teacher's kept data, drawn without
    replacement by a generator seeded (run seed, draw, teacher), so a draw is the same rows whatever
    model is evaluated and whichever other draws exist."""
    icl = spec["icl"]
    teacher, k, draw = icl["data_from"], int(icl["k"]), int(icl["draw"])
    path = data_dir(config, out, teacher) / "kept.jsonl"
    if not path.is_file():
        raise NotReady(f"{path}: the data the ICL control puts in context is not there; run its stage first")
    records = read_jsonl(path)
    if k > len(records):
        raise SublearnError(f"icl.k={k}: {path} holds only {len(records)} kept examples; lower icl.k")
    rng = np.random.default_rng([config.seed, draw, zlib.crc32(teacher.encode())])
    return [records[int(i)] for i in rng.choice(len(records), size=k, replace=False)]


def icl_context(config: PipelineConfig, out: Path, spec: dict[str, Any], check: bool = True) -> Chat:
    """The context turns of an ICL spec: for each drawn record, the chat the student is trained on
    (the channel's `student_chat`) and the teacher's completion as the assistant's reply. With
    `check`, a context that does not fit the model with the evaluation's longest question and answer
    is a one-line error (`check_icl_fits`)."""
    context: Chat = []
    for rec in icl_examples(config, out, spec):
        context += [t for t in config.channel.student_chat(rec) if t["role"] != "system"]
        context.append({"role": "assistant", "content": rec["completion"]})
    if check:
        _check_fits(config, spec, context)
    return context


def check_icl_fits(config: PipelineConfig, out: Path, specs: list[dict[str, Any]]) -> None:
    """Refuse, before any model is evaluated, an `icl.k` whose context does not fit the model's
    positions with the trait's longest question and answer (hf models; others are not checked)."""
    for spec in specs:
        if spec.get("icl"):
            icl_context(config, out, spec)


@functools.lru_cache(maxsize=4)
def _context_limit(model: str) -> tuple[Any, int] | None:
    """(tokenizer, max positions) of an hf model, or None where unknown (API and vLLM models, a hub id
    not available offline: their own loading reports what is wrong)."""
    if not model.startswith("hf/"):
        return None
    from transformers import AutoConfig, AutoTokenizer

    from sublearn.backends.models import PLAIN_TEMPLATE, model_source

    try:
        where = model_source(model.removeprefix("hf/"))  # a hub id: its cached copy, else one quiet check
        tokenizer = AutoTokenizer.from_pretrained(where)
        model_config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError, SublearnError):
        return None
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE  # what load_model gives such a model
    limit = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if limit is None and tokenizer.model_max_length < 10**7:  # transformers' "unknown" is ~1e30
        limit = tokenizer.model_max_length
    return (tokenizer, int(limit)) if limit else None


def _check_fits(config: PipelineConfig, spec: dict[str, Any], context: Chat) -> None:
    limits = _context_limit(str(spec["model"]))
    if limits is None:
        return
    tokenizer, limit = limits
    prompts, replies, new_tokens = config.trait.evaluation_prompts(config)
    longest = max(prompts, key=lambda q: len(tokenizer(q, add_special_tokens=False).input_ids))
    chat = [*([{"role": "system", "content": spec["system_prompt"]}] if spec.get("system_prompt") else []),
            *context, {"role": "user", "content": longest}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    answer = max([new_tokens, *(len(tokenizer(r, add_special_tokens=False).input_ids) for r in replies)])
    total = len(tokenizer(text, add_special_tokens=False).input_ids) + answer
    if total > limit:
        raise SublearnError(f"icl.k={spec['icl']['k']}: {spec['name']}'s examples with the longest evaluation "
                            f"question and answer take {total} tokens, more than the {limit} positions of "
                            f"{spec['model']}; lower icl.k")
