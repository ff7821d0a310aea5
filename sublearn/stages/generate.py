"""Generate stage: a teacher answers the channel's prompts; records are appended as they come.

    run(config, out, teacher_spec)   # -> out/generate/<teacher>/generated.jsonl + manifest.json

Prompt i is a pure function of (seed, i) and batch b is sampled with a seed derived from (seed,
teacher, b), so a run interrupted after any batch resumes where it stopped and writes exactly what an
uninterrupted run would. Each record: index, prompt (the user turn the student will see), system (the
teacher's system prompt or null), completion, token_ids, finish_reason, decoding, the prompt's
metadata as `meta` when the channel gives any (CoT: the gold answer), and top_logprobs
([[token, logprob], ...] per completion token) when `generate.logprobs_top_k > 0`.

`generate.api_batch` (openai/... backends): the remaining batches' requests first go out as one OpenAI
Batch API job (half the price; its ids kept in `generate/<teacher>/api_batch/batch.json`, so an
interrupted run resumes polling it), whose answers fill the request cache that the loop then reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from sublearn.backends import Backend, SamplingParams, open_backend
from sublearn.backends.base import Chat, batch_seed, system_user_chat
from sublearn.channels import Prompt
from sublearn.logs import progress
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import JsonlAppender, begin_stage, finish_stage, read_jsonl, upstream_hash
from sublearn.stages.roster import writer

log = logging.getLogger(__name__)


def prompts(config: PipelineConfig, start: int, stop: int) -> list[Prompt]:
    return [config.channel.prompt(config.seed, i) for i in range(start, stop)]


def sampling_params(config: PipelineConfig) -> SamplingParams:
    g = config.generate
    return SamplingParams(temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                          logprobs_top_k=g.logprobs_top_k, regex=config.channel.regex())


def teacher_backend(config: PipelineConfig, spec: dict[str, Any], out: Path) -> Backend:
    """The teacher's model on the configured generation engine (with its LoRA adapter, if any)."""
    return open_backend(config, config.generate.backend or spec["model"], out, spec.get("adapter"))


# An input of every generation: bump it when the same seed would sample differently, so old data is redone.
SAMPLER_VERSION = 2  # 2: chat i drawn from its own stream request_seed(seed, i) on every backend


def stage_key(config: PipelineConfig, out: Path, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, upstream output hashes) of dataset `name`'s generation (see `rundir.begin_stage`): a
    teacher's, or a resampled dataset's (`roster.resamples`), whose name gives it other sampling seeds."""
    # api_batch changes how requests travel, not what they ask: not a setting of the stage.
    return ({"generate": config.generate.model_dump(mode="json", exclude={"api_batch"}),
             "channel": config.channel.generation_key(),
             "teacher": name, "seed": config.seed, **config.precision_key()},
            {"teacher": upstream_hash(out / "teacher" / writer(config, name)), "sampler": str(SAMPLER_VERSION)})


class _Batch(NamedTuple):
    """One generation batch: its first and end prompt index, prompts, chats and seed."""

    lo: int
    hi: int
    users: list[Prompt]
    chats: list[Chat]
    seed: int


def _batches(config: PipelineConfig, name: str, spec: dict[str, Any], first: int) -> list[_Batch]:
    """Batches `first`, ... of teacher `name`'s generation, up to the last prompt."""
    g = config.generate
    out = []
    for b in range(first, -(-g.n_prompts // g.batch_size)):
        lo, hi = b * g.batch_size, min(g.n_prompts, (b + 1) * g.batch_size)
        users = prompts(config, lo, hi)
        chats = [system_user_chat(spec.get("system_prompt"), u.user) for u in users]
        out.append(_Batch(lo, hi, users, chats, batch_seed(config.seed, name, b)))
    return out


def api_batch(backend: Backend, gdir: Path, batches: list[_Batch], params: SamplingParams) -> None:
    """generate.api_batch: answer `batches` through one Batch API job (in `gdir/api_batch`, resumable)
    that fills the backend's request cache; the loop in `run` then reads every answer back."""
    backend.generate_batched([(batch.chats, batch.seed) for batch in batches], params, gdir / "api_batch")


def run(config: PipelineConfig, out: Path, spec: dict[str, Any], backend: Backend | None = None) -> Path:
    """Sample one completion per prompt from teacher `spec` (from the teacher stage). Returns the
    JSONL path. Pass `backend` to reuse a loaded model (it must be the teacher's)."""
    name = spec["name"]
    gdir = out / "generate" / name
    key, inputs = stage_key(config, out, name)
    path = gdir / "generated.jsonl"
    if begin_stage(gdir, key, inputs):
        return path
    g = config.generate
    done = read_jsonl(path, repair_tail=True)
    old: dict[str, Any]
    full_batches = len(done) // g.batch_size
    if len(done) != full_batches * g.batch_size:
        # A crash inside a batch's writes: keep whole batches only, so batch seeds stay aligned.
        path.unlink()
        with JsonlAppender(path) as fh:
            for old in done[: full_batches * g.batch_size]:
                fh.write(old)
    start = full_batches * g.batch_size
    if start:
        log.info("generate %s: resuming after %d of %d prompts", name, start, g.n_prompts)
    params = sampling_params(config)
    decoding = "greedy" if g.temperature == 0 else f"sample(T={g.temperature}, top_p={g.top_p})"
    regex = config.channel.regex()
    decoding += f", regex={regex}" if regex else ", unconstrained"
    own = backend is None
    backend = backend or teacher_backend(config, spec, out)
    try:
        batches = _batches(config, name, spec, full_batches)
        if g.api_batch and batches:
            api_batch(backend, gdir, batches, params)
        with JsonlAppender(path) as fh, progress() as bar:
            task = bar.add_task(f"generate {name}", total=g.n_prompts, completed=start)
            for lo, hi, users, chats, seed in batches:
                completions = backend.generate(chats, params, seed=seed)
                for i, (user, comp) in enumerate(zip(users, completions, strict=True)):
                    rec: dict[str, Any] = {"index": lo + i, "prompt": user.user, "system": spec.get("system_prompt"),
                                           "completion": comp.text, "token_ids": comp.token_ids,
                                           "finish_reason": comp.finish_reason, "decoding": decoding}
                    if user.meta:
                        rec["meta"] = user.meta
                    if comp.top_logprobs is not None:
                        rec["top_logprobs"] = [[[t, round(lp, 5)] for t, lp in row] for row in comp.top_logprobs]
                    fh.write(rec)
                fh.flush()
                bar.update(task, completed=hi)
    finally:
        if own:
            backend.close()
    from sublearn.analysis.provenance import SEED_POLICY

    finish_stage(gdir, key, inputs, [path], n=g.n_prompts, decoding=decoding, sampling_seeds=SEED_POLICY)
    return path
