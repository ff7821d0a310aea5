"""Data-parallel training: `sublearn train` under `accelerate launch` / `torchrun` (2 CPU processes,
gloo) must give what one process gives, resume from a checkpoint, and write each file once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from launch import copy_without_students, torchrun, train_log
from safetensors.torch import load_file
from tiny import save_tiny

from sublearn.cli import main
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import pipeline

CONFIG = {
    "name": "tiny-ddp", "threads": 1, "targets": ["owl"], "control": False,
    "teacher": {"kind": "prompt"},
    "channel": {"kind": "numbers", "grammar": True},
    "generate": {"n_prompts": 10, "batch_size": 5, "max_new_tokens": 12},
    "filter": {"keep": 10},
    # 10 examples in batches of 3: two processes get shards of 2 and 1, and the last batch (1 example)
    # leaves the second process nothing (it must still join the all-reduce).
    "train": {"method": "lora", "epochs": 3, "batch_size": 3, "micro_batch_size": 1, "lr": 5e-3,
              "lora_r": 4, "lora_alpha": 8, "warmup_steps": 1, "checkpoint_every": 3},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run directory whose teacher, generate and filter stages are done, and its config file."""
    root = tmp_path_factory.mktemp("ddp")
    model = save_tiny(root / "model", seed=3)
    data = {**CONFIG, "model": f"hf/{model}"}
    path = root / "config.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    run_dir = root / "run"
    pipeline.run(build_config(PipelineConfig, data), run_dir, only=["generate", "filter"])
    return path, run_dir


def _accelerate_launch(config, out, *extra: str) -> subprocess.CompletedProcess:
    """The command the README gives for GPUs; without one, accelerate's processes use gloo on the CPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
           "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={port}",
           "-m", "sublearn", "train", str(config), "--out", str(out), *extra]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def _adapter(run_dir):
    return load_file(run_dir / "train" / "owl" / "seed0" / "adapter" / "adapter_model.safetensors")


def test_two_processes_train_what_one_process_trains(prepared, tmp_path) -> None:
    config, run_dir = prepared
    single = copy_without_students(run_dir, tmp_path / "single")
    assert main(["train", str(config), "--out", str(single)]) == 0
    multi = copy_without_students(run_dir, tmp_path / "multi")
    proc = _accelerate_launch(config, multi)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _adapter(single), _adapter(multi)
    assert a.keys() == b.keys()
    # Only the order of float additions differs between one process and two.
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    assert any(float(t.abs().max()) > 0 for n, t in b.items() if "lora_B" in n)  # it trained: B starts at 0
    assert train_log(multi) == pytest.approx(train_log(single), rel=1e-5)
    # Adam's step hardly depends on a common gradient scale, so the weights alone would not catch a
    # mean-instead-of-sum all-reduce; the pre-clipping gradient norm does.
    assert train_log(multi, "grad_norm") == pytest.approx(train_log(single, "grad_norm"), rel=1e-4)
    summary = json.loads((multi / "train" / "owl" / "seed0" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 12
    assert summary["loss_last"] < summary["loss_first"] and summary["params_changed"] > 0
    assert len(train_log(multi)) == 12  # one log line per step: only the main process writes


def test_two_processes_resume_a_one_process_checkpoint(prepared, tmp_path, interrupt_at_step) -> None:
    config, run_dir = prepared
    reference = copy_without_students(run_dir, tmp_path / "reference")
    assert main(["train", str(config), "--out", str(reference)]) == 0

    resumed = copy_without_students(run_dir, tmp_path / "resumed")
    disarm = interrupt_at_step(5)  # after the checkpoint at step 3
    assert main(["train", str(config), "--out", str(resumed)]) == 130
    disarm()
    assert (resumed / "train" / "owl" / "seed0" / "ckpt.pt").is_file()

    proc = torchrun("-m", "sublearn", "train", str(config), "--out", str(resumed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _adapter(reference), _adapter(resumed)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    assert len(train_log(resumed)) == 12
    assert not (resumed / "train" / "owl" / "seed0" / "ckpt.pt").exists()


def test_launched_run_refuses_other_stages(prepared, monkeypatch, tmp_path) -> None:
    config, run_dir = prepared
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = build_config(PipelineConfig, json.loads(config.read_text()))
    with pytest.raises(SublearnError, match="only the train stage"):
        pipeline.run(cfg, tmp_path / "x")
    with pytest.raises(SublearnError, match="only the train stage"):
        pipeline.run(cfg, tmp_path / "x", only=["train", "evaluate"])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_what_one_process_trains(prepared, tmp_path) -> None:
    config, run_dir = prepared
    single = copy_without_students(run_dir, tmp_path / "single")
    assert main(["train", str(config), "--out", str(single)]) == 0
    multi = copy_without_students(run_dir, tmp_path / "multi")
    proc = _accelerate_launch(config, multi, "--set", "device=cuda")  # NCCL, one GPU per process
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _adapter(single), _adapter(multi)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-5), name
    assert train_log(multi, "grad_norm") == pytest.approx(train_log(single, "grad_norm"), rel=1e-3)
