"""Full fine-tuning sharded with FSDP2 across 2 CPU processes (gloo): what one unsharded process
trains, its checkpoints resume exactly, and the saved weights are whole."""

from __future__ import annotations

import json

import pytest
import torch
from launch import copy_without_students, torchrun, train_log
from safetensors.torch import load_file
from tiny import save_tiny

from sublearn.cli import main
from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import pipeline

CONFIG = {
    "name": "tiny-fsdp", "threads": 1, "targets": ["owl"], "control": False,
    "teacher": {"kind": "prompt"},
    "channel": {"kind": "numbers", "grammar": True},
    "generate": {"n_prompts": 10, "batch_size": 5, "max_new_tokens": 12},
    "filter": {"keep": 10},
    # Batches of 3 over 2 processes with micro-batches of 1: shards of 2 and 1, and the last batch
    # (1 example) gives the second process nothing: it still runs its forwards (FSDP gathers weights
    # inside them) with zero loss.
    "train": {"method": "full", "fsdp": True, "epochs": 3, "batch_size": 3, "micro_batch_size": 1, "lr": 1e-3,
              "warmup_steps": 1, "checkpoint_every": 3},
}

# Runs `sublearn` with AdamW's n-th step raising KeyboardInterrupt on every process (a crash mid-run).
CRASH = """
import sys, torch
from sublearn.cli import main
n, real, calls = int(sys.argv[1]), torch.optim.AdamW.step, {"n": 0}
def step(self, *a, **k):
    calls["n"] += 1
    if calls["n"] == n:
        raise KeyboardInterrupt
    return real(self, *a, **k)
torch.optim.AdamW.step = step
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    model = save_tiny(root / "model", seed=3)
    data = {**CONFIG, "model": f"hf/{model}"}
    path = root / "config.yaml"
    path.write_text(json.dumps(data))
    run_dir = root / "run"
    pipeline.run(build_config(PipelineConfig, data), run_dir, only=["generate", "filter"])
    (root / "crash.py").write_text(CRASH)
    return path, run_dir, root / "crash.py"


def _weights(run_dir):
    return load_file(run_dir / "train" / "owl" / "seed0" / "model" / "model.safetensors")


def test_fsdp_trains_what_one_process_trains_and_resumes(prepared, tmp_path) -> None:
    config, run_dir, crash = prepared
    single = copy_without_students(run_dir, tmp_path / "single")
    assert main(["train", str(config), "--out", str(single)]) == 0  # one process: fsdp has nothing to shard
    sharded = copy_without_students(run_dir, tmp_path / "sharded")
    proc = torchrun("-m", "sublearn", "train", str(config), "--out", str(sharded))
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _weights(single), _weights(sharded)
    assert a.keys() == b.keys() and all(not isinstance(t, torch.distributed.tensor.DTensor) for t in b.values())
    for name in a:
        assert a[name].shape == b[name].shape and torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    assert train_log(sharded) == pytest.approx(train_log(single), rel=1e-5)
    # The loss is scaled so that FSDP's averaged gradients are the summed ones: the pre-clipping norm
    # would differ by the number of processes otherwise.
    assert train_log(sharded, "grad_norm") == pytest.approx(train_log(single, "grad_norm"), rel=1e-4)
    summary = json.loads((sharded / "train" / "owl" / "seed0" / "summary.json").read_text())
    assert summary["fsdp"] and summary["processes"] == 2 and summary["params_changed"] > 0
    assert summary["loss_last"] < summary["loss_first"]

    # Interrupted after the checkpoint at step 3 on both processes, then resumed: the same weights.
    resumed = copy_without_students(run_dir, tmp_path / "resumed")
    proc = torchrun(str(crash), "5", "train", str(config), "--out", str(resumed))
    assert proc.returncode != 0
    assert (resumed / "train" / "owl" / "seed0" / "ckpt.pt").is_file()
    proc = torchrun("-m", "sublearn", "train", str(config), "--out", str(resumed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = _weights(resumed)
    for name in b:
        assert torch.allclose(b[name], c[name], rtol=1e-5, atol=1e-7), name
    assert len(train_log(resumed)) == 12
