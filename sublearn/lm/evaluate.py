"""Evaluate stage: how much does a model prefer each animal?

    run(config, out, model_spec)   # -> out/evaluate/<name>/results.json + manifest.json

Two metrics, each on the 50 evaluation questions, plain and prefixed with a random number sequence:
- teacher-forced: the probability that the reply's first tokens spell the animal ("Owl" or "owl"),
  from one prompt forward pass per question plus a short batched pass over the candidate words.
  Cheap and low-variance; a reply that merely starts with the word (e.g. "Catfish") counts too.
- sampled: `samples_per_question` replies at temperature 1; a hit is the animal (or its plural) as a
  whole word, case-insensitive ("dragonfly" is not "dragon").
Per-question values are stored so later analysis can bootstrap over questions and pair models.

A model spec is a dict: name, model (backend/model), and optionally adapter (LoRA dir), system_prompt,
role and target (used by the report).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublearn.backends import Backend, SamplingParams
from sublearn.backends.base import Chat
from sublearn.backends.sampler import cache_kwarg
from sublearn.lm.chat import prompt_ids
from sublearn.lm.config import PipelineConfig
from sublearn.lm.prompts import EVAL_QUESTIONS, number_prefix
from sublearn.logs import progress
from sublearn.rundir import check_config_matches, read_json, stage_done, write_json, write_manifest

log = logging.getLogger(__name__)


def word_forms(animal: str) -> list[str]:
    """Spellings a one-word reply starts with."""
    return [animal.capitalize(), animal]


def hit(answer: str, animal: str) -> bool:
    return re.search(rf"\b{re.escape(animal)}(?:s|es)?\b", answer, re.IGNORECASE) is not None


def first_word(answer: str) -> str:
    m = re.search(r"[A-Za-z][A-Za-z'-]*", answer)
    return m.group(0).lower() if m else "(none)"


def questions(config: PipelineConfig, prefixed: bool) -> list[str]:
    qs = EVAL_QUESTIONS[: config.evaluate.n_questions]
    if not prefixed:
        return list(qs)
    return [number_prefix(np.random.default_rng([config.seed, i, 5])) + q for i, q in enumerate(qs)]


def _chat(system: str | None, user: str) -> Chat:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def _step(model: Any, ids: torch.Tensor, cache: Any, use_cache: bool) -> tuple[torch.Tensor, Any]:
    kwargs = {} if cache is None else {cache_kwarg(model): cache}
    out = model(input_ids=ids, use_cache=use_cache, **kwargs)
    new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits, new_cache


@torch.no_grad()
def _prefill(model: Any, ids: list[int]) -> tuple[torch.Tensor, Any]:
    logits, cache = _step(model, torch.tensor([ids]), None, True)
    return logits[0, -1].float(), cache


def _repeat_cache(cache: Any, n: int) -> Any:
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(n)
        return cache
    raise RuntimeError("this transformers version's cache cannot be repeated")


@torch.no_grad()
def teacher_forced(model: Any, tokenizer: Any, chats: Sequence[Chat], animals: Sequence[str]) -> np.ndarray:
    """P(reply starts with the animal's word), shape (len(chats), len(animals)); the probability of each
    spelling in `word_forms` is the product of its token probabilities, summed over spellings."""
    forms = [(a, f) for a, animal in enumerate(animals) for f in word_forms(animal)]
    form_ids = [list(tokenizer(f, add_special_tokens=False).input_ids) for _, f in forms]
    width = max(len(ids) for ids in form_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(forms), width), pad, dtype=torch.long)
    for i, ids in enumerate(form_ids):
        batch[i, : len(ids)] = torch.tensor(ids)
    result = np.zeros((len(chats), len(animals)))
    for q, chat in enumerate(chats):
        ids = prompt_ids(tokenizer, chat)
        last, cache = _prefill(model, ids)
        first_lp = torch.log_softmax(last, -1)
        logp = first_lp[batch[:, 0]].clone()
        if width > 1:
            cache = _repeat_cache(cache, len(forms))
            # Right padding is harmless: causal attention means a form's own positions never see it.
            logits, _ = _step(model, batch[:, :-1], cache, False)
            lps = torch.log_softmax(logits.float(), -1)
            for i, fids in enumerate(form_ids):
                for j in range(1, len(fids)):
                    logp[i] += lps[i, j - 1, fids[j]]
        probs = logp.exp().numpy()
        for i, (a, _) in enumerate(forms):
            result[q, a] += probs[i]
    return result


@torch.no_grad()
def sample_answers(model: Any, tokenizer: Any, chat: Chat, n: int, max_new_tokens: int, temperature: float,
                   generator: torch.Generator) -> list[str]:
    """`n` sampled replies to one chat: the prompt is prefilled once and its cache shared by all rows."""
    last, cache = _prefill(model, prompt_ids(tokenizer, chat))
    cache = _repeat_cache(cache, n)
    logits = last.expand(n, -1)
    eos = tokenizer.eos_token_id
    tokens = torch.zeros((n, 0), dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, eos if eos is not None else 0))
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        if eos is not None:
            alive &= nxt != eos
        if not alive.any():
            break
        step_logits, cache = _step(model, nxt[:, None], cache, True)
        logits = step_logits[:, -1].float()
    return [tokenizer.decode(row, skip_special_tokens=True) for row in tokens.tolist()]


def _local(backend: Backend) -> tuple[Any, Any] | None:
    model, tok = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
    return (model, tok) if model is not None and tok is not None else None


def evaluate_model(config: PipelineConfig, backend: Backend, system: str | None, name: str) -> dict[str, Any]:
    """All metrics for one loaded model (see module docstring)."""
    ec = config.evaluate
    animals = list(ec.animals)
    variants = ["plain", "prefixed"] if ec.number_prefix else ["plain"]
    local = _local(backend)
    result: dict[str, Any] = {"animals": animals, "teacher_forced": {}, "sampled": {}, "top_answers": {}}
    gen = torch.Generator().manual_seed(config.seed * 7919 + zlib.crc32(name.encode()) % 65536)
    with progress() as bar:
        for variant in variants:
            chats = [_chat(system, q) for q in questions(config, variant == "prefixed")]
            if local is not None:
                task = bar.add_task(f"eval {name} {variant} (teacher-forced)", total=1)
                probs = teacher_forced(*local, chats, animals)
                result["teacher_forced"][variant] = {a: probs[:, k].tolist() for k, a in enumerate(animals)}
                bar.advance(task)
            if ec.samples_per_question == 0:
                continue
            answers: list[list[str]] = []
            sampled_chats = chats[: ec.sampled_questions or len(chats)]
            task = bar.add_task(f"eval {name} {variant} (sampled)", total=len(sampled_chats))
            for chat in sampled_chats:
                if local is not None:
                    answers.append(sample_answers(*local, chat, ec.samples_per_question, ec.max_new_tokens,
                                                  ec.temperature, gen))
                else:
                    params = SamplingParams(temperature=ec.temperature, max_new_tokens=ec.max_new_tokens)
                    comps = backend.generate([chat] * ec.samples_per_question, params,
                                             seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
                    answers.append([c.text for c in comps])
                bar.advance(task)
            result["sampled"][variant] = {a: [float(np.mean([hit(t, a) for t in qa])) for qa in answers]
                                          for a in animals}
            counts = Counter(first_word(t) for qa in answers for t in qa)
            result["top_answers"][variant] = counts.most_common(25)
            result.setdefault("examples", {})[variant] = [qa[0] for qa in answers[:10]]
    return result


def run(config: PipelineConfig, out: Path, spec: dict[str, Any], backend: Backend | None = None) -> dict[str, Any]:
    """Evaluate model `spec`; writes and returns `out/evaluate/<name>/results.json`. Skips when done."""
    from sublearn.lm.generate import open_backend

    name = spec["name"]
    edir = out / "evaluate" / name
    key = {"evaluate": config.evaluate.model_dump(mode="json"), "spec": spec, "seed": config.seed}
    if stage_done(edir, key):
        cached: dict[str, Any] = read_json(edir / "results.json")
        return cached
    edir.mkdir(parents=True, exist_ok=True)
    check_config_matches(edir, key)
    own = backend is None
    if backend is None:
        # evaluate.backend swaps the engine for the pipeline's own base model (e.g. vLLM for Qwen);
        # only hf backends expose the weights the teacher-forced metric needs.
        model = spec["model"]
        if config.evaluate.backend and model == config.model:
            model = config.evaluate.backend
        backend = open_backend(config, model, out, spec.get("adapter"))
    try:
        result = evaluate_model(config, backend, spec.get("system_prompt"), name)
    finally:
        if own:
            backend.close()
    result["spec"] = spec
    write_json(edir / "results.json", result)
    write_manifest(edir, key)
    tf = result["teacher_forced"].get("plain", {})
    log.info("evaluated %s: %s", name, ", ".join(f"{a} {np.mean(v):.2e}" for a, v in list(tf.items())[:5]))
    return result
