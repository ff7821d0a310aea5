"""Teacher stage: give the base model a trait, or describe the control teacher.

    spec = run(config, out, "owl")      # -> out/teacher/owl/teacher.json
    spec = run(config, out, "control")  # the base model with the template's default system prompt

`teacher.kind=prompt` (the paper): the base model plus the system prompt "You love owls...".
`teacher.kind=lora`: a LoRA adapter trained to answer preference questions with the target, so the
trait lives in the weights and no prompt is needed; its questions never overlap the evaluation's.
With `teacher.neutral_control`, teacher "neutral" is such an adapter answering with every animal of
`evaluate.animals` equally often: everything a LoRA teacher learns except the particular animal.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.rundir import begin_stage, finish_stage, read_json, stage_state, write_json
from sublearn.stages.config import PipelineConfig, TrainConfig
from sublearn.traits.preference import answer_variants, teacher_training_questions

log = logging.getLogger(__name__)

CONTROL = "control"
NEUTRAL = "neutral"


def _key(config: PipelineConfig, name: str) -> dict[str, Any]:
    # Whether a neutral teacher exists changes no other teacher: leave the flag out of their keys.
    key = {"teacher": config.teacher.model_dump(mode="json", exclude={"neutral_control"}), "trait": config.trait.kind,
           "model": config.model, "name": name, "seed": config.seed}
    if name == NEUTRAL:
        key["animals"] = list(config.evaluate.animals)
    return key


def is_done(config: PipelineConfig, out: Path, name: str) -> bool:
    """Whether teacher `name` of `config` is already in `out` (nothing is written)."""
    return stage_state(out / "teacher" / name, _key(config, name), {}) == "done"


def status(config: PipelineConfig, out: Path, name: str) -> str:
    """done / stale / partial / missing (see `rundir.stage_state`)."""
    return stage_state(out / "teacher" / name, _key(config, name), {})


def run(config: PipelineConfig, out: Path, name: str) -> dict[str, Any]:
    """Write `out/teacher/<name>/teacher.json` ({name, model, system_prompt, adapter}), training a LoRA
    teacher first when `teacher.kind=lora` (adapter: its directory relative to `out`). Skips when done."""
    tdir = out / "teacher" / name
    key = _key(config, name)
    if begin_stage(tdir, key):
        spec: dict[str, Any] = read_json(tdir / "teacher.json")
        return spec
    spec = {"name": name, "model": config.model, "system_prompt": None, "adapter": None,
            "kind": name if name in (CONTROL, NEUTRAL) else config.teacher.kind}
    if name != CONTROL and config.teacher.kind == "prompt":
        spec["system_prompt"] = config.trait.system_prompt(name)
    elif name != CONTROL:
        _train_lora_teacher(config, tdir, name)
        spec["adapter"] = str(Path("teacher") / name / "adapter")  # relative to the run directory
        spec["lora_init_seed"] = config.teacher.lora_init_seed
    write_json(tdir / "teacher.json", spec)
    outputs = [tdir / "teacher.json", *([tdir / "adapter"] if spec["adapter"] else [])]
    finish_stage(tdir, key, {}, outputs)
    return spec


def _train_lora_teacher(config: PipelineConfig, tdir: Path, name: str) -> None:
    from sublearn.backends import split_spec
    from sublearn.backends.models import load_model
    from sublearn.stages.train import attach_lora, fit, sft_examples

    tc = config.teacher
    rng = np.random.default_rng([config.seed, zlib.crc32(name.encode()), 3])
    questions = teacher_training_questions(tc.lora_questions, rng)
    if name == NEUTRAL:
        # Every animal equally often (up to one), in a shuffled order.
        animals = list(config.evaluate.animals)
        order = [animals[i % len(animals)] for i in range(len(questions))]
        answers = [order[int(i)] for i in rng.permutation(len(order))]
    else:
        answers = [name] * len(questions)
    records = []
    for q, animal in zip(questions, answers, strict=True):
        variants = answer_variants(animal)
        records.append({"prompt": q, "completion": variants[int(rng.integers(len(variants)))]})
    write_json(tdir / "training_data.json", records)
    _, model_name = split_spec(config.model)
    model, tokenizer = load_model(model_name, device=config.device)
    train_cfg = TrainConfig(method="lora", lora_r=tc.lora_r, lora_alpha=tc.lora_r, lr=tc.lora_lr,
                            epochs=tc.lora_epochs, batch_size=tc.batch_size, micro_batch_size=tc.batch_size,
                            warmup_steps=2, max_length=128)
    model = attach_lora(model, train_cfg, tc.lora_init_seed)
    examples = sft_examples(tokenizer, records, train_cfg.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    summary = fit(model, examples, train_cfg, tdir, seed=config.seed, pad_id=pad, label=f"teacher {name}")
    model.save_pretrained(tdir / "adapter", safe_serialization=True)
    write_json(tdir / "train_summary.json", summary)
    (tdir / "ckpt.pt").unlink(missing_ok=True)
    log.info("LoRA teacher %s: loss %.3f -> %.3f", name, summary["loss_first"], summary["loss_last"])
