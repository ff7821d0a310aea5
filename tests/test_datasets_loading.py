"""The filter stage's kept data loads with Hugging Face `datasets` as it is written.

A tiny pipeline run (a prompted teacher and the control on a tiny random model, numbers channel,
soft labels stored) writes filter/<teacher>/kept.jsonl; `datasets.load_dataset("json", ...)` must
read every row and column back with the values written. Arrow needs one type per column (and per
list level): every field of our records is checked to keep one JSON type across rows. The one mixed
leaf is a soft label's [token id, log-prob] pair: Arrow reads those pairs as float64 lists, so ids
come back as exact floats (38 -> 38.0); that is asserted here, so a format change shows up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

datasets = pytest.importorskip("datasets")

from tiny import save_tiny  # noqa: E402

from sublearn.config import build_config  # noqa: E402
from sublearn.pipeline_config import PipelineConfig  # noqa: E402
from sublearn.stages import pipeline  # noqa: E402

PAIR = "top_logprobs[][][]"  # the [token id, log-prob] pairs of a soft label


def _leaf_types(value: Any, path: str, out: dict[str, set[str]]) -> None:
    """The JSON types found at each path of a record (list positions collapsed to [])."""
    if isinstance(value, dict):
        for k, v in value.items():
            _leaf_types(v, f"{path}.{k}" if path else k, out)
    elif isinstance(value, list):
        out.setdefault(path, set()).add("list")
        for v in value:
            _leaf_types(v, f"{path}[]", out)
    else:
        kind = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}[type(value)]
        out.setdefault(path, set()).add(kind)


@pytest.fixture(scope="module")
def kept_files(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("datasets")
    model = save_tiny(root / "model", seed=0)
    config = build_config(PipelineConfig, {
        "model": f"hf/{model}", "threads": 1, "targets": ["owl"],
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 12, "batch_size": 6, "max_new_tokens": 16, "logprobs_top_k": 4},
        "filter": {"keep": 10}})
    pipeline.run(config, root / "run", only=["generate", "filter"])
    files = sorted((root / "run" / "filter").glob("*/kept.jsonl"))
    assert [f.parent.name for f in files] == ["control", "owl"]
    return files


def test_every_field_keeps_one_type_across_rows(kept_files) -> None:
    for path in kept_files:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert records, path
        keys = set(records[0])
        assert {"prompt", "completion", "token_ids", "top_logprobs"} <= keys
        assert all(set(r) == keys for r in records), f"{path}: rows with different fields"
        types: dict[str, set[str]] = {}
        for r in records:
            _leaf_types(r, "", types)
        for field, kinds in types.items():
            if field == PAIR:
                assert kinds == {"int", "float"}  # [id, logprob]: read back as float64 pairs (see docstring)
            else:
                # One type per path; null may stand for a missing value of that type (system: no prompt).
                assert len(kinds - {"null"}) <= 1, f"{path}: {field} holds {sorted(kinds)}"


def test_kept_data_loads_with_datasets(kept_files, tmp_path) -> None:
    datasets.disable_progress_bars()
    for path in kept_files:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
        assert ds.num_rows == len(records)
        assert set(ds.column_names) == set(records[0])
        assert ds.features["token_ids"].feature.dtype == "int64"
        assert ds.features["top_logprobs"].feature.feature.feature.dtype == "float64"
        for row, rec in zip(ds, records, strict=True):
            for key, value in rec.items():
                if key == "top_logprobs":
                    # Ids come back as floats, exactly: int(id) restores them.
                    got = [[[int(t), lp] for t, lp in position] for position in row[key]]
                    assert got == value and all(float(t).is_integer() for p in row[key] for t, _ in p)
                else:
                    assert row[key] == value and type(row[key]) is type(value), key
