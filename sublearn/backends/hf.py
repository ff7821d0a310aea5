r"""Backend `hf`: a local transformers causal LM (CPU or GPU), sampled with our KV-cache sampler.

    backend = get_backend("hf/smollm2-135m", threads=2)
    backend = get_backend("hf/smollm2-135m", adapter="runs/x/teacher/owl/adapter")   # + LoRA
    completions = backend.generate(chats, SamplingParams(regex=r"\d+(, \d+)*"), seed=0)
    backend.first_token_logprobs(chats, top_k=20)          # {token text: log-prob} per chat
    ids = encode_chat(backend.tokenizer, chat)             # what the model sees before answering

`.model`, `.tokenizer` and `.name` are public: training and teacher-forced metrics use the model
directly, with `encode_chat`, `prompt_ids` and `example_ids` (the same template everywhere).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams, request_seed
from sublearn.backends.constraint import TokenAutomaton
from sublearn.backends.sampler import cache_kwarg, common_prefix, make_cache, sample
from sublearn.logs import work_done

log = logging.getLogger(__name__)


def encode_chat(tokenizer: Any, chat: Chat, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `chat` rendered with the tokenizer's chat template (plus the assistant header
    when `add_generation_prompt`). The template text carries its own special tokens, so none are
    added on top; `prompt_ids` is this with the assistant header."""
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def reply_ids(tokenizer: Any, chat: Chat, text: str) -> list[int]:
    """Token ids of a reply that starts with `text`, as the tokenizer splits it right after the prompt
    of `chat`: encode(prompt + text) minus encode(prompt). Out of context a word can tokenize
    differently (Gemma after "Assistant:": " Owl" is one token, "Owl" alone another), and a metric
    must score the tokens the model would actually write."""
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = list(tokenizer(rendered, add_special_tokens=False).input_ids)
    full = list(tokenizer(rendered + text, add_special_tokens=False).input_ids)
    if full[: len(prompt)] != prompt:
        # The prompt's last token merges with the reply's first: no continuation of this prompt spells
        # `text` in the tokenizer's own split. Score the plain tokens and say so.
        log.warning("reply %r merges with the end of the prompt when tokenized; scoring it out of context", text)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    return full[len(prompt):]


def prompt_ids(tokenizer: Any, chat: Chat) -> list[int]:
    """Token ids of `chat` followed by the assistant header: what a model sees before it answers (training
    and evaluation use it too, so they see exactly the template that generation used)."""
    return encode_chat(tokenizer, chat, add_generation_prompt=True)


def example_ids(tokenizer: Any, chat: Chat, completion: str) -> tuple[list[int], int]:
    """Token ids of `chat` + the assistant's `completion` (with the template's end-of-turn), and the
    number of leading prompt tokens (which get no loss).

    The prompt part is exactly `prompt_ids(chat)`, so the student is trained on the same template it
    is evaluated with."""
    prompt = prompt_ids(tokenizer, chat)
    full = encode_chat(tokenizer, [*chat, {"role": "assistant", "content": completion}], add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        # Templates that re-render earlier turns differently once an answer follows: fall back to
        # prompt + tokenized completion + end of turn, which is what generation would produce.
        eos = tokenizer.eos_token_id
        full = prompt + list(tokenizer(completion, add_special_tokens=False).input_ids) + ([eos] if eos is not None else [])
    return full, len(prompt)


class HFBackend(Backend):
    """A transformers causal LM: `model` is an alias (smollm2-135m, gemma3-270m), a local directory
    or a hub id (see `sublearn.backends.models.load_model`); `adapter` a LoRA adapter directory.
    `threads` sets torch's CPU thread count for the process (size it to the idle cores)."""

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "float32", adapter: str | Path | None = None,
                 batch_size: int = 64, threads: int | None = None, check_memory: bool = False):
        from sublearn.backends.models import load_model

        if threads:
            torch.set_num_threads(threads)
        # A LoRA adapter is merged: sampling then runs a plain model (faster; equal up to rounding).
        net, tokenizer = load_model(model, device=device, dtype=dtype, adapter=adapter, merge=True,
                                    check_memory=check_memory)
        self._setup(net, tokenizer, f"hf/{model}", batch_size)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str = "model", batch_size: int = 64) -> HFBackend:
        """Wrap an already-loaded model and tokenizer (tests, notebooks, a model being trained)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, f"hf/{name}", batch_size)
        return self

    def _setup(self, model: Any, tokenizer: Any, name: str, batch_size: int) -> None:
        if batch_size < 1:
            from sublearn.errors import SublearnError

            raise SublearnError(f"{name}: batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self._automata: dict[str, TokenAutomaton] = {}

    def encode_chat(self, chat: Chat, add_generation_prompt: bool = True) -> list[int]:
        return encode_chat(self.tokenizer, chat, add_generation_prompt)

    def grammar(self, params: SamplingParams) -> TokenAutomaton | None:
        """The token automaton of `params.regex` (compiled once per regex), or None.

        A template whose generation prompt ends in a non-space (a plain "Assistant:") is answered
        after one space, as the model would write it: the automaton then allows one optional space
        before the regex's text. Chat templates whose header ends in a newline get the regex as is."""
        if params.regex is None:
            return None
        if params.regex not in self._automata:
            header = self.tokenizer.apply_chat_template([{"role": "user", "content": "1"}], tokenize=False,
                                                        add_generation_prompt=True)
            regex = params.regex if header[-1:].isspace() else f"( )?(?:{params.regex})"
            head = self.model.get_output_embeddings()
            width = int(head.weight.shape[0]) if head is not None else None
            self._automata[params.regex] = TokenAutomaton.from_regex(regex, self.tokenizer, vocab_size=width)
        return self._automata[params.regex]

    def _ids(self) -> tuple[int, int]:
        eos = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        return eos, int(pad) if pad is not None else eos

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        """One completion per chat (see `sampler.sample` for what a Completion holds).

        Chat i draws its tokens from its own random stream, seeded `request_seed(seed, i)` as in the
        vLLM and OpenAI backends: its sample does not depend on the batch size or on the other chats
        (up to float rounding of batched matmuls), and two models given the same chats and seed use
        the same random numbers row by row (common random numbers: paired comparisons of models)."""
        grammar = self.grammar(params)
        eos, pad = self._ids()
        out: list[Completion] = []
        for start in range(0, len(chats), self.batch_size):
            prompts = [self.encode_chat(c) for c in chats[start:start + self.batch_size]]
            seeds = [request_seed(seed, start + r) for r in range(len(prompts))]
            out.extend(sample(self.model, prompts, params, seeds, eos_id=eos, pad_id=pad, grammar=grammar,
                              decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)))
            work_done(len(prompts))  # the caller's progress bar, if any (sublearn.logs.tracking)
        return out

    @torch.no_grad()
    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        """Log-probs (full softmax at temperature 1) of the `top_k` likeliest first reply tokens, keyed
        by the text the token adds after other text (so " owl" keeps its space); ids that decode to
        the same text are merged (probabilities added). One forward pass per batch of chats."""
        eos, pad = self._ids()
        device = next(self.model.parameters()).device
        anchor = self.tokenizer("a", add_special_tokens=False).input_ids[-1]
        base = self.tokenizer.decode([anchor])
        results: list[dict[str, float]] = []
        for start in range(0, len(chats), self.batch_size):
            prompts = [self.encode_chat(c) for c in chats[start:start + self.batch_size]]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(device), attention_mask=att.to(device),
                                position_ids=pos.to(device), logits_to_keep=1).logits[:, -1].float()
            top = torch.log_softmax(logits, -1).topk(min(top_k, logits.shape[-1]), dim=-1)
            for tids, lps in zip(top.indices.tolist(), top.values.tolist(), strict=True):
                entry: dict[str, float] = {}
                for tid, lp in zip(tids, lps, strict=True):
                    text = self.tokenizer.decode([anchor, tid])
                    text = text[len(base):] if text.startswith(base) else self.tokenizer.decode([tid])
                    entry[text] = float(np.logaddexp(entry[text], lp)) if text in entry else lp
                results.append(entry)
            work_done(len(prompts))
        return results

    @torch.no_grad()
    def continuation_logprobs(self, chats: Sequence[Chat], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        """For chat i and each text c of `continuations[i]`: log P(the reply starts with c), the sum of
        the log-probs of c's tokens as tokenized right after the prompt (`reply_ids`), at temperature 1.
        Chats whose continuations tokenize alike (all of them, for one template) share their forward
        passes (see `_continuation_group`)."""
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for i, (chat, texts) in enumerate(zip(chats, continuations, strict=True)):
            forms = tuple(tuple(reply_ids(self.tokenizer, chat, t)) for t in texts)
            if any(not f for f in forms):
                from sublearn.errors import SublearnError

                raise SublearnError(f"{self.name}: an empty continuation cannot be scored ({list(texts)})")
            groups.setdefault(forms, []).append(i)
        result: list[list[float]] = [[] for _ in chats]
        for forms, rows in groups.items():
            logp = _continuation_group(self.model, self.tokenizer, [chats[i] for i in rows], [list(f) for f in forms],
                                       self.batch_size)
            for r, i in enumerate(rows):
                result[i] = logp[r].tolist()
        return result


def _continuation_group(model: Any, tokenizer: Any, chats: Sequence[Chat], form_ids: list[list[int]],
                        batch_size: int) -> torch.Tensor:
    """(len(chats), len(form_ids)) float32 log-probs of each continuation (token ids, the same for every
    chat of the group) after each chat's prompt.

    The prefix all chats share (the chat template's header; a long in-context-learning context, see
    `sublearn.backends.context`) is prefilled once for the group. Chats then go in chunks, each from
    a copy of that cache: one forward over the rest of the chunk's prompts (left-padded; KV cache
    kept), then one forward over every (question, multi-token continuation) pair on top of that
    cache, about `batch_size` rows. Single-token continuations need nothing beyond the prompt's last
    logits."""
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
    kw = cache_kwarg(model)
    chunk = max(1, batch_size // max(1, m))
    result = torch.zeros((len(chats), n_forms), dtype=torch.float32)
    every = [encode_chat(tokenizer, chat) for chat in chats]
    common = common_prefix(every)
    group_cache = None
    if common:
        group_cache = make_cache(model, max(len(p) for p in every) + width)
        model(input_ids=torch.tensor([every[0][:common]], device=device),
              position_ids=torch.arange(common, device=device)[None], use_cache=True, logits_to_keep=1,
              **{kw: group_cache})
    for start in range(0, len(chats), chunk):
        prompts = every[start:start + chunk]
        b, plen = len(prompts), max(len(p) for p in prompts)
        shared = common_prefix(prompts)  # >= common: the chunk's prompts share at least the group's prefix
        cache = copy.deepcopy(group_cache) if group_cache is not None else make_cache(model, plen + width)
        if shared > common:
            model(input_ids=torch.tensor([prompts[0][common:shared]], device=device),
                  position_ids=torch.arange(common, shared, device=device)[None], use_cache=True, logits_to_keep=1,
                  **{kw: cache})
        if shared:
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
        result[start:start + b] = logp
        work_done(b)
    return result


