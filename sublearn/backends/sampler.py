"""A batched sampler with a KV cache for short completions, with optional number-list constraint and
top-k log-prob capture.

    completions = sample(model, prompt_ids, params, generator, eos_id=..., pad_id=..., grammar=...)

Why not `model.generate`: for ~30-token completions on a CPU its per-step overhead (logits
processors, stopping criteria, cache bookkeeping) dominates a 135M model; this loop does one forward
per step on the whole batch and nothing else (see benchmarks/sampler_bench.py for the measured ratio).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sublearn.backends.base import Completion, SamplingParams

# Grammar states: (numbers started, digits in the current number, separator progress 0/1/2).
State = tuple[int, int, int]


@dataclass
class NumberGrammar:
    """Token-level automaton for `\\d{1,D}(, \\d{1,D}){0,N-1}` then end of answer.

    Built once per tokenizer; allowed-token masks and transitions are computed per state on demand
    (there are fewer than 100 states)."""

    token_texts: list[str]
    eos_id: int
    max_numbers: int = 10
    max_digits: int = 3
    _candidates: list[int] = field(default_factory=list)
    _masks: dict[State, torch.Tensor] = field(default_factory=dict)
    _next: dict[tuple[State, int], State] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed_chars = set("0123456789, ")
        self._candidates = [i for i, t in enumerate(self.token_texts) if t and set(t) <= allowed_chars]

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, max_numbers: int = 10, max_digits: int = 3) -> NumberGrammar:
        texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        return cls(texts, int(tokenizer.eos_token_id), max_numbers, max_digits)

    def _advance(self, state: State, text: str) -> State | None:
        k, d, s = state
        for ch in text:
            if ch.isdigit():
                if s == 1:
                    return None
                if d == 0 or s == 2:
                    if k >= self.max_numbers:
                        return None
                    k, d, s = k + 1, 1, 0
                elif d < self.max_digits:
                    d += 1
                else:
                    return None
            elif ch == ",":
                if d == 0 or s != 0 or k >= self.max_numbers:
                    return None
                s = 1
            elif ch == " ":
                if s != 1:
                    return None
                s = 2
            else:
                return None
        return (k, d, s)

    def mask(self, state: State, vocab_size: int) -> torch.Tensor:
        """Boolean mask over the vocabulary of tokens allowed in `state`."""
        if state not in self._masks:
            m = torch.zeros(vocab_size, dtype=torch.bool)
            for tid in self._candidates:
                nxt = self._advance(state, self.token_texts[tid])
                if nxt is not None:
                    m[tid] = True
                    self._next[(state, tid)] = nxt
            if state[1] >= 1 and state[2] == 0:
                m[self.eos_id] = True
            self._masks[state] = m
        return self._masks[state]

    def step(self, state: State, token: int) -> State:
        return self._next.get((state, token), state)


START: State = (0, 0, 0)
MIN_SHARED_PREFIX = 8


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for i in range(n):
        t = first[i]
        if any(p[i] != t for p in prompts):
            return i
    return n


def _cache_kwarg(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def sample(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams, generator: torch.Generator, *,
           eos_id: int, pad_id: int, grammar: NumberGrammar | None = None,
           decode: Any = None) -> list[Completion]:
    """One completion per prompt (token-id lists). Left-pads the batch, prefills once, then decodes
    token by token with the KV cache until every row has produced `eos_id` or `max_new_tokens`.

    Completion.token_ids includes the final `eos_id` when a row stopped (a student learns to stop);
    Completion.top_logprobs[t] holds the top-k of the model's full, unconstrained temperature-1
    distribution at completion position t."""
    n = len(prompts)
    cache_kw = _cache_kwarg(model)
    # Chat prompts share their template header (and often a system prompt): run that prefix once and
    # share its KV cache, then prefill only the left-padded suffixes: [prefix][pads][suffix].
    shared = common_prefix_length(prompts) if n > 1 else 0
    shared = min(shared, min(len(p) for p in prompts) - 1)
    cache = None
    if shared >= MIN_SHARED_PREFIX:
        prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long)
        out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        assert cache is not None, "the model returned no KV cache"
        cache.batch_repeat_interleave(n)
    else:
        shared = 0
    suffixes = [list(p[shared:]) for p in prompts]
    width = max(len(p) for p in suffixes)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    att = torch.ones((n, shared + width), dtype=torch.long)
    for r, p in enumerate(suffixes):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        att[r, shared:shared + width - len(p)] = 0
    pos = (shared + att[:, shared:].cumsum(-1) - 1).clamp(min=0)
    # Only the last position's logits are needed: skipping the LM head elsewhere saves ~20% of prefill.
    extra = {cache_kw: cache} if cache is not None else {}
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1, **extra)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    logits = out.logits[:, -1].float()
    next_pos = pos[:, -1] + 1
    tokens: list[list[int]] = [[] for _ in range(n)]
    tops: list[list[list[tuple[int | str, float]]]] = [[] for _ in range(n)]
    alive = torch.ones(n, dtype=torch.bool)
    states = [START] * n
    vocab = logits.shape[-1]
    for _ in range(params.max_new_tokens):
        if params.logprobs_top_k:
            full = torch.log_softmax(logits, -1)
            top = full.topk(params.logprobs_top_k, dim=-1)
            for r in torch.nonzero(alive).flatten().tolist():
                tops[r].append(list(zip(top.indices[r].tolist(), top.values[r].tolist(), strict=True)))
        scores = logits
        if grammar is not None:
            masks = torch.stack([grammar.mask(s, vocab) for s in states])
            scores = scores.masked_fill(~masks, float("-inf"))
        if params.temperature == 0:
            nxt = scores.argmax(-1)
        else:
            probs = torch.softmax(scores / params.temperature, -1)
            if params.top_p < 1.0:
                probs = _top_p(probs, params.top_p)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        for r in torch.nonzero(alive).flatten().tolist():
            t = int(nxt[r])
            tokens[r].append(t)
            if grammar is not None:
                states[r] = grammar.step(states[r], t)
        alive &= nxt != eos_id
        if not alive.any():
            break
        att = torch.cat([att, torch.ones((n, 1), dtype=torch.long)], -1)
        out = model(input_ids=nxt[:, None], attention_mask=att, position_ids=next_pos[:, None],
                    use_cache=True, **{cache_kw: cache})
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    results = []
    for r in range(n):
        stopped = bool(tokens[r]) and tokens[r][-1] == eos_id
        body = tokens[r][:-1] if stopped else tokens[r]
        text = decode(body) if decode is not None else ""
        results.append(Completion(text=text, token_ids=tokens[r], finish_reason="stop" if stopped else "length",
                                  top_logprobs=tops[r] if params.logprobs_top_k else None))
    return results


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    sorted_p = sorted_p * keep
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(-1, keepdim=True)
