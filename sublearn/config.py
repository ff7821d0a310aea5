"""Typed, frozen configs loaded from YAML with `--set key=value` overrides.

Every config class derives from `Frozen`: unknown keys are rejected and instances are immutable.
`load_config(Model, path, overrides)` turns any problem (bad YAML, unknown key, wrong type) into a
one-line `SublearnError` that names the file (or the `--set` flag) and the dotted field.

Every YAML sublearn reads goes through `yaml_load` (files: `read_yaml`): safe tags only, no anchors or
aliases, no duplicate mapping keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sublearn.errors import SublearnError


class Frozen(BaseModel):
    """Base for every config: immutable, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


C = TypeVar("C", bound=BaseModel)

# Seeds reach torch generators and int64 arrays: a negative or wider one fails there, after hours of work.
MAX_SEED = 2**63 - 1


def check_seeds(seeds: list[int], name: str) -> list[int]:
    """For a validator: `seeds` unchanged, or ValueError naming `name` unless each is in 0..MAX_SEED."""
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"{name} must be non-negative integers below 2^63, got {bad[0]}")
    return seeds


class RefusedYAML(yaml.MarkedYAMLError):
    """Well-formed YAML that sublearn refuses: an anchor or alias, or a key repeated in one mapping."""


# Deeper than any config (a few levels), far below what exhausts Python's recursion limit.
MAX_YAML_DEPTH = 64
MAX_YAML_INT_BITS = 256


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses anchors (so aliases), duplicate mapping keys and nesting deeper than
    `MAX_YAML_DEPTH` (raises `RefusedYAML`).

    Use it through `yaml_load(text, source)`, which turns every YAML problem into a one-line error."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # An alias is a reference, so a few hundred bytes of nested aliases ("billion laughs") become
        # billions of values once anything walks the tree (validation, json.dumps); no config needs them.
        # Anchors are refused where they are defined, so every alias is undefined and PyYAML refuses it.
        event = self.peek_event()
        mark: Any = event.start_mark
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            raise RefusedYAML(problem=f"anchor '&{anchor}' refused: sublearn YAML may not use anchors or "
                              "aliases; write the value out", problem_mark=mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise RefusedYAML(problem=f"nested deeper than {MAX_YAML_DEPTH} levels", problem_mark=mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A scalar that its tag's constructor cannot convert (an integer of 5,000 digits, a date 2001-13-45,
        # `!!int abc`) raises ValueError inside PyYAML: a YAML error at the value's line instead.
        value = node.value if isinstance(node, yaml.ScalarNode) else ""
        shown = f" {value[:40]!r}{'...' if len(value) > 40 else ''}" if value else ""
        try:
            data = super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(problem=f"cannot read the value{shown}: {' '.join(str(exc).split())[:100]}",
                                                    problem_mark=node.start_mark) from None
        # Hex and octal integers have no digit limit: one of 20,000 bits loads, then fails wherever it is
        # printed in decimal (a validation message). No setting needs more than 64 bits.
        if isinstance(data, int) and data.bit_length() > MAX_YAML_INT_BITS:
            raise yaml.constructor.ConstructorError(problem=f"the integer{shown} is too large ({data.bit_length()} bits; "
                                                    f"at most {MAX_YAML_INT_BITS})", problem_mark=node.start_mark)
        return data

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys: a section written twice silently loses the first.
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<`, resolved by SafeConstructor
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeConstructor refuses it with its own message
                continue
            if earlier is not key_node:
                mark: Any = key_node.start_mark
                raise RefusedYAML(problem=f"duplicate key {str(key)!r} (first on line "
                                  f"{earlier.start_mark.line + 1}); each key may appear once in a mapping",
                                  problem_mark=mark)
        return super().construct_mapping(node, deep=deep)


def _parse(text: str) -> Any:
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "invalid YAML"
    if isinstance(exc, RefusedYAML):
        return f"{source}:{where} {problem}"
    return f"{source}:{where} malformed YAML ({problem})"


def yaml_load(text: str, source: str) -> Any:
    """Parse `text` with `StrictLoader`; any problem is a one-line SublearnError starting with `source`
    (a file name or a flag) and the line and column."""
    try:
        return _parse(text)
    except yaml.YAMLError as exc:
        raise SublearnError(_yaml_message(exc, source)) from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SublearnError(f"--set {dotted}: '{part}' is not a section, cannot set a key inside it")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ["a.b=3", "c=[1, 2]"] into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SublearnError(f"--set {item!r}: expected key=value, e.g. --set seeds=3")
        try:
            value = _parse(raw) if raw.strip() else ""
        except RefusedYAML as exc:
            raise SublearnError(_yaml_message(exc, f"--set {item}")) from None
        except yaml.YAMLError:  # text that is not YAML is a plain string (`--set name=a: b`)
            value = raw
        set_dotted(tree, key.strip(), value)
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any], discriminated: dict[str, str] | None = None
           ) -> dict[str, Any]:
    """`extra` over `base`, section by section. A section in `discriminated` (name -> tag field, e.g.
    channel -> kind) whose tag changes is replaced whole: the fields of another kind do not carry over."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        tag = (discriminated or {}).get(key)
        if (tag and isinstance(value, dict) and isinstance(old, dict) and tag in value and tag in old
                and value[tag] != old[tag]):
            out[key] = value
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file, bad syntax or a non-mapping."""
    if not path.is_file():
        raise SublearnError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SublearnError(f"{path}: not a UTF-8 text file") from None
    data = yaml_load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SublearnError(f"{path}: expected a YAML mapping of config keys, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming the first offending field; mentions how many more there are."""
    errors = exc.errors()
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = first["msg"]
        if "input" in first and not isinstance(first["input"], dict | list):
            shown = repr(first["input"])
            msg += f" (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: field '{field}': {msg}{more}"


def build_config(model: type[C], data: dict[str, Any], source: str = "config", *, recorded: bool = False) -> C:
    """Validate a dict into `model`, raising a one-line SublearnError. `recorded`: `data` is a config a
    run recorded (its config.json), checked without looking up the model directories it names (they
    may have been on another machine; see `check_model_name`)."""
    try:
        return model.model_validate(data, context={"recorded": True} if recorded else None)
    except ValidationError as exc:
        raise SublearnError(format_validation_error(exc, source)) from None


def _covers(key: list[str], loc: tuple[Any, ...]) -> bool:
    """Whether an override of dotted `key` set the field at pydantic's error `loc` or a section holding
    it, or sits inside the section `loc` names. A discriminated union puts its tag into `loc`
    (channel.numbers.max_numbers for channel.max_numbers): one element may be skipped for it."""
    names = [str(x) for x in loc]
    i = 0
    for part in key:
        if i == len(names):
            return bool(names)  # the error is about a section that holds the key
        if names[i] == part:
            i += 1
        elif 0 < i < len(names) - 1 and names[i + 1] == part:
            i += 2
        else:
            return False
    return True


def _signature(error: Any) -> tuple[Any, ...]:
    value = error.get("input")
    return tuple(error["loc"]), error["type"], error["msg"], None if isinstance(value, dict) else value


def _has_error(model: type[BaseModel], data: dict[str, Any], first: Any) -> bool:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return any(_signature(e) == _signature(first) for e in exc.errors())
    except SublearnError:  # a validator that checks a file named in `data`: another problem than `first`
        return False
    return False


def _blame(model: type[BaseModel], base: dict[str, Any], overrides: list[str] | tuple[str, ...],
           discriminated: dict[str, str], first: Any, default: str) -> str:
    """What to name for the first validation error: `default` (the file) when the file alone has the
    same error, else the `--set KEY=VALUE` flag(s) that caused it: the last one (it wins) that set the
    field, else (an error about a combination, elsewhere) those without which it goes away."""
    if not overrides or _has_error(model, base, first):
        return default
    keys = [(item, item.partition("=")[0].strip().split(".")) for item in overrides]
    named = [item for item, key in keys if _covers(key, first["loc"])][-1:]
    if not named:
        named = [item for item in overrides if not _has_error(
            model, merge(base, parse_overrides([o for o in overrides if o is not item]), discriminated), first)]
    return " ".join(f"--set {item}" for item in named or overrides)


def load_config(model: type[C], path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> C:
    """Load `model` from an optional YAML file plus `key=value` overrides (overrides win). A value that
    fails validation is a one-line SublearnError naming its source: the `--set KEY=VALUE` flag that
    set it (e.g. `--set train.steps=many: field 'train.steps': ...`), else the file."""
    base: dict[str, Any] = read_yaml(path) if path is not None else {}
    discriminated = {name: str(f.discriminator) for name, f in model.model_fields.items() if f.discriminator}
    data = merge(base, parse_overrides(overrides), discriminated)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        default = str(path) if path is not None else "--set"
        source = _blame(model, base, overrides, discriminated, exc.errors()[0], default)
        raise SublearnError(format_validation_error(exc, source)) from None
