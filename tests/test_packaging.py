"""A non-editable install works outside the repository: the shipped configs travel inside the wheel.

Builds a wheel from a copy of the package sources (no build isolation, so no network: setuptools
comes from the test environment), installs it with --no-deps into a folder put first on PYTHONPATH
(the dependencies are this environment's), and runs the CLI from a temporary working directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a wheel build and several interpreter starts (~1 min)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(wheel, site folder, environment that imports sublearn from it)."""
    pytest.importorskip("setuptools", minversion="68")  # the build backend, used without isolation
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(ROOT / "sublearn", src / "sublearn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, cwd=tmp, timeout=600)
    (wheel,) = (tmp / "dist").glob("sublearn-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp,
                   timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}  # before site-packages (and the editable finder)
    return wheel, site, env


def _run(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_wheel_ships_every_config(installed) -> None:
    from sublearn.configs import names

    wheel, _, _ = installed
    packed = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sublearn/configs/{name}.yaml" for name in names()} <= packed
    assert "sublearn/configs/__init__.py" in packed and "sublearn/configs/paper/owl_qwen25_7b.yaml" in packed


def test_installed_cli_outside_the_repository(installed, tmp_path) -> None:
    from importlib.metadata import version

    _, site, env = installed
    assert _run(env, tmp_path, "-m", "sublearn", "--version").strip() == f"sublearn {version('sublearn')}"
    listing = _run(env, tmp_path, "-m", "sublearn", "list")
    assert "demo " in listing and "paper/owl_qwen25_7b" in listing and "hf/smollm2-135m" in listing
    # What `sublearn demo` loads before any work, resolved from the installed package.
    out = _run(env, tmp_path, "-c", (
        "import sublearn\n"
        "from sublearn.config import load_config\n"
        "from sublearn.configs import resolve\n"
        "from sublearn.mnist.config import MnistConfig\n"
        "from sublearn.pipeline_config import PipelineConfig\n"
        "print(sublearn.__file__)\n"
        "print(resolve('demo'))\n"
        "print(load_config(PipelineConfig, resolve('demo')).name)\n"
        "print(load_config(MnistConfig, resolve('mnist')).seeds)\n"
        "from sublearn.tools.sweep_grid import expand, load_sweep\n"
        "print(len(expand(load_sweep(resolve('sweeps/dose')), resolve('sweeps/dose'))))\n"))
    module, demo, name, _, points = out.strip().splitlines()
    assert Path(module).is_relative_to(site) and Path(demo) == site / "sublearn" / "configs" / "demo.yaml"
    assert name == "demo-lora-teachers-soft-labels" and int(points) == 9
    assert not (tmp_path / "configs").exists() and list(tmp_path.iterdir()) == []
