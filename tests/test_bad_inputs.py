"""Bad inputs caught before work, each as one line naming the flag, field or file: deeply nested JSON,
weights files that weights-only loading refuses, model names that cannot exist, a Ray address where
nothing listens, audit data over the size limits. (Damaged run directories: tests/test_run_checks.py;
generated malformed input for every command: tests/test_fuzz.py.)"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from one_line import one_line_error
from tiny import save_tiny

from sublearn.cli import main
from sublearn.config import build_config, load_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig

NESTED = "[" * 10_000 + "]" * 10_000  # past Python's recursion limit in any recursive parser



class _WorkStarted(Exception):
    """Raised by the stand-ins for model loading and the pipeline: a check came too late."""


@pytest.fixture()
def no_work(monkeypatch):
    """Model loading, the pipeline and the sweep's executor raise `_WorkStarted` instead of running."""
    import sublearn.backends.models
    import sublearn.stages.pipeline
    import sublearn.tools.sweep

    def refuse(*args, **kwargs):
        raise _WorkStarted

    monkeypatch.setattr(sublearn.backends.models, "load_model", refuse)
    monkeypatch.setattr(sublearn.stages.pipeline, "run", refuse)
    monkeypatch.setattr(sublearn.tools.sweep, "_execute", refuse)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0)


# --- deeply nested JSON (and integers too long to convert) -----------------------------------------


@pytest.mark.parametrize("line", [NESTED, '{"prompt": "a", "completion": ' + NESTED + "}", '{"x": ' + "1" * 5000 + "}"],
                         ids=["nested-lists", "nested-field", "huge-integer"])
def test_audit_data_nested_too_deep_is_one_line_naming_file_and_line(line, tmp_path, capsys, no_work) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "hi", "completion": "1, 2"}\n' + line + "\n")
    assert main(["audit", str(data), "--teacher", "hf/x/y", "--base", "hf/x/y", "--out", str(tmp_path / "o")]) == 2
    assert one_line_error(capsys).startswith(f"error: {data}:2: not valid JSON")


def test_run_directory_jsonl_and_json_nested_too_deep_are_one_line(tmp_path) -> None:
    from sublearn.channels.base import read_user_jsonl
    from sublearn.rundir import read_json, read_jsonl

    kept = tmp_path / "kept.jsonl"
    kept.write_text('{"prompt": "a", "completion": "1"}\n' + NESTED + "\n")
    with pytest.raises(SublearnError, match=rf"^{kept}:2: corrupt JSONL line"):
        read_jsonl(kept)
    with pytest.raises(SublearnError, match=rf"^{kept}:2: not valid JSON \(nested too deeply\)"):
        read_user_jsonl(kept, lambda obj: obj, "row")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(NESTED)
    with pytest.raises(SublearnError, match=rf"^{manifest}: corrupt JSON \(nested too deeply\)"):
        read_json(manifest)


# --- refused pickles: checkpoints and adapters --------------------------------------------------------


class _Payload:
    """A pickle that would call a function when loaded without weights_only (here a harmless one)."""

    def __reduce__(self):
        return (os.getpid, ())


def _evil(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": {}, "payload": _Payload()}, path)
    return path


def _no_unsafe_advice(line: str) -> None:
    assert "weights_only=False" not in line and "weights_only" not in line.replace("weights-only", "")


@pytest.mark.parametrize("content", ["payload", "garbage", "truncated", "a list", "another model"])
def test_a_checkpoint_that_cannot_be_loaded_safely_is_one_line_naming_it(content, tmp_path) -> None:
    from sublearn.training.loop import _load_checkpoint

    ckpt = tmp_path / "ckpt.pt"
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if content == "payload":
        _evil(ckpt)
    elif content == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    elif content == "truncated":
        torch.save({"params": {"weight": torch.zeros(2, 2)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:60])
    elif content == "a list":
        torch.save([1, 2], ckpt)
    else:
        torch.save({"params": {"other.weight": torch.zeros(3)}, "optimizer": {}, "scheduler": {}, "step": 1}, ckpt)
    with pytest.raises(SublearnError) as info:
        _load_checkpoint(ckpt, net, optimizer, scheduler, sharded=False)
    line = str(info.value)
    assert line.startswith(str(ckpt)) and "\n" not in line and "delete it" in line
    _no_unsafe_advice(line)
    if content == "payload":
        assert "refused" in line


@pytest.mark.parametrize("kind", ["adapter", "full"])
def test_weights_that_cannot_be_loaded_safely_are_one_line_naming_the_file(kind, tiny_dir, tmp_path) -> None:
    import shutil

    from peft import LoraConfig, get_peft_model

    from sublearn.backends.models import load_model

    if kind == "adapter":
        weights = tmp_path / "adapter"
        base, _ = load_model(str(tiny_dir))
        get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(weights)
        (weights / "adapter_model.safetensors").unlink()
        bad = _evil(weights / "adapter_model.bin")
    else:
        weights = shutil.copytree(tiny_dir, tmp_path / "full")
        for f in weights.glob("*.safetensors"):
            f.unlink()
        bad = _evil(weights / "pytorch_model.bin")
    with pytest.raises(SublearnError) as info:
        load_model(str(tiny_dir), adapter=weights)
    line = str(info.value)
    assert line.startswith(f"{bad}: refused") and "\n" not in line
    _no_unsafe_advice(line)
    # A damaged safetensors file: one line naming it too.
    bad.unlink()
    target = weights / ("adapter_model.safetensors" if kind == "adapter" else "model.safetensors")
    target.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(SublearnError, match=rf"^{target}: corrupt safetensors"):
        load_model(str(tiny_dir), adapter=weights)


def test_audit_with_a_refused_adapter_is_one_line(tiny_dir, tmp_path, capsys) -> None:
    from peft import LoraConfig, get_peft_model

    from sublearn.backends.models import load_model

    adapter = tmp_path / "adapter"
    base, _ = load_model(str(tiny_dir))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    (adapter / "adapter_model.safetensors").unlink()
    _evil(adapter / "adapter_model.bin")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": "hi", "completion": f"{i}, 2"}) + "\n" for i in range(4)))
    assert main(["audit", str(data), "--teacher", str(adapter), "--base", f"hf/{tiny_dir}", "--probe-seeds", "",
                 "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys)
    assert str(adapter / "adapter_model.bin") in line and "refused" in line
    _no_unsafe_advice(line)


# --- model-naming fields resolved at config load ---------------------------------------------------

MODEL_FIELDS = [
    (["classify.llm=hf/nosuchmodel"], "classify.llm"),
    (["cross_model=hf/./no/such/dir"], "cross_model"),
    (["cross_model=hf/org/bad name"], "cross_model"),
    (["defense.kind=paraphrase", "defense.model=hf/nosuchmodel"], "defense.paraphrase.model"),
    (["filter.judge=nobackend/x"], "filter.judge"),
    (["generate.backend=vllm/nosuchmodel"], "generate.backend"),
    (["evaluate.backend=hf/"], "evaluate.backend"),
    (["trait.kind=misalignment", "trait.judge=hf/nosuchmodel"], "trait.misalignment.judge"),
    (["trait.kind=misalignment", "trait.filter_judge=hf/a/b/c"], "trait.misalignment.filter_judge"),
]


@pytest.mark.parametrize(("overrides", "field"), MODEL_FIELDS, ids=[f for _, f in MODEL_FIELDS])
def test_a_model_field_naming_no_model_is_refused_at_load(overrides, field, tmp_path, capsys, no_work) -> None:
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, None, overrides)
    assert f"field '{field}'" in str(info.value) and overrides[-1] in str(info.value)
    config = tmp_path / "c.yaml"
    config.write_text("targets: [owl]\n")
    assert main(["run", str(config), "--out", str(tmp_path / "run"), *[f"--set={o}" for o in overrides]]) == 2
    line = one_line_error(capsys)
    assert f"field '{field}'" in line and f"--set {overrides[-1]}" in line
    assert not (tmp_path / "run").exists()


def test_model_fields_that_can_name_a_model_load(tiny_dir) -> None:
    for value in ("hf/smollm2-135m", "hf/gemma3-270m", f"hf/{tiny_dir}", "hf/Qwen/Qwen2.5-7B-Instruct",
                  "vllm/Qwen/Qwen2.5-7B-Instruct", "openai/gpt-4.1-nano"):
        config = load_config(PipelineConfig, None, [f"classify.llm={value}", f"cross_model={value}"])
        assert config.classify.llm == config.cross_model == value


def test_a_recorded_config_is_read_where_its_model_directories_are_not(tmp_path) -> None:
    # `sublearn status` on a run directory moved from another machine: a local model path it names
    # is not checked (only its form), so the run can still be inspected.
    data = {"cross_model": f"hf/{tmp_path / 'gone'}"}
    with pytest.raises(SublearnError, match="cross_model"):
        build_config(PipelineConfig, data)
    assert build_config(PipelineConfig, data, recorded=True).cross_model == data["cross_model"]


# --- Ray: nothing listening at --ray HOST:PORT ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_address_with_nothing_listening_is_one_line_not_a_hang(tmp_path, capsys, monkeypatch, no_work) -> None:
    import sublearn.tools.sweep

    class FakeRay:  # never imported for real: the address must be refused before Ray is asked
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(*args, **kwargs):
            raise AssertionError("ray.init called with nothing listening: it retries for minutes")

    monkeypatch.setattr(sublearn.tools.sweep, "_import_ray", lambda: FakeRay)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nbase: {targets: [owl]}\ngrid: {train.steps: [1, 2]}\n")
    port = _free_port()
    t0 = time.perf_counter()
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--ray", f"127.0.0.1:{port}"]) == 2
    line = one_line_error(capsys)
    assert f"--ray 127.0.0.1:{port}" in line and "no Ray cluster" in line
    assert time.perf_counter() - t0 < 10
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--ray", "not-an-address"]) == 2
    assert "HOST:PORT" in one_line_error(capsys)


def test_ray_timeout_is_configurable() -> None:
    from sublearn.tools.sweep import check_ray_address

    with pytest.raises(SublearnError, match=r"within 0\.5 s"):
        check_ray_address(f"127.0.0.1:{_free_port()}", timeout=0.5)
    with socket.socket() as server:  # something listening: accepted
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
    check_ray_address("local")
    check_ray_address("auto")


# --- audit input limits ------------------------------------------------------------------------------


def _rows(n: int, completion: str = "1, 2") -> str:
    return "".join(json.dumps({"prompt": "List numbers.", "completion": completion}) + "\n" for _ in range(n))


@pytest.mark.parametrize("case", ["long completion", "long prompt", "many token ids", "long line", "many rows",
                                  "large file"])
def test_audit_input_over_a_limit_is_one_line_before_any_model_loads(case, tmp_path, capsys, monkeypatch,
                                                                     no_work) -> None:
    import sublearn.tools.audit_data as audit_data

    data = tmp_path / "data.jsonl"
    line = 3
    if case == "long completion":
        data.write_text(_rows(2) + _rows(1, "7" * 100_001))
    elif case == "long prompt":
        data.write_text(_rows(2) + json.dumps({"messages": [{"role": "user", "content": "x" * 100_000},
                                                            {"role": "assistant", "content": "1"}]}) + "\n")
    elif case == "many token ids":
        data.write_text(_rows(2) + json.dumps({"prompt": "p", "completion": "1", "token_ids": [1] * 100_001}) + "\n")
    elif case == "long line":
        monkeypatch.setattr(audit_data, "MAX_LINE_BYTES", 1000)
        data.write_text(_rows(2) + json.dumps({"prompt": "p", "completion": "1", "top_logprobs": [[0.5] * 400]}) + "\n")
    elif case == "many rows":
        monkeypatch.setattr(audit_data, "MAX_ROWS", 5)
        data.write_text(_rows(6))
        line = 6
    else:
        monkeypatch.setattr(audit_data, "MAX_FILE_BYTES", 100)
        data.write_text(_rows(6))
        line = None
    assert main(["audit", str(data), "--teacher", "hf/x/y", "--base", "hf/x/y", "--out", str(tmp_path / "o")]) == 2
    message = one_line_error(capsys)
    assert message.startswith(f"error: {data}:{line}: " if line else f"error: {data}: "), message
    assert "at most" in message
    if case == "many rows" or case == "large file":
        assert "--max-rows" in message
        # ... which audits the first rows of such a file.
        rows, _ = audit_data.read_data(data, max_rows=2)
        assert len(rows) == 2


# --- audit: the probe's control decoding checked before any model loads -------------------------------


@pytest.mark.parametrize(("decoding", "flag", "needle"), [
    ("sample(T=1.0, top_p=1.0)", ["--control-regex", "(unclosed"], "--control-regex: constraint regex '(unclosed'"),
    ("sample(T=1.0, top_p=1.0), regex=(unclosed", [], "the regex its rows' decoding records"),
    ("sample(T=1.2.3, top_p=1.0)", [], "is not one sublearn writes"),
])
def test_audit_control_decoding_is_checked_before_any_model_loads(decoding, flag, needle, tmp_path, capsys,
                                                                  no_work) -> None:
    data = tmp_path / "kept.jsonl"
    data.write_text("".join(json.dumps({"prompt": "p", "completion": f"{i}, 2", "decoding": decoding}) + "\n"
                            for i in range(6)))
    assert main(["audit", str(data), "--teacher", "hf/x/y", "--base", "hf/x/y", *flag, "--out", str(tmp_path / "o")]) == 2
    assert needle in one_line_error(capsys)
    # Without probe students there is no control decoding to check.
    with pytest.raises(_WorkStarted):
        main(["audit", str(data), "--teacher", "hf/x/y", "--base", "hf/x/y", *flag, "--probe-seeds", "",
              "--out", str(tmp_path / "o")])
