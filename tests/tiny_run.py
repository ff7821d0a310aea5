"""A finished run directory of the whole pipeline on a tiny model, built once per test process (~15 s
on one core) and copied by the tests that damage it.

    from tiny_run import finished_run, copy_run
    run_dir, config = finished_run()          # shared: do not modify
    out = copy_run(tmp_path / "run")           # a private copy to damage

Prompted owl teacher and the base-model control, two students each (LoRA, one update), evaluated
teacher-forced on two questions; no theorem stage (prompted teachers have no displacement).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from tiny import save_tiny


def tiny_config(model_dir: Path) -> dict[str, Any]:
    """The config (as a dict) of `finished_run`, for hf/<model_dir>."""
    return {
        "name": "tiny-run", "model": f"hf/{model_dir}", "threads": 1, "targets": ["owl"], "theorem": False,
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 8, "batch_size": 8, "max_new_tokens": 16},
        "filter": {"keep": 4},
        "train": {"method": "lora", "steps": 1, "batch_size": 2, "micro_batch_size": 2, "lora_r": 2, "lora_alpha": 2,
                  "seeds": [1, 2], "warmup_steps": 0},
        "evaluate": {"animals": ["owl", "cat"], "n_questions": 2, "samples_per_question": 0, "number_prefix": False,
                     "n_bootstrap": 100, "n_permutations": 100},
    }


@lru_cache(maxsize=1)
def finished_run() -> tuple[Path, Any]:
    """(run directory, PipelineConfig) of a finished tiny run; built on first use, removed at exit."""
    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages import pipeline

    root = Path(tempfile.mkdtemp(prefix="sublearn-tiny-run-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model = save_tiny(root / "model", seed=0)
    config = build_config(PipelineConfig, tiny_config(model))
    pipeline.run(config, root / "run")
    return root / "run", config


def copy_run(dest: Path) -> Path:
    """A private copy of `finished_run`'s directory at `dest` (returned)."""
    shutil.copytree(finished_run()[0], dest)
    return dest
