"""Write the generated reference pages of the documentation site (never edited by hand):

    python docs/gen_ref.py docs/reference      # `make docs` runs it before `mkdocs build --strict`

- cli.md: every `sublearn` command's help, from the argparse parser itself (`sublearn.cli.parser`);
- config.md: every field of every config model (pipeline, its sections and the members of each
  `kind` union, MNIST, sweep files) with its type, default and description, from the pydantic models.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subcommands here; it has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_page() -> str:
    from sublearn.cli import parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal width: fixed, so the page is stable
    top = parser()
    lines = ["# Command-line reference", "",
             "Generated from the argparse parser (`sublearn.cli.parser`) by `docs/gen_ref.py`: what `sublearn "
             "COMMAND --help` prints.", "", "```text", top.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(top).items():
        lines += [f"## sublearn {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return repr(field.default)
    if field.default_factory is not None:
        value = field.default_factory()
        return f"{type(value).__name__}()" if isinstance(value, BaseModel) else repr(value)
    return "(required)"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds: itself, or the members of a (discriminated) union."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _models(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in args for m in _models(a)]


def _section(title: str, model: type[BaseModel], seen: set[type[BaseModel]], out: list[str]) -> None:
    if model in seen:
        return
    seen.add(model)
    doc = (model.__doc__ or "").strip().splitlines()
    out += [f"## {title}", "", *(doc[:1] + [""] if doc else []), "| field | type | default | description |",
            "|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if not field.description:
            raise SystemExit(f"{model.__name__}.{name}: no description (every config field needs one)")
        desc = field.description.replace("|", "\\|").replace("\n", " ")
        cells = [_type(field.annotation), _default(field)]
        typ, default = (c.replace("|", "\\|") for c in cells)
        out.append(f"| `{name}` | `{typ}` | `{default}` | {desc} |")
        members = _models(field.annotation)
        for m in members:
            kind = m.model_fields.get("kind")
            union = len(members) > 1 and kind is not None
            nested.append((f"{title}.{name}" + (f" (kind: {kind.default})" if union else ""), m))
    out.append("")
    for label, m in nested:
        _section(label, m, seen, out)


def config_page() -> str:
    from sublearn.mnist.config import MnistConfig
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.tools.sweep_grid import SweepConfig

    out = ["# Configuration reference", "",
           "Generated from the pydantic models by `docs/gen_ref.py`: every field of a pipeline config "
           "(`sublearn run`), its sections and each `kind` of channel, trait and defense, the MNIST config "
           "(`sublearn mnist`) and sweep files (`sublearn sweep`), with its type, default and description. "
           "Set any field in YAML or with `--set section.field=value`.", ""]
    seen: set[type[BaseModel]] = set()
    _section("pipeline", PipelineConfig, seen, out)
    _section("mnist", MnistConfig, seen, out)
    _section("sweep file", SweepConfig, seen, out)
    return "\n".join(out)


def main(target: str) -> None:
    where = Path(target)
    where.mkdir(parents=True, exist_ok=True)
    (where / "cli.md").write_text(cli_page() + "\n", encoding="utf-8")
    (where / "config.md").write_text(config_page() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/reference")
