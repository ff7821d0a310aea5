"""The documentation site: its generated reference pages cover every command and every config field,
and the site builds with --strict (a broken link or API reference fails)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gen_ref():
    spec = importlib.util.spec_from_file_location("gen_ref", ROOT / "docs" / "gen_ref.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_cover_every_command_and_field() -> None:
    from sublearn.cli import parser
    from sublearn.pipeline_config import PipelineConfig, TrainConfig

    gen = _gen_ref()
    cli = gen.cli_page()
    for name in gen._subcommands(parser()):
        assert f"## sublearn {name}" in cli
    assert "--control DATA" in cli and "--store STORE" in cli
    config = gen.config_page()
    for model in (PipelineConfig, TrainConfig):
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in config and field.description.split(".")[0][:40].replace("|", "\\|") in config
    assert "## pipeline.channel (kind: text)" in config and "## pipeline.defense (kind: inoculation)" in config


def test_a_field_without_a_description_stops_the_generator() -> None:
    from pydantic import BaseModel

    class Bad(BaseModel):
        x: int = 1

    with pytest.raises(SystemExit, match="Bad.x: no description"):
        _gen_ref()._section("bad", Bad, set(), [])


def test_the_site_builds_strictly(tmp_path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    ref = ROOT / "docs" / "reference"
    _gen_ref().main(str(ref))
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_run" in api and "VALUE_COLUMNS" in api


@pytest.mark.slow
def test_the_example_notebook_executes(tmp_path) -> None:
    """docs/example.ipynb runs top to bottom on the embedded model (a tiny config), its own assertion
    included (the claim recomputed from the values table)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(ROOT / "docs" / "example.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert "owl vs control" in str(outputs)
