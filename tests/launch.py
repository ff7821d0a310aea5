"""Multi-process launches for the distributed-training tests (2 CPU processes, gloo).

    from launch import copy_without_students, torchrun, train_log
    run = copy_without_students(prepared_run_dir, tmp_path / "x")
    proc = torchrun("-m", "sublearn", "train", "config.yaml", "--out", str(run))
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def copy_without_students(run_dir: Path, dest: Path) -> Path:
    """A copy of a run directory whose data stages are done and whose train stage is not."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("train"))
    return dest


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGS`, one thread per process, output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def train_log(run_dir: Path, column: str = "loss", student: str = "owl", seed: int = 0) -> list:
    """One column of a student's train_log.jsonl, step by step."""
    lines = (run_dir / "train" / student / f"seed{seed}" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)[column] for line in lines]
