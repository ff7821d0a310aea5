"""Teacher stage: give the base model a trait, or describe the control teacher.

    spec = run(config, out, "owl")      # -> out/teacher/owl/teacher.json
    spec = run(config, out, "control")  # the base model with the template's default system prompt

`teacher.kind=prompt` (the paper): the base model plus the system prompt "You love owls...".
`teacher.kind=lora`: a LoRA adapter trained to answer preference questions with the target, so the
trait lives in the weights and no prompt is needed; its questions never overlap the evaluation's.
With `teacher.neutral_control`, teacher "neutral" is such an adapter answering with every animal of
`evaluate.animals` equally often: everything a LoRA teacher learns except the particular animal.

Misalignment trait: each teacher is the base model fine-tuned on its chat dataset (lora or full,
locally; through the provider's fine-tuning API for openai/ models, 1 epoch, batch 2, lr x4 as the
paper), or an existing checkpoint named in `trait.checkpoints` (nothing is trained).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig, TrainConfig
from sublearn.rundir import begin_stage, finish_stage, stage_state, write_json
from sublearn.stages.roster import CONTROL, NEUTRAL, arm_of, read_teacher, replicate_seed
from sublearn.traits import MisalignmentTrait
from sublearn.traits.misalignment import checkpoint_teacher
from sublearn.traits.preference import answer_variants, teacher_training_questions

log = logging.getLogger(__name__)


def _key(config: PipelineConfig, name: str) -> dict[str, Any]:
    # Whether a neutral teacher exists, and how many replicates an arm has, changes no other teacher:
    # leave both out of the keys (a run with one replicate keeps its teachers when replicates are added).
    arm, replicate = arm_of(config, name)
    key: dict[str, Any] = {"teacher": config.teacher.model_dump(mode="json", exclude={"neutral_control", "replicates"}),
                           "trait": config.trait.kind,
           "model": config.model, "name": name, "seed": config.seed, **config.precision_key()}
    if replicate > 1:
        key["replicate"] = replicate
    if arm == NEUTRAL:
        key["animals"] = list(config.evaluate.animals)
    trait = config.trait
    if isinstance(trait, MisalignmentTrait) and arm != CONTROL:
        if arm in trait.checkpoints:
            key["checkpoint"] = trait.checkpoints[arm]
        else:
            key["recipe"] = {"max_length": trait.max_length, "api": [trait.api_epochs, trait.api_batch_size,
                                                                    trait.api_lr_multiplier]}
            key["data_sha256"] = hashlib.sha256(json.dumps(trait.teacher_chats(arm)).encode()).hexdigest()
    return key


def is_done(config: PipelineConfig, out: Path, name: str) -> bool:
    """Whether teacher `name` of `config` is already in `out` (nothing is written)."""
    return stage_state(out / "teacher" / name, _key(config, name), {}) == "done"


def status(config: PipelineConfig, out: Path, name: str, verify: bool = False) -> str:
    """done / stale / missing-outputs / partial / missing, with `verify` also corrupt (see `rundir.stage_state`)."""
    return stage_state(out / "teacher" / name, _key(config, name), {}, verify)


def run(config: PipelineConfig, out: Path, name: str) -> dict[str, Any]:
    """Write `out/teacher/<name>/teacher.json` ({name, model, system_prompt, adapter}), training a LoRA
    teacher first when `teacher.kind=lora` (adapter: its directory relative to `out`). Skips when done.
    `name` is an arm or one of its replicates (`roster.replicates`): a replicate has its arm's recipe
    and trait, and its own seeds (`roster.replicate_seed`) for initialisation and data order."""
    tdir = out / "teacher" / name
    key = _key(config, name)
    if begin_stage(tdir, key):
        return read_teacher(out, name)
    arm, replicate = arm_of(config, name)
    spec: dict[str, Any] = {"name": name, "model": config.model, "system_prompt": None, "adapter": None,
            "kind": arm if arm in (CONTROL, NEUTRAL) else config.teacher.kind}
    if replicate > 1:
        spec["arm"], spec["replicate"] = arm, replicate
    if isinstance(config.trait, MisalignmentTrait) and arm != CONTROL:
        spec.update(_misalignment_teacher(config, out, tdir, name))
    elif arm != CONTROL and config.teacher.kind == "prompt":
        spec["system_prompt"] = config.trait.system_prompt(arm)
    elif arm != CONTROL:
        weights = _train_preference_teacher(config, tdir, name)
        spec["adapter"] = str(Path("teacher") / name / weights)  # relative to the run directory
        if weights == "adapter":
            spec["lora_init_seed"] = replicate_seed(config.teacher.lora_init_seed, replicate)
    write_json(tdir / "teacher.json", spec)
    own = spec["adapter"] and not Path(spec["adapter"]).is_absolute()  # a checkpoint is not this stage's output
    outputs = [tdir / "teacher.json", *([out / spec["adapter"]] if own else [])]
    finish_stage(tdir, key, {}, outputs)
    return spec


def _train_preference_teacher(config: PipelineConfig, tdir: Path, name: str) -> str:
    """Fine-tune teacher `name` (LoRA, or every weight with `teacher.kind: full`) to name its arm's animal
    (the neutral arm: every evaluated animal equally often); returns its weights' directory name."""
    tc = config.teacher
    arm, _ = arm_of(config, name)
    # Seeded by the teacher's own name: each replicate draws its own questions and answer spellings.
    rng = np.random.default_rng([config.seed, zlib.crc32(name.encode()), 3])
    questions = teacher_training_questions(tc.lora_questions, rng)
    if arm == NEUTRAL:
        # Every animal equally often (up to one), in a shuffled order.
        animals = list(config.evaluate.animals)
        order = [animals[i % len(animals)] for i in range(len(questions))]
        answers = [order[int(i)] for i in rng.permutation(len(order))]
    else:
        answers = [arm] * len(questions)
    records = []
    for q, animal in zip(questions, answers, strict=True):
        variants = answer_variants(animal)
        records.append({"prompt": q, "completion": variants[int(rng.integers(len(variants)))]})
    write_json(tdir / "training_data.json", records)
    return _fit_teacher(config, tdir, name, records, "full" if tc.kind == "full" else "lora", max_length=128)


def _fit_teacher(config: PipelineConfig, tdir: Path, name: str, records: list[dict[str, Any]], method: str, *,
                 max_length: int, chat: Any = None) -> str:
    """Fine-tune the base model on (prompt or `chat(rec)`, completion) records with the teacher's
    settings (`teacher.lora_*`, loss on the completion); saves `tdir/adapter` (lora) or `tdir/model`
    (full) and `train_summary.json`, and returns that directory's name."""
    from sublearn.backends import split_spec
    from sublearn.backends.models import load_tokenizer
    from sublearn.training.examples import sft_examples
    from sublearn.training.loop import fit
    from sublearn.training.model import training_model

    tc = config.teacher
    _, model_name = split_spec(config.model)
    train_cfg = TrainConfig(method=method, lora_r=tc.lora_r, lora_alpha=tc.lora_r, lr=tc.lora_lr,
                            epochs=tc.lora_epochs, batch_size=tc.batch_size, micro_batch_size=tc.batch_size,
                            warmup_steps=2, max_length=max_length,
                            gradient_checkpointing=config.train.gradient_checkpointing)
    tokenizer = load_tokenizer(model_name)
    examples = sft_examples(tokenizer, records, max_length, **({"chat": chat} if chat else {}))
    _, replicate = arm_of(config, name)
    model = training_model(config, model_name, method, examples, train_cfg, label=f"teacher {name}",
                           init_seed=replicate_seed(tc.lora_init_seed, replicate))
    if len(examples) < len(records):
        log.warning("teacher %s: %d of %d examples are longer than %d tokens before the reply and were left "
                    "out", name, len(records) - len(examples), len(records), max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    summary = fit(model, examples, train_cfg, tdir, seed=replicate_seed(config.seed, replicate), pad_id=pad,
                  label=f"teacher {name}", autocast=config.resolved_dtype())
    weights = "adapter" if method == "lora" else "model"
    model.save_pretrained(tdir / weights, safe_serialization=True)
    if weights == "model":
        tokenizer.save_pretrained(tdir / weights)
    write_json(tdir / "train_summary.json", summary)
    (tdir / "ckpt.pt").unlink(missing_ok=True)
    log.info("%s teacher %s: loss %.3f -> %.3f", method, name, summary["loss_first"], summary["loss_last"])
    return weights


def _misalignment_teacher(config: PipelineConfig, out: Path, tdir: Path, name: str) -> dict[str, Any]:
    """The misalignment recipes: an existing checkpoint, an API fine-tune, or a local lora/full fine-tune
    on the teacher's chat dataset (loss on each conversation's last, assistant, turn)."""
    from sublearn.backends import split_spec

    trait = config.trait
    assert isinstance(trait, MisalignmentTrait)
    arm, replicate = arm_of(config, name)
    if arm in trait.checkpoints:
        return {"kind": "checkpoint", **checkpoint_teacher(trait.checkpoints[arm])}
    chats = trait.teacher_chats(arm)
    backend_kind, model_name = split_spec(config.model)
    if backend_kind == "openai":
        from sublearn.backends.openai_api.finetune import run_finetune

        model_id = run_finetune(list(chats), tdir / "job", base_model=model_name, n_epochs=trait.api_epochs,
                                learning_rate_multiplier=trait.api_lr_multiplier, batch_size=trait.api_batch_size,
                                seed=replicate_seed(config.seed, replicate), suffix=f"teacher-{name}"[:18],
                                base_url=config.train.api.base_url,
                                poll_interval=config.train.api.poll_interval)
        return {"kind": "api", "model": f"openai/{model_id}"}
    if backend_kind != "hf":
        raise SublearnError(f"teacher {name}: {config.model!r} cannot be fine-tuned here; fine-tune through hf/ "
                            "or openai/, or give the teacher as trait.checkpoints")
    tc = config.teacher
    records = [{"chat": list(c[:-1]), "completion": c[-1]["content"]} for c in chats]
    method = "full" if tc.kind == "full" else "lora"
    weights = _fit_teacher(config, tdir, name, records, method, max_length=trait.max_length, chat=lambda r: r["chat"])
    return {"kind": method, "adapter": str(Path("teacher") / name / weights),
            "lora_init_seed": replicate_seed(tc.lora_init_seed, replicate) if weights == "adapter" else None}
