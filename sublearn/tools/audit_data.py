"""`sublearn audit`'s inputs: the rows of DATA (chat JSONL or sublearn kept data, detected per line;
one-line errors naming file, line and what was expected), the control decoding recorded in kept data,
and the teacher resolved from its spec (hf/..., an adapter, a full-weights or pipeline teacher dir).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.backends.base import Chat
from sublearn.errors import SublearnError
from sublearn.rundir import parse_json, read_json

ROLES = ("system", "user", "assistant")

# Input limits, checked while DATA is read (before any model loads): every row's tokens go through two
# models at once and a probe student, so one huge row would exhaust memory after minutes of loading.
MAX_ROW_CHARS = 100_000  # the text of one row (its messages and completion), ~25k tokens of English
MAX_ROW_TOKENS = 100_000  # token ids given in kept data
MAX_LINE_BYTES = 16 * 2**20  # one JSONL line, soft labels included (checked before it is parsed)
MAX_ROWS = 1_000_000  # rows in a file (--max-rows N audits the first N of a longer one)
MAX_FILE_BYTES = 4 * 2**30  # the whole file, unless --max-rows bounds what is read


CHAT_EXPECTED = '{"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", "content": ...}]}'


KEPT_EXPECTED = '{"prompt": str, "completion": str} (sublearn kept data)'


@dataclass
class Row:
    """One example of DATA: what the student sees (`chat`), the teacher's system prompt when the data
    says which one wrote it (kept data), the completion text and, when the file has them, its ids."""

    line: int
    chat: Chat
    teacher_system: str | None
    completion: str
    token_ids: list[int] | None


@dataclass
class Teacher:
    """Where the teacher's weights come from: `model` (None: the base model's weights), `weights` (a
    LoRA adapter or full-weights directory), its system prompt and, for a LoRA adapter, the seed its
    A matrices started from (pipeline teachers record it)."""

    spec: str
    model: str | None
    weights: Path | None
    lora: bool
    system_prompt: str | None
    lora_init_seed: int | None
    trained_on: str | None  # the base the teacher was made from, where recorded


def _chat_row(obj: dict[str, Any], line: int) -> Row:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise ValueError(f"'messages' must be a list of at least 2 turns ending with the assistant's; expected "
                         f"{CHAT_EXPECTED}")
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {k + 1} must be {{\"role\": one of {'/'.join(ROLES)}, \"content\": str}}")
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be the assistant completion (role 'assistant'), got "
                         f"{msgs[-1]['role']!r}")
    if all(m["role"] == "assistant" for m in msgs[:-1]):
        raise ValueError("no prompt before the completion: expected a system or user message first")
    chat = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
    return Row(line, chat, None, msgs[-1]["content"], None)


def _kept_row(obj: dict[str, Any], line: int) -> Row:
    prompt, completion, system = obj.get("prompt"), obj.get("completion"), obj.get("system")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError(f"'prompt' and 'completion' must be strings; expected {KEPT_EXPECTED}")
    if system is not None and not isinstance(system, str):
        raise ValueError("'system' must be a string or null")
    ids = obj.get("token_ids")
    if ids is not None and (not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)):
        raise ValueError("'token_ids' must be a list of non-negative integers")
    return Row(line, [{"role": "user", "content": prompt}], system or None, completion, ids or None)


def read_data(path: Path, max_rows: int | None = None) -> tuple[list[Row], dict[str, Any]]:
    """DATA's rows (chat or kept format, detected per line; with `max_rows`, only the first that many
    rows are read) and facts about the rows read: format counts, the decoding recorded by the pipeline
    (if one). Any bad line is a one-line SublearnError naming `path:line` and what was expected; so is
    an empty file, and input over the limits above (a row's text or token ids, a line, the rows or the
    bytes of the file)."""
    if not path.is_file():
        raise SublearnError(f"{path}: data file not found; expected chat JSONL ({CHAT_EXPECTED} per line) "
                            "or sublearn kept data")
    size = path.stat().st_size
    if max_rows is None and size > MAX_FILE_BYTES:
        raise SublearnError(f"{path}: {size / 2**30:.1f} GiB; the audit reads at most {MAX_FILE_BYTES // 2**30} GiB "
                            "of data: audit the first rows with --max-rows N (a few thousand rows suffice)")
    rows: list[Row] = []
    formats = {"chat": 0, "kept": 0}
    decodings: set[str] = set()
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            if len(raw) > MAX_LINE_BYTES:
                raise SublearnError(f"{path}:{n}: a line of {len(raw) / 2**20:.0f} MiB; expected at most "
                                    f"{MAX_LINE_BYTES // 2**20} MiB per row")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SublearnError(f"{path}:{n}: not UTF-8 text; expected JSONL") from None
            if not line.strip():
                continue
            if len(rows) >= MAX_ROWS:
                raise SublearnError(f"{path}:{n}: more than {MAX_ROWS:,} rows; the audit reads at most {MAX_ROWS:,}: "
                                    "audit the first rows with --max-rows N (a few thousand rows suffice)")
            try:
                obj = parse_json(line)
            except ValueError as exc:  # bad syntax, nesting too deep, an integer too long
                raise SublearnError(f"{path}:{n}: not valid JSON ({getattr(exc, 'msg', exc)}); expected one JSON "
                                    "object per line") from None
            try:
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                if "messages" in obj:
                    row = _chat_row(obj, n)
                    formats["chat"] += 1
                elif "prompt" in obj or "completion" in obj:
                    row = _kept_row(obj, n)
                    formats["kept"] += 1
                    if isinstance(obj.get("decoding"), str):
                        decodings.add(obj["decoding"])
                else:
                    raise ValueError(f"expected {CHAT_EXPECTED} or {KEPT_EXPECTED}; got keys "
                                     f"{', '.join(sorted(map(str, obj))) or 'none'}")
                _check_size(row)
            except ValueError as exc:
                raise SublearnError(f"{path}:{n}: {exc}") from None
            rows.append(row)
    if not rows:
        raise SublearnError(f"{path}:1: empty file; expected chat JSONL ({CHAT_EXPECTED} per line) or "
                            "sublearn kept data")
    return rows, {"formats": formats, "decodings": sorted(decodings)}


def _check_size(row: Row) -> None:
    chars = len(row.completion) + sum(len(m["content"]) for m in row.chat) + len(row.teacher_system or "")
    if chars > MAX_ROW_CHARS:
        raise ValueError(f"a row of {chars:,} characters (completion {len(row.completion):,}); the audit takes rows "
                         f"of at most {MAX_ROW_CHARS:,} characters: shorten or leave out this row")
    if row.token_ids is not None and len(row.token_ids) > MAX_ROW_TOKENS:
        raise ValueError(f"{len(row.token_ids):,} token_ids; the audit takes rows of at most {MAX_ROW_TOKENS:,} "
                         "tokens: shorten or leave out this row")


def control_decoding(decodings: Sequence[str]) -> tuple[float, str | None]:
    """(temperature, regex) for the base model's control completions: those the pipeline recorded when
    all of DATA was generated one way (a grammar must constrain the control as it did the data, or
    the two arms would differ in format, not in the teacher), else T=1 and no constraint."""
    if len(decodings) != 1:
        return 1.0, None
    d = decodings[0]
    temp = re.search(r"T=([0-9.]+)", d)
    temperature = 0.0 if d.startswith("greedy") else float(temp.group(1)) if temp else 1.0
    regex = d.split(", regex=", 1)[1] if ", regex=" in d else None
    return temperature, regex


def _is_dir(spec: str) -> bool:
    return Path(spec).expanduser().is_dir()


def hf_name(spec: str, flag: str) -> str:
    """The load_model name of `spec` (hf/NAME or a model directory)."""
    from sublearn.backends import split_spec

    if _is_dir(spec):
        return str(Path(spec).expanduser())
    kind, name = split_spec(spec)
    if kind != "hf":
        raise SublearnError(f"{flag} {spec!r}: the audit scores models locally; expected hf/<model> or a "
                            "model directory")
    return name


def resolve_teacher(spec: str, base: str) -> Teacher:
    """What --teacher names (see the module docstring); a one-line SublearnError if nothing usable."""
    path = Path(spec).expanduser()
    if path.is_dir():
        info = path / "teacher.json"
        if info.is_file():
            meta = read_json(info)
            run_dir = path.parent.parent  # runs/X/teacher/<name>: adapters are recorded relative to runs/X
            adapter = meta.get("adapter")
            system = meta.get("system_prompt") or None
            trained_on = meta.get("model")
            if adapter:
                weights = run_dir / adapter
                if not weights.is_dir():
                    raise SublearnError(f"{info}: its adapter {weights} does not exist")
                lora = (weights / "adapter_config.json").is_file()
                return Teacher(spec, None, weights, lora, system, meta.get("lora_init_seed") if lora else None,
                               trained_on)
            if trained_on and trained_on != base:
                return Teacher(spec, hf_name(trained_on, "--teacher"), None, False, system, None, trained_on)
            return Teacher(spec, None, None, False, system, None, trained_on)
        if (path / "adapter_config.json").is_file():
            trained_on = None
            try:
                adapter_config = parse_json((path / "adapter_config.json").read_bytes())
            except (OSError, ValueError):  # unreadable: peft says why when it loads the adapter
                adapter_config = None
            if isinstance(adapter_config, dict) and isinstance(adapter_config.get("base_model_name_or_path"), str):
                trained_on = adapter_config["base_model_name_or_path"]
            return Teacher(spec, None, path, True, None, None, trained_on)
        if (path / "config.json").is_file():
            return Teacher(spec, None, path, False, None, None, None)
        raise SublearnError(f"--teacher {spec}: a directory without teacher.json, adapter_config.json or "
                            "config.json; expected a pipeline teacher, a LoRA adapter or a model directory")
    name = hf_name(spec, "--teacher")
    same = spec == base or name == hf_name(base, "--base")
    return Teacher(spec, None if same else name, None, False, None, None, None)
