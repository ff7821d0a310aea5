"""A batched KV-cache sampler for short completions, with an optional regex constraint and top-k
log-prob capture.

    automaton = TokenAutomaton.from_regex(r"\\d{1,3}(, \\d{1,3}){0,9}", tokenizer)   # optional
    completions = sample(model, prompt_ids, params, torch.Generator().manual_seed(0),
                         eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, grammar=automaton,
                         decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

Why not `model.generate`: on a CPU, for ~30-token completions of a 135M model, three things cost
more than they need to, and this loop removes them (benchmarks/sampler_bench.py measures the result):
  * the prompts of a batch share a long prefix (chat template, system prompt, instruction opener):
    it is prefilled once for one row and its KV broadcast, instead of once per row;
  * `DynamicCache` appends by `torch.cat`, copying the whole cache of every layer at every step; here
    each full-attention layer writes into a preallocated buffer and attention reads a view of it;
  * `generate` keeps decoding rows that have already stopped until the longest one ends; here
    stopped rows are dropped from the batch (cache included) once enough of them have stopped.

Layout of one batch: [shared prefix | left-padded suffixes | generated tokens], one attention-mask
column per cache position (pads are 0), position ids counting real tokens only, so every row sees
exactly what it would see alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sublearn.backends.base import Completion, SamplingParams
from sublearn.backends.constraint import TokenAutomaton

# Drop finished rows from the batch when at most this fraction of the current rows is still going:
# compaction copies the KV cache once, which costs about one decode step, so don't do it for one row.
_COMPACT_BELOW = 0.75


def _layer_classes() -> tuple[type, type]:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return DynamicCache, DynamicLayer


def _buffer_layer(capacity: int) -> Any:
    """A DynamicLayer that keeps keys/values in a preallocated [B, H, capacity, D] buffer."""
    _, DynamicLayer = _layer_classes()

    class BufferLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.capacity, self.length = capacity, 0
            self.is_initialized: bool = False

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.device, self.is_initialized = key_states.device, True
                b, h, _, d = key_states.shape
                self._k = key_states.new_empty((b, h, self.capacity, d))
                self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            t = key_states.shape[-2]
            self._k[:, :, self.length:self.length + t] = key_states
            self._v[:, :, self.length:self.length + t] = value_states
            self.length += t
            self._views()
            return self._k[:, :, :self.length], self._v[:, :, :self.length]

        def _views(self) -> None:
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self._k = self._k.repeat_interleave(repeats, dim=0)
                self._v = self._v.repeat_interleave(repeats, dim=0)
                self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._k, self._v = self._k[indices], self._v[indices]
                self._views()

    return BufferLayer()


def make_cache(model: Any, capacity: int) -> Any:
    """A transformers DynamicCache whose full-attention layers append in place (see module doc);
    other layer kinds (sliding window, ...) keep transformers' own implementation."""
    DynamicCache, DynamicLayer = _layer_classes()
    config = model.config
    cache = DynamicCache(config=config)
    cache.layers = [_buffer_layer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_kwarg(model: Any) -> str:
    """The forward keyword for the KV cache: transformers 5 renamed `past_key_values` to `cache`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving at least one token of each prompt to prefill."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@torch.no_grad()
def sample(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams,
           generator: torch.Generator | Sequence[int], *, eos_id: int, pad_id: int,
           grammar: TokenAutomaton | None = None, decode: Callable[[list[int]], str] | None = None) -> list[Completion]:
    """One completion per prompt (token-id lists), decoded together as one batch.

    `temperature` 0 is greedy; otherwise softmax(logits / T), truncated to `top_p`, sampled by inverse
    CDF (the only randomness): from one `generator` for the whole batch, or, given one int seed per
    prompt, from each row's own stream (uniform t of row r is draw t of a generator seeded seeds[r]),
    so a row's sample does not depend on the rest of the batch and two models given the same seeds
    use the same uniforms row by row. With `grammar`, tokens it forbids get probability 0.

    Completion.token_ids are the generated ids and include the final `eos_id` when the row stopped
    (finish_reason "stop"; a student trained on them learns to stop), otherwise "length".
    Completion.text is `decode(ids without eos)`. With `logprobs_top_k` = k, Completion.top_logprobs[t]
    is the top-k (token id, log-prob) of the model's full, unconstrained temperature-1 distribution
    (log_softmax of the raw logits) at completion position t, eos position included.

    The result for a row depends on the other prompts in the batch only through the random stream
    (and float rounding of batched matmuls), so callers should fix the batch composition.
    """
    n = len(prompts)
    if n == 0:
        return []
    device = next(model.parameters()).device
    cache_kw = cache_kwarg(model)
    lens = torch.tensor([len(p) for p in prompts])
    shared = common_prefix(prompts)
    width = int(lens.max()) - shared
    cache = make_cache(model, shared + width + params.max_new_tokens)

    # 1. The shared prefix, once, then broadcast to every row.
    if shared:
        prefix = torch.tensor([list(prompts[0][:shared])], device=device)
        model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None], use_cache=True,
              logits_to_keep=1, **{cache_kw: cache})
        cache.batch_repeat_interleave(n)
    # 2. The rest of each prompt, left-padded to a common width.
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    att = torch.ones((n, shared + width), dtype=torch.long)
    for r, p in enumerate(prompts):
        pad = width - (len(p) - shared)
        ids[r, pad:] = torch.tensor(list(p[shared:]), dtype=torch.long)
        att[r, shared:shared + pad] = 0
    pos = (att.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    out = model(input_ids=ids.to(device), attention_mask=att.to(device), position_ids=pos.to(device),
                use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    logits = out.logits[:, -1].float()
    next_pos = lens.to(device)  # position of the first generated token = prompt length

    uniforms = None
    if not isinstance(generator, torch.Generator):
        if len(generator) != n:
            raise ValueError(f"sample: {len(generator)} seeds for {n} prompts")
        uniforms = torch.stack([torch.rand(params.max_new_tokens, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(int(s))) for s in generator])
    rows = torch.arange(n)  # batch row -> prompt index (changes when finished rows are dropped)
    alive = torch.ones(n, dtype=torch.bool)
    states = torch.full((n,), grammar.start if grammar else 0, dtype=torch.long)
    tokens: list[list[int]] = [[] for _ in range(n)]
    tops: list[list[list[tuple[int | str, float]]]] = [[] for _ in range(n)]
    k = params.logprobs_top_k
    # Under the grammar, without top-k capture, only the grammar's columns of the LM head are needed.
    split = _split_head(model) if grammar is not None and not k else None
    columns = grammar.columns.to(device) if split is not None and grammar is not None else None
    if columns is not None:
        logits = logits[:, columns]
    for step in range(params.max_new_tokens):
        live_rows = torch.nonzero(alive).flatten().tolist()
        if k:
            top = torch.log_softmax(logits, -1).topk(k, dim=-1)
            t_idx, t_val = top.indices.tolist(), top.values.tolist()
            for r in live_rows:
                tops[int(rows[r])].append(list(zip(t_idx[r], t_val[r], strict=True)))
        scores = logits
        if grammar is not None:
            allowed = grammar.allowed_columns[states] if columns is not None else grammar.masks(states)
            scores = scores.masked_fill(~allowed.to(device), float("-inf"))
        if params.temperature == 0:
            nxt = scores.argmax(-1).cpu()
        else:
            probs = torch.softmax(scores / params.temperature, -1)
            if params.top_p < 1.0:
                probs = _top_p(probs, params.top_p)
            u = uniforms[rows, step][:, None] if uniforms is not None else None
            nxt = _draw(probs.cpu(), generator if isinstance(generator, torch.Generator) else None, u)
        if columns is not None:
            nxt = columns.cpu()[nxt]
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        values = nxt.tolist()
        for r in live_rows:
            tokens[int(rows[r])].append(values[r])
        if grammar is not None:
            states = grammar.steps(states, nxt)
        alive &= nxt != eos_id
        n_alive = int(alive.sum())
        if n_alive == 0 or step == params.max_new_tokens - 1:
            break
        if n_alive <= _COMPACT_BELOW * len(rows):
            keep = torch.nonzero(alive).flatten()
            cache.batch_select_indices(keep.to(device))
            rows, alive, states, nxt, att, next_pos = (rows[keep], alive[keep], states[keep], nxt[keep], att[keep],
                                                       next_pos[keep.to(device)])
        att = torch.cat([att, torch.ones((len(rows), 1), dtype=torch.long)], -1)
        inputs = dict(input_ids=nxt[:, None].to(device), attention_mask=att.to(device),
                      position_ids=next_pos[:, None], use_cache=True)
        if split is not None and columns is not None:
            decoder, head, decoder_cache_kw = split
            hidden = decoder(**inputs, **{decoder_cache_kw: cache}).last_hidden_state[:, -1]
            logits = torch.nn.functional.linear(hidden, head.weight[columns],
                                                None if head.bias is None else head.bias[columns]).float()
        else:
            logits = model(**inputs, **{cache_kw: cache}).logits[:, -1].float()
        next_pos = next_pos + 1

    results = []
    for r in range(n):
        stopped = bool(tokens[r]) and tokens[r][-1] == eos_id
        body = tokens[r][:-1] if stopped else tokens[r]
        results.append(Completion(text=decode(body) if decode is not None else "", token_ids=tokens[r],
                                  finish_reason="stop" if stopped else "length",
                                  top_logprobs=tops[r] if k else None))
    return results


def _split_head(model: Any) -> tuple[Any, Any, str] | None:
    """(decoder, LM head, cache kwarg) when logits are a plain linear map of the decoder's output
    (Llama-style models; not models with logit soft-capping); else None (use the full forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if (decoder is None or not isinstance(head, torch.nn.Linear)
            or getattr(base.config, "final_logit_softcapping", None)):
        return None
    return decoder, head, cache_kwarg(decoder)


def _draw(probs: torch.Tensor, generator: torch.Generator | None, u: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row, by inverse CDF with one uniform per row (`u`, shape (rows, 1), or drawn
    from `generator`).

    About 10x cheaper than torch.multinomial here, which draws an exponential per vocabulary entry
    (measured ~17% of a decode step at 49k vocabulary); the CDF is accumulated in float64 so the
    rounding bias over a large vocabulary stays far below 1e-9. `right=True` never picks a
    zero-probability token."""
    cdf = probs.double().cumsum(-1)
    if u is None:
        u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64)
    u = u * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one)."""
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    sorted_p = sorted_p * keep
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(-1, keepdim=True)
