"""The configs shipped inside the package, addressable by name or by path.

    resolve("demo")                      # sublearn/configs/demo.yaml, wherever the package is installed
    resolve("paper/owl_qwen25_7b")       # sublearn/configs/paper/owl_qwen25_7b.yaml
    resolve("my_configs/run.yaml")       # a file that exists wins over a shipped name
    names()                              # ["channels/code", ..., "demo", ..., "sweeps/dose"]

A name is a YAML file's path under this folder without `.yaml`; `configs/<name>.yaml` (the folder's
old place in the repository) is accepted too. A reference that is neither an existing file nor a
shipped name is a one-line `SublearnError` listing the nearest names.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sublearn.errors import SublearnError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SUFFIX = ".yaml"
_files = contextlib.ExitStack()  # keeps any extracted copy (a zipped install) alive until exit
atexit.register(_files.close)


def _walk(node: Traversable, prefix: str = "") -> dict[str, Traversable]:
    found: dict[str, Traversable] = {}
    for child in node.iterdir():
        if child.is_dir() and not child.name.startswith(("_", ".")):
            found.update(_walk(child, f"{prefix}{child.name}/"))
        elif child.is_file() and child.name.endswith(SUFFIX):
            found[prefix + child.name[: -len(SUFFIX)]] = child
    return found


def _shipped() -> dict[str, Traversable]:
    return _walk(resources.files(__name__))


def names() -> list[str]:
    """Every shipped config's name, sorted ("demo", "paper/owl_qwen25_7b", "sweeps/dose", ...)."""
    return sorted(_shipped())


def _as_path(node: Traversable) -> Path:
    if isinstance(node, Path):
        return node
    return _files.enter_context(resources.as_file(node))


def shipped(name: str) -> Path | None:
    """The file of shipped config `name` (`.yaml` and a leading `configs/` allowed), or None."""
    key = name.replace("\\", "/").strip("/")
    for prefix in ("sublearn/configs/", "configs/"):
        key = key.removeprefix(prefix)
    key = key.removesuffix(SUFFIX)
    node = _shipped().get(key)
    return _as_path(node) if node is not None else None


def near(name: str, n: int = 4) -> list[str]:
    """Shipped names close to `name` (whole names, or names whose last part is close)."""
    key = name.replace("\\", "/").removesuffix(SUFFIX).removeprefix("configs/")
    every = names()
    close = difflib.get_close_matches(key, every, n=n, cutoff=0.5)
    by_stem: dict[str, list[str]] = {}
    for full in every:
        by_stem.setdefault(full.rsplit("/", 1)[-1], []).append(full)
    for stem in difflib.get_close_matches(key.rsplit("/", 1)[-1], list(by_stem), n=n, cutoff=0.6):
        close += [f for f in by_stem[stem] if f not in close]
    return close[:n]


def resolve(ref: str | Path, what: str = "config") -> Path:
    """The YAML file `ref` names: an existing file as given, else a shipped config's name.

    Raises a one-line SublearnError naming `what` (e.g. "config", "sweep") and the nearest names."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise SublearnError(f"{what} {str(ref)!r}: is a directory; expected a YAML file or a shipped config name "
                            f"(see `sublearn list`)")
    found = shipped(str(ref))
    if found is not None:
        return found
    hint = near(str(ref))
    maybe = f"; did you mean {', '.join(hint)}?" if hint else ""
    raise SublearnError(f"{what} {str(ref)!r}: no such file and no shipped config of that name{maybe} "
                        f"(`sublearn list` shows them all)")


def description(path: Path, width: int = 100) -> str:
    """A config's one-line description: the first sentence of its leading comment, cut at `width`."""
    words: list[str] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                text = line.strip()
                if not text.startswith("#") or not text.lstrip("#").strip():
                    break
                words += text.lstrip("#").split()
    except (OSError, UnicodeDecodeError):
        return ""
    sentence = " ".join(words)
    if ". " in sentence:
        sentence = sentence[: sentence.index(". ") + 1]
    if len(sentence) > width:
        sentence = sentence[: width - 3].rsplit(" ", 1)[0] + "..."
    return sentence
