"""Bad inputs caught before work, each as one line naming the flag, field or file: deeply nested JSON,
weights files that weights-only loading refuses, model names that cannot exist, a Ray address where
nothing listens, audit data over the size limits. (Damaged run directories: tests/test_run_checks.py;
generated malformed input for every command: tests/test_fuzz.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import save_tiny

from sublearn.cli import main
from sublearn.errors import SublearnError

NESTED = "[" * 10_000 + "]" * 10_000  # past Python's recursion limit in any recursive parser


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in captured.out + captured.err
    return err[0]


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
    assert _one_line_error(capsys).startswith(f"error: {data}:2: not valid JSON")


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

