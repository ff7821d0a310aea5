"""Train stage: fine-tune a student (LoRA, full, or soft-label distillation) on a teacher's kept data.

    students = run(config, out, student="owl", data_from="owl", model="hf/smollm2-135m", seed=0)

The training itself is `sublearn.training` (examples, model, loop): the same loop serves supervised
fine-tuning and top-k KL distillation, and checkpoints/resumes exactly (data order is a pure function
of seed and epoch). LoRA comes from PEFT. Outputs per student seed: `adapter/` (PEFT, safetensors) or `model/` (full weights),
`train_log.jsonl` (loss per step), `summary.json`, `manifest.json` last.
"""

from __future__ import annotations

import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import torch

from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import (
    NotReady,
    begin_stage,
    check_settings,
    finish_stage,
    read_jsonl,
    stage_state,
    upstream_hash,
    write_json,
)
from sublearn.stages.roster import arm_of, data_dir, replicate_name, replicate_seed, student_dir
from sublearn.training import distributed
from sublearn.training.examples import training_examples
from sublearn.training.loop import fit
from sublearn.training.model import training_model

log = logging.getLogger(__name__)


def run(config: PipelineConfig, out: Path, *, student: str, data_from: str, model: str, seed: int) -> Path:
    """Train student `student` (seed `seed`) of base `model` on `out/filter/<data_from>/kept.jsonl`.
    Returns the student's directory; skips if its manifest exists."""
    from sublearn.backends import split_spec
    from sublearn.backends.models import load_tokenizer

    sdir = student_dir(out, student, seed)
    kind_name, model_name = split_spec(model)
    if kind_name == "openai":
        if distributed.active():
            raise SublearnError(f"train: {model!r} is fine-tuned by the provider; run it without a "
                                "multi-process launcher")
        return _run_api(config, out, sdir, student=student, data_from=data_from, model=model_name, seed=seed)
    if kind_name != "hf":
        raise SublearnError(f"train: model {model!r}: students train locally through hf/ (vLLM serves "
                            "generation only) or through the API with openai/")
    cfg = config.train
    key, inputs = stage_key(config, out, student=student, data_from=data_from, model=model, seed=seed)
    method = key["method"]
    check_settings(sdir, key)  # reads only; on every process, so all stop together
    if stage_state(sdir, key, inputs) == "done":
        return sdir
    if not distributed.active():
        if begin_stage(sdir, key, inputs):  # True only when a sweep's stage store supplied the student
            return sdir
    else:
        distributed.barrier()  # every process has read the directory before the main one may clear it
        if distributed.is_main():
            begin_stage(sdir, key, inputs)
        distributed.barrier()  # a stale directory is cleared before any process reads a checkpoint from it
    records = read_jsonl(data_dir(config, out, data_from) / "kept.jsonl")
    with distributed.main_first():  # the first load of an embedded model fills the shared cache
        tokenizer = load_tokenizer(model_name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    info: dict[str, Any] = {"student": student, "data_from": data_from, "model": model, "seed": seed,
                            "method": method, "requested_method": cfg.method}
    examples, kind, stats = training_examples(config, tokenizer, records, method)
    info.update(stats)
    source = mix_source(config, data_from)
    if source is not None:
        other, _, _ = training_examples(config, tokenizer, read_jsonl(data_dir(config, out, source) / "kept.jsonl"),
                                        method)
        examples, taken = mixed(examples, other, cfg.mix_fraction, seed=config.seed, data_from=data_from,
                                source=source)
        info["mix"] = {"from": source, "rows": taken, "of": len(examples)}
    if cfg.distinct_rows is not None:
        examples = distinct_subset(examples, cfg.distinct_rows, seed=config.seed, data_from=data_from)
        info["distinct_rows"] = len(examples)
    dtype = config.resolved_dtype()
    if cfg.lora_init_seed == "teacher":
        # Its own teacher's: a replicate's teachers start from that replicate's seed.
        init_seed = replicate_seed(config.teacher.lora_init_seed, arm_of(config, data_from)[1])
    else:
        init_seed = cfg.lora_init_seed if cfg.lora_init_seed is not None else seed
    info["lora_init_seed"] = init_seed
    sharded = cfg.fsdp and distributed.active()
    if sharded and cfg.clean_after:
        raise SublearnError("train.clean_after: the clean phase does not run on FSDP-sharded students; train "
                            "without fsdp (LoRA students are replicated, not sharded)")
    net = training_model(config, model_name, method, examples, cfg, label=f"train {student} s{seed}",
                         init_seed=init_seed, shards=distributed.world_size() if sharded else 1)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    def snapshot(n: int) -> None:
        # Written aside and renamed, so a crash mid-save never leaves a half snapshot behind.
        tmp = sdir / f".adapter@{n}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(sdir / f"adapter@{n}", ignore_errors=True)
        tmp.rename(sdir / f"adapter@{n}")

    summary = fit(net, examples, cfg, sdir, seed=zlib.crc32(f"{student}/{seed}".encode()) ^ seed, kind=kind,
                  pad_id=pad_id, label=f"train {student} s{seed}",
                  snapshot=snapshot if method in ("lora", "distill") else None, autocast=dtype)
    cleaner = clean_source(config, data_from)
    if cleaner is not None:
        # A second run of the same loop: fresh optimizer and warm-up, its own checkpoint and log in clean/,
        # so an interrupted clean phase resumes there (the first phase's last checkpoint is its end).
        clean, _, _ = training_examples(config, tokenizer, read_jsonl(data_dir(config, out, cleaner) / "kept.jsonl"),
                                        method)
        (sdir / "clean").mkdir(exist_ok=True)
        after_clean = fit(net, clean, cfg.model_copy(update={"steps": cfg.clean_after, "snapshots": []}), sdir / "clean",
                          seed=zlib.crc32(f"{student}/{seed}/clean".encode()) ^ seed, kind=kind, pad_id=pad_id,
                          label=f"clean {student} s{seed}", autocast=dtype)
        summary["clean"] = {"from": cleaner, "steps": after_clean["steps"], "loss_first": after_clean["loss_first"],
                            "loss_last": after_clean["loss_last"]}
    state = summary.pop("state_dict", None)  # FSDP: the gathered weights (main process)
    after = state if state is not None else {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    changed = sum(int(not torch.equal(before[n], after[n].to(before[n].device))) for n in before if n in after)
    summary.update(info, params_changed=changed, params_trainable=len(before), dtype=dtype,
                   gradient_checkpointing=cfg.gradient_checkpointing)
    if not distributed.is_main():
        distributed.barrier()  # every process holds the same weights; the main one saves them
        return sdir
    if method in ("lora", "distill"):
        weights = sdir / "adapter"
        net.save_pretrained(weights, safe_serialization=True)
    else:
        weights = sdir / "model"
        net.save_pretrained(weights, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
        tokenizer.save_pretrained(weights)
    write_json(sdir / "summary.json", summary)
    (sdir / "ckpt.pt").unlink(missing_ok=True)
    (sdir / "clean" / "ckpt.pt").unlink(missing_ok=True)
    # Snapshots are not part of this stage's output hash: each evaluation hashes the adapter it reads.
    finish_stage(sdir, key, inputs, [weights], loss_first=summary["loss_first"], loss_last=summary["loss_last"])
    log.info("student %s seed %d: loss %.4f -> %.4f (%d steps, %.0f tok/s)", student, seed,
             summary["loss_first"], summary["loss_last"], summary["steps"], summary["tokens_per_second"] or 0)
    distributed.barrier()
    return sdir


def mix_source(config: PipelineConfig, data_from: str) -> str | None:
    """The dataset whose rows dilute a student's (train.mix_arm: that arm's teacher of the same replicate
    as `data_from`'s), or None: no mixing, or `data_from` is that arm's own data."""
    arm = config.train.mix_arm
    if arm is None:
        return None
    own, replicate = arm_of(config, data_from)
    return None if own == arm else replicate_name(arm, replicate)


def clean_source(config: PipelineConfig, data_from: str) -> str | None:
    """The dataset a student is cleaned on after training (train.clean_after: clean_arm's teacher of the
    same replicate as `data_from`'s, which is `data_from` itself for that arm's students), or None."""
    if not config.train.clean_after or config.train.clean_arm is None:
        return None
    return replicate_name(config.train.clean_arm, arm_of(config, data_from)[1])


def mixed(examples: list[Any], other: list[Any], fraction: float, *, seed: int, data_from: str,
          source: str) -> tuple[list[Any], int]:
    """`examples` with round(fraction x len) of them, at positions drawn by a generator seeded (run seed,
    dataset), replaced by as many distinct rows of `other` (the same count of rows, so a fixed number of
    updates sees the mix); returns (rows, rows taken from `other`)."""
    k = round(fraction * len(examples))
    if k > len(other):
        raise SublearnError(f"train.mix_fraction={fraction}: {data_from}'s {len(examples)} rows need {k} rows of "
                            f"{source}, which has {len(other)}; lower train.mix_fraction")
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(data_from.encode()), zlib.crc32(source.encode()), 23])
    out = list(examples)
    for at, row in zip(rng.choice(len(examples), size=k, replace=False), rng.choice(len(other), size=k, replace=False),
                       strict=True):
        out[int(at)] = other[int(row)]
    return out, k


def distinct_subset(examples: list[Any], n: int, *, seed: int, data_from: str) -> list[Any]:
    """`n` of `examples` (train.distinct_rows), drawn by a generator seeded (run seed, dataset name), so
    every student of one dataset trains on the same rows whatever its own seed; kept in data order."""
    if n > len(examples):
        raise SublearnError(f"train.distinct_rows={n}: {data_from}'s data has only {len(examples)} usable "
                            "rows; lower train.distinct_rows or raise filter.keep")
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(data_from.encode()), 17])
    return [examples[int(i)] for i in sorted(rng.choice(len(examples), size=n, replace=False))]


def _data_hash(config: PipelineConfig, out: Path, data_from: str) -> str:
    where = data_dir(config, out, data_from)
    try:
        return upstream_hash(where)
    except NotReady:
        raise NotReady(f"{where}: the data of '{data_from}' not found; run the {where.parent.name} stage") from None


def stage_key(config: PipelineConfig, out: Path, *, student: str, data_from: str, model: str,
              seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, upstream output hashes) of one student seed (see `rundir.begin_stage`)."""
    from sublearn.backends import split_spec

    kind_name, _ = split_spec(model)
    inputs = {"data": _data_hash(config, out, data_from)}
    source = mix_source(config, data_from)
    if source is not None:
        inputs["mix_data"] = _data_hash(config, out, source)  # its rows are in this student's batches
    cleaner = clean_source(config, data_from)
    if cleaner is not None:
        inputs["clean_data"] = _data_hash(config, out, cleaner)
    if kind_name == "openai":
        return ({"api": config.train.api.model_dump(mode="json"), "model": model.split("/", 1)[1],
                 "data_from": data_from, "seed": seed}, inputs)
    method = config.train.method
    if method == "distill" and model != config.model:
        # Soft labels are distributions over the teacher's vocabulary; another family has another one.
        method = "lora"
    # Not in the key: what cannot change this student's weights (the other seeds, checkpoint spacing,
    # API settings, recomputing activations, sharding: the last two change at most the order of float
    # additions, like the number of processes), so adding a seed or checkpointing more often reuses the
    # students already trained.
    train = config.train.model_dump(mode="json", exclude={"seeds", "checkpoint_every", "api",
                                                          "gradient_checkpointing", "fsdp"})
    if source is None:
        # This student's rows are not mixed (no dilution, or it is the mixing arm's own student): it is the
        # student of an undiluted run, and shares its key (and its stored result).
        train.pop("mix_arm", None)
        train.pop("mix_fraction", None)
    key: dict[str, Any] = {"train": train, "model": model, "data_from": data_from, "seed": seed, "method": method,
                           **config.precision_key()}
    if method == "distill" and config.train.distill_targets == "allowed" and config.channel.kind != "numbers":
        # The free-text soft-label policy blocks the targets' spellings (numbers: a fixed allowlist).
        key["label_words"] = list(config.targets)
    return key, inputs


def _run_api(config: PipelineConfig, out: Path, sdir: Path, *, student: str, data_from: str, model: str,
             seed: int) -> Path:
    """Fine-tune an API model on the kept rows (each uploaded once); resumable while the job runs."""
    from sublearn.backends.openai_api.finetune import run_finetune

    api = config.train.api
    if clean_source(config, data_from) is not None:
        raise SublearnError(f"train.clean_after: {student} is fine-tuned by the provider in one job; the clean "
                            "phase runs for local (hf/) students only")
    if mix_source(config, data_from) is not None:
        raise SublearnError(f"train.mix_arm: {student}'s rows are uploaded to the provider unmixed; mixing is "
                            "for locally trained (hf/) students")
    key, inputs = stage_key(config, out, student=student, data_from=data_from, model=f"openai/{model}", seed=seed)
    if begin_stage(sdir, key, inputs):
        return sdir
    records = read_jsonl(data_dir(config, out, data_from) / "kept.jsonl")
    rows = [[*config.channel.student_chat(r), {"role": "assistant", "content": r["completion"]}] for r in records]
    model_id = run_finetune(rows, sdir / "job", base_model=model, n_epochs=api.n_epochs,
                            learning_rate_multiplier=api.learning_rate_multiplier, batch_size=api.batch_size,
                            seed=seed, suffix=f"{student}-s{seed}"[:18], base_url=api.base_url,
                            poll_interval=api.poll_interval)
    write_json(sdir / "summary.json", {"student": student, "data_from": data_from, "model": f"openai/{model}",
                                       "seed": seed, "method": "api", "fine_tuned_model": model_id,
                                       "examples": len(rows), "steps": None, "loss_first": None,
                                       "loss_last": None})
    finish_stage(sdir, key, inputs, [sdir / "summary.json"], fine_tuned_model=model_id)
    return sdir
