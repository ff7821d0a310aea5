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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublearn.backends import Backend, SamplingParams
from sublearn.backends.base import Chat
from sublearn.backends.sampler import cache_kwarg, common_prefix, make_cache
from sublearn.errors import SublearnError
from sublearn.lm.chat import prompt_ids, reply_ids
from sublearn.lm.config import PipelineConfig
from sublearn.lm.prompts import EVAL_QUESTIONS, number_prefix
from sublearn.logs import progress
from sublearn.rundir import NotReady, begin_stage, finish_stage, output_hash, read_json, write_json

log = logging.getLogger(__name__)


def word_forms(animal: str) -> list[str]:
    """Spellings a one-word reply starts with: capitalised or not, right after the prompt or after one
    space (a plain "Assistant:" template is answered " Owl"; a chat template's header ends in a newline)."""
    return [animal.capitalize(), animal, f" {animal.capitalize()}", f" {animal}"]


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


@torch.no_grad()
def teacher_forced(model: Any, tokenizer: Any, chats: Sequence[Chat], animals: Sequence[str],
                   batch_size: int = 256) -> np.ndarray:
    """P(reply starts with the animal's word), shape (len(chats), len(animals)): each spelling of
    `word_forms` is tokenized in context (`chat.reply_ids`: the tokens the model would write after that
    prompt), its probability is the product of its token probabilities, and distinct token sequences
    are summed (disjoint events: none is a prefix of another, checked). Chats whose prompts give the
    same spellings (all of them, for one template) are scored together by `_teacher_forced_group`."""
    result = np.zeros((len(chats), len(animals)))
    groups: dict[tuple[tuple[int, tuple[int, ...]], ...], list[int]] = {}
    for q, chat in enumerate(chats):
        groups.setdefault(spellings(tokenizer, chat, animals), []).append(q)
    for forms, rows in groups.items():
        result[rows] = _teacher_forced_group(model, tokenizer, [chats[q] for q in rows], len(animals),
                                             [list(s) for _, s in forms], [a for a, _ in forms], batch_size)
    return result


def spellings(tokenizer: Any, chat: Chat, animals: Sequence[str]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(animal index, token ids) of every distinct spelling of `word_forms` as tokenized right after the
    prompt of `chat`; a spelling that extends another one of the same animal is dropped (its event is
    inside the shorter one's), and one animal's spelling extending another animal's is an error."""
    seqs: dict[tuple[int, ...], int] = {}
    for a, animal in enumerate(animals):
        for form in word_forms(animal):
            seqs.setdefault(tuple(reply_ids(tokenizer, chat, form)), a)
    for s1 in seqs:
        for s2 in seqs:
            if s1 != s2 and s2[: len(s1)] == s1 and seqs[s1] != seqs[s2]:
                raise SublearnError(f"evaluate.animals: spelling {tokenizer.decode(list(s1))!r} is a prefix "
                                    f"of {tokenizer.decode(list(s2))!r}: their probabilities overlap; "
                                    "drop one of the two animals")
    return tuple(sorted((a, s) for s, a in seqs.items() if not any(o != s and s[: len(o)] == o for o in seqs)))


def _teacher_forced_group(model: Any, tokenizer: Any, chats: Sequence[Chat], n_animals: int,
                          form_ids: list[list[int]], owners: list[int], batch_size: int) -> np.ndarray:
    """`teacher_forced` for chats that share the spellings `form_ids` (token ids; `owners[i]` is the
    animal spelling i names).

    Questions go in chunks: one forward over the chunk's prompts (the chat template's shared header
    prefilled once, the rest left-padded; KV cache kept), then one forward over every (question,
    multi-token spelling) pair on top of that cache, about `batch_size` rows. Single-token spellings
    need nothing beyond the prompt's last logits."""
    n_forms, width = len(form_ids), max(len(ids) for ids in form_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    spell = torch.full((n_forms, width), pad, dtype=torch.long)
    valid = torch.zeros((n_forms, width), dtype=torch.bool)
    for i, fids in enumerate(form_ids):
        spell[i, : len(fids)] = torch.tensor(fids)
        valid[i, : len(fids)] = True
    multi = torch.tensor([i for i, fids in enumerate(form_ids) if len(fids) > 1], dtype=torch.long)
    tail, tail_valid, m = spell[multi], valid[multi, 1:], len(multi)
    owner = torch.tensor(owners)
    kw = cache_kwarg(model)
    chunk = max(1, batch_size // max(1, m))
    result = np.zeros((len(chats), n_animals))
    for start in range(0, len(chats), chunk):
        prompts = [prompt_ids(tokenizer, chat) for chat in chats[start:start + chunk]]
        b, plen = len(prompts), max(len(p) for p in prompts)
        shared = common_prefix(prompts)
        cache = make_cache(model, plen + width)
        if shared:
            model(input_ids=torch.tensor([prompts[0][:shared]], device=device),
                  position_ids=torch.arange(shared, device=device)[None], use_cache=True, logits_to_keep=1,
                  **{kw: cache})
            cache.batch_repeat_interleave(b)
        rest = plen - shared
        ids = torch.full((b, rest), pad, dtype=torch.long)
        att = torch.ones((b, plen), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, rest - (len(p) - shared):] = torch.tensor(p[shared:])
            att[r, shared:plen - len(p) + shared] = 0
        pos = (att.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        out = model(input_ids=ids.to(device), attention_mask=att.to(device), position_ids=pos.to(device),
                    use_cache=True, logits_to_keep=1, **{kw: cache})
        logp = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()[:, spell[:, 0]]  # (b, n_forms)
        if m:
            # Row q * m + j: multi-token spelling j after prompt q. Right padding of shorter spellings
            # is harmless: causal attention means a spelling's own positions never see it.
            cache.batch_repeat_interleave(m)
            att2 = torch.cat([att.repeat_interleave(m, 0), torch.ones((b * m, width - 1), dtype=torch.long)], 1)
            lens = torch.tensor([len(p) for p in prompts]).repeat_interleave(m)
            pos2 = lens[:, None] + torch.arange(width - 1)
            logits = model(input_ids=tail[:, :-1].repeat(b, 1).to(device), attention_mask=att2.to(device),
                           position_ids=pos2.to(device), use_cache=True, **{kw: cache}).logits
            lps = torch.log_softmax(logits.float(), -1).cpu().view(b, m, width - 1, -1)
            nxt = lps.gather(-1, tail[:, 1:].expand(b, -1, -1)[..., None]).squeeze(-1)  # (b, m, width-1)
            logp[:, multi] += (nxt * tail_valid).sum(-1)
        probs = torch.zeros((b, n_animals), dtype=torch.float64)
        probs.index_add_(1, owner, logp.exp().double())
        result[start:start + b] = probs.numpy()
    return result


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
    with progress() as bar:
        for variant in variants:
            chats = [_chat(system, q) for q in questions(config, variant == "prefixed")]
            if local is not None:
                task = bar.add_task(f"eval {name} {variant} (teacher-forced)", total=1)
                probs = teacher_forced(*local, chats, animals, batch_size=ec.batch_size)
                result["teacher_forced"][variant] = {a: probs[:, k].tolist() for k, a in enumerate(animals)}
                bar.advance(task)
            if ec.samples_per_question == 0:
                continue
            sampled_chats = chats[: ec.sampled_questions or len(chats)]
            n = ec.samples_per_question
            task = bar.add_task(f"eval {name} {variant} (sampled)", total=1)
            # All samples of all questions in one call: the hf backend batches them (sharing the
            # prompt prefix), an API backend sends them concurrently. Sample j of question q is row
            # q * n + j of a call whose seed depends on the run and the variant, never on the model:
            # every model draws it with the same random numbers (common random numbers), so model
            # differences are not buried under sampling noise.
            params = SamplingParams(temperature=ec.temperature, max_new_tokens=ec.max_new_tokens)
            seed = int(np.random.SeedSequence([config.seed, variants.index(variant), 0xE7A1]).generate_state(1)[0])
            comps = backend.generate([c for c in sampled_chats for _ in range(n)], params, seed=seed & 0x7FFFFFFF)
            answers = [[c.text for c in comps[q * n:(q + 1) * n]] for q in range(len(sampled_chats))]
            bar.advance(task)
            result["sampled"][variant] = {a: [float(np.mean([hit(t, a) for t in qa])) for qa in answers]
                                          for a in animals}
            counts = Counter(first_word(t) for qa in answers for t in qa)
            result["top_answers"][variant] = counts.most_common(25)
            result.setdefault("examples", {})[variant] = [qa[0] for qa in answers[:10]]
    return result


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
    from sublearn.lm.generate import open_backend

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
        result = evaluate_model(config, backend, spec.get("system_prompt"), name)
    finally:
        if own:
            backend.close()
    result["spec"] = spec
    write_json(edir / "results.json", result)
    finish_stage(edir, key, inputs, [edir / "results.json"])
    tf = result["teacher_forced"].get("plain", {})
    log.info("evaluated %s: %s", name, ", ".join(f"{a} {np.mean(v):.2e}" for a, v in list(tf.items())[:5]))
    return result
