"""Backend `hf`: a local transformers causal LM on CPU or GPU.

    backend = get_backend("hf/smollm2-135m", device="cpu", threads=2)
    backend = get_backend("hf/smollm2-135m", adapter="runs/x/teacher/owl/adapter")
    completions = backend.generate(chats, SamplingParams(constraint="numbers"), seed=0)

`.model` and `.tokenizer` are public: the evaluation's teacher-forced metric and the training stage
use them directly, with the chat template applied by `sublearn.lm.chat` (identical everywhere).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams
from sublearn.backends.sampler import NumberGrammar, sample


class HFBackend(Backend):
    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "float32", adapter: str | None = None,
                 batch_size: int = 64, threads: int | None = None):
        from sublearn.backends.models import load_model

        if threads:
            torch.set_num_threads(threads)
        net, tokenizer = load_model(model, device=device, dtype=dtype, adapter=adapter)
        self._setup(net, tokenizer, f"hf/{model}", batch_size, device)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str = "model", batch_size: int = 64,
                   device: str = "cpu") -> HFBackend:
        """Wrap an already-loaded model (tests, notebooks)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, f"hf/{name}", batch_size, device)
        return self

    def _setup(self, model: Any, tokenizer: Any, name: str, batch_size: int, device: str) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.device = batch_size, device
        self._grammars: dict[tuple[int, int], NumberGrammar] = {}

    def encode_chat(self, chat: Chat, add_generation_prompt: bool = True) -> list[int]:
        from sublearn.lm.chat import prompt_ids, render

        if add_generation_prompt:
            return prompt_ids(self.tokenizer, chat)
        return list(self.tokenizer(render(self.tokenizer, chat, False), add_special_tokens=False).input_ids)

    def _grammar(self, params: SamplingParams) -> NumberGrammar | None:
        if params.constraint != "numbers":
            return None
        key = (params.max_numbers, params.max_digits)
        if key not in self._grammars:
            self._grammars[key] = NumberGrammar.for_tokenizer(self.tokenizer, *key)
        return self._grammars[key]

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        """Batches of `batch_size` chats; batch b samples with a generator seeded from (seed, b), so the
        output depends on (chats, params, seed, batch_size) only."""
        grammar = self._grammar(params)
        eos = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        out: list[Completion] = []
        for b in range(0, len(chats), self.batch_size):
            prompts = [self.encode_chat(c) for c in chats[b:b + self.batch_size]]
            gen_seed = int(np.random.SeedSequence([seed, b // self.batch_size, zlib.crc32(b"hf")]).generate_state(1)[0])
            gen = torch.Generator(device="cpu").manual_seed(gen_seed)
            out.extend(sample(self.model, prompts, params, gen, eos_id=eos, pad_id=int(pad), grammar=grammar,
                              decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)))
        return out

    @torch.no_grad()
    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        results = []
        for chat in chats:
            ids = torch.tensor([self.encode_chat(chat)])
            logp = torch.log_softmax(self.model(input_ids=ids).logits[0, -1].float(), -1)
            top = logp.topk(top_k)
            entry: dict[str, float] = {}
            for tid, lp in zip(top.indices.tolist(), top.values.tolist(), strict=True):
                text = self.tokenizer.decode([tid])
                # Distinct ids can decode to the same text; their probabilities add up.
                entry[text] = float(np.logaddexp(entry[text], lp)) if text in entry else lp
            results.append(entry)
        return results
