"""Backend `hf`: a local transformers causal LM (CPU or GPU), sampled with our KV-cache sampler.

    backend = get_backend("hf/smollm2-135m", threads=2)
    backend = get_backend("hf/smollm2-135m", adapter="runs/x/teacher/owl/adapter")   # + LoRA
    completions = backend.generate(chats, SamplingParams(constraint="numbers"), seed=0)
    backend.first_token_logprobs(chats, top_k=20)          # {token text: log-prob} per chat
    ids = encode_chat(backend.tokenizer, chat)             # what the model sees before answering

`.model`, `.tokenizer` and `.name` are public: training and teacher-forced metrics use the model
directly, with `encode_chat` (the same template everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams, request_seed
from sublearn.backends.sampler import NumberGrammar, sample


def encode_chat(tokenizer: Any, chat: Chat, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `chat` rendered with the tokenizer's chat template (plus the assistant header
    when `add_generation_prompt`). The template text carries its own special tokens, so none are
    added on top; this is what `sublearn.lm.chat.prompt_ids` does too."""
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


class HFBackend(Backend):
    """A transformers causal LM: `model` is an alias (smollm2-135m, gemma3-270m), a local directory
    or a hub id (see `sublearn.backends.models.load_model`); `adapter` a LoRA adapter directory.
    `threads` sets torch's CPU thread count for the process (size it to the idle cores)."""

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "float32", adapter: str | Path | None = None,
                 batch_size: int = 64, threads: int | None = None):
        from sublearn.backends.models import load_model

        if threads:
            torch.set_num_threads(threads)
        # A LoRA adapter is merged: sampling then runs a plain model (faster; equal up to rounding).
        net, tokenizer = load_model(model, device=device, dtype=dtype, adapter=adapter, merge=True)
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
        self._grammars: dict[tuple[int, int], NumberGrammar] = {}

    def encode_chat(self, chat: Chat, add_generation_prompt: bool = True) -> list[int]:
        return encode_chat(self.tokenizer, chat, add_generation_prompt)

    def grammar(self, params: SamplingParams) -> NumberGrammar | None:
        """The number-list automaton for `params` (built once per (max_numbers, max_digits)), or None."""
        if params.constraint != "numbers":
            return None
        key = (params.max_numbers, params.max_digits)
        if key not in self._grammars:
            header = self.tokenizer.apply_chat_template([{"role": "user", "content": "1"}], tokenize=False,
                                                        add_generation_prompt=True)
            self._grammars[key] = NumberGrammar.for_tokenizer(self.tokenizer, *key,
                                                              leading_space=not header[-1:].isspace())
        return self._grammars[key]

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
        return results
