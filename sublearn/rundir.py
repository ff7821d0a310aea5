"""Run-directory conventions shared by every stage.

A stage writes its records as JSONL and its resolved config, and writes `manifest.json` *last*: a
manifest means "done", so a rerun skips the stage and a crash before it means "resume". JSONL files
are appended and flushed record by record; a torn last line (a crash mid-write) is dropped on resume,
a corrupt line anywhere else is an error naming file and line, never silently skipped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sublearn.config import config_hash
from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise SublearnError(f"{path}: disk full while writing; free space and rerun (finished work is kept)") from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise SublearnError(f"{path}: cannot write here ({exc.strerror})") from None
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename): readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _disk_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(obj, fh, indent=2, sort_keys=False, default=str)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_json(path: Path) -> Any:
    """Read a JSON file with a one-line error for a missing or corrupt file."""
    if not path.is_file():
        raise SublearnError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SublearnError(f"{path}: corrupt JSON ({exc})") from None


def read_jsonl(path: Path, *, repair_tail: bool = False) -> list[dict[str, Any]]:
    """Read JSONL records. A torn final line (no trailing newline) is dropped when `repair_tail`
    (and truncated from the file so appends continue cleanly); any other bad line is an error."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    records: list[dict[str, Any]] = []
    lines = raw.split(b"\n")
    torn = lines[-1] != b""
    body = lines[:-1]
    for i, line in enumerate(body, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SublearnError(f"{path}:{i}: corrupt JSONL line (expected one JSON object); "
                                "fix or delete that line and rerun") from None
        if not isinstance(rec, dict):
            raise SublearnError(f"{path}:{i}: expected a JSON object per line, got {type(rec).__name__}")
        records.append(rec)
    if torn:
        if not repair_tail:
            raise SublearnError(f"{path}:{len(lines)}: last line is incomplete (interrupted write)")
        log.warning("%s: dropping an incomplete last line left by an interrupted write", path)
        with _disk_errors(path), open(path, "r+b") as fh:
            fh.truncate(len(raw) - len(lines[-1]))
    return records


class JsonlAppender:
    """Append records one per line, flushed as they go, so a crash loses at most the last line."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with _disk_errors(path):
            self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with _disk_errors(self.path):
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        with _disk_errors(self.path):
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries that decide numerical results."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("sublearn", "torch", "numpy", "transformers", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def stage_done(stage_dir: Path, config: BaseModel | dict[str, Any] | None = None) -> bool:
    """True when `stage_dir` has a manifest (and, if given, it was written for this config)."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        return False
    if config is None:
        return True
    manifest = read_json(path)
    if manifest.get("config_hash") != config_hash(config):
        raise SublearnError(
            f"{path}: this stage finished with a different config; use a new --out directory "
            "or delete the stage directory to redo it")
    return True


def check_config_matches(stage_dir: Path, config: BaseModel | dict[str, Any]) -> None:
    """Refuse to resume a partly-written stage whose saved config differs from `config`."""
    path = stage_dir / "config.json"
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    data = json.loads(json.dumps(data, default=str))
    if path.is_file():
        saved = read_json(path)
        if saved != data:
            raise SublearnError(
                f"{path}: an unfinished run here used a different config; use a new --out directory "
                "or delete it to start over")
    else:
        write_json(path, data)


def write_manifest(stage_dir: Path, config: BaseModel | dict[str, Any], **extra: Any) -> None:
    """Mark a stage finished. Call last: everything the stage promises must already be on disk."""
    write_json(stage_dir / MANIFEST, {"config_hash": config_hash(config), "versions": versions(), **extra})


# Content addressing. A stage's key has two parts: `config`, the settings the user chose for it, and
# `inputs`, the output hashes of the upstream stages it read. Its manifest records both and the hash
# of what it wrote (`output_hash`), which downstream keys include in turn. So a stage redone with a
# different result makes every stage downstream of it stale (redone on the next run, nothing else),
# while an identical redo changes no hash and reuses everything downstream.


def output_hash(*paths: Path) -> str:
    """SHA-256 (16 hex digits) of the files at `paths` (directories walked in sorted order, relative
    names included; temp files and checkpoints skipped): the identity of what a stage produced."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(q for q in root.rglob("*") if q.is_file()) if root.is_dir() else [root]
        for f in files:
            if f.name.startswith(".") or f.suffix in (".tmp", ".pt"):
                continue
            h.update(str(f.relative_to(root.parent)).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()[:16]


class NotReady(SublearnError):
    """An upstream stage has not finished, so this stage's key cannot be computed yet."""


def upstream_hash(stage_dir: Path) -> str:
    """The output hash an upstream stage recorded in its manifest."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        raise NotReady(f"{stage_dir}: not finished; run its stage first")
    value = read_json(path).get("output_hash")
    if value is None:
        raise NotReady(f"{path}: no output_hash recorded (written by an older sublearn); delete {stage_dir} "
                       "to redo it")
    return str(value)


def stage_state(stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str]) -> str:
    """'done', 'stale' (finished from other inputs, or with other settings: 'stale-config'), 'partial'
    (started, no manifest) or 'missing'. Reads only."""
    path = stage_dir / MANIFEST
    if path.is_file():
        manifest = read_json(path)
        if manifest.get("config_hash") != config_hash(config):
            return "stale-config"
        return "done" if manifest.get("inputs", {}) == inputs else "stale"
    return "partial" if stage_dir.is_dir() and any(stage_dir.iterdir()) else "missing"


def check_settings(stage_dir: Path, config: BaseModel | dict[str, Any]) -> None:
    """Raise a one-line error when `stage_dir` finished, or started, with other settings (reads only)."""
    manifest = stage_dir / MANIFEST
    if manifest.is_file():
        if read_json(manifest).get("config_hash") != config_hash(config):
            raise SublearnError(f"{manifest}: this stage finished with a different config; use a new --out "
                                "directory or delete the stage directory to redo it")
        return
    saved = stage_dir / "config.json"
    if saved.is_file() and read_json(saved).get("config") != _plain(config):
        raise SublearnError(f"{saved}: an unfinished run here used a different config; use a new --out "
                            "directory or delete it to start over")


def begin_stage(stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str] | None = None) -> bool:
    """True when the stage is done for this config and these inputs (skip it). Otherwise prepare
    `stage_dir` for running and return False: work left by a run from other inputs (finished or not)
    is deleted, so the stage redoes it; work started from the same key is kept, to resume. A stage
    finished or started with other *settings* is an error, not silently overwritten."""
    inputs = dict(inputs or {})
    check_settings(stage_dir, config)
    state = stage_state(stage_dir, config, inputs)
    if state == "done":
        return True
    saved = stage_dir / "config.json"
    if state == "stale" or (state == "partial" and saved.is_file() and read_json(saved).get("inputs") != inputs):
        log.info("%s: its inputs changed upstream; redoing it", stage_dir)
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not saved.is_file():
        write_json(saved, {"config": _plain(config), "inputs": inputs})
    return False


def finish_stage(stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str] | None,
                 outputs: list[Path], **extra: Any) -> str:
    """Write the manifest (last): settings hash, input hashes and the hash of `outputs`. Returns it."""
    digest = output_hash(*outputs)
    write_json(stage_dir / MANIFEST, {"config_hash": config_hash(config), "inputs": dict(inputs or {}),
                                      "output_hash": digest, "versions": versions(), **extra})
    return digest


def _plain(config: BaseModel | dict[str, Any]) -> Any:
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return json.loads(json.dumps(data, default=str))
