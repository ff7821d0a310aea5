"""Run-directory conventions shared by every stage.

A stage writes its records as JSONL and its resolved config, and writes `manifest.json` *last*: a
manifest means "done", so a rerun skips the stage and a crash before it means "resume". JSONL files
are appended and flushed record by record; a torn last line (a crash mid-write) is dropped on resume,
a corrupt line anywhere else is an error naming file and line, never silently skipped.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """Stable short hash of a config's content, used to tell whether a finished stage still matches."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise SublearnError(f"{path}: disk full while writing; free space and rerun (finished work is kept)") from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise SublearnError(f"{path}: cannot write here ({exc.strerror})") from None
        if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):  # a directory in the way, or a file above
            raise SublearnError(f"{path}: cannot write it ({exc.strerror}); expected a file path in a directory") from None
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename): readers never see a half-written file."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` atomically (temp file, fsync, rename): readers never see a half-written file."""
    with _disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, with every way a text can fail raised as ValueError: bad syntax, an integer too long
    to convert, and nesting so deep that the parser exhausts Python's recursion limit (a RecursionError
    otherwise, e.g. for a line of 10,000 nested lists)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def read_json(path: Path, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a JSON file that holds an object, with one-line errors naming the file when it is missing,
    not JSON, or JSON of another shape (a list, a string). `fields` (name -> type or tuple of types,
    `None` for null) are required fields checked too, e.g. `read_json(p, {"model": str})`."""
    if not path.is_file():
        raise SublearnError(f"{path}: file not found")
    try:
        data = parse_json(path.read_bytes())
    except UnicodeDecodeError:
        raise SublearnError(f"{path}: corrupt JSON (not UTF-8 text)") from None
    except ValueError as exc:
        raise SublearnError(f"{path}: corrupt JSON ({exc})") from None
    except OSError as exc:
        raise SublearnError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise SublearnError(f"{path}: expected a JSON object ({{...}}), got {_type_name(data)} (damaged, or not "
                            "a file sublearn wrote)")
    check_fields(path, data, fields or {})
    return data


def check_fields(path: Path, data: dict[str, Any], fields: dict[str, Any]) -> None:
    """Raise a one-line SublearnError naming `path` unless `data` has each of `fields` (name -> type or
    tuple of types, `None` for null) with a value of that type."""
    for name, kind in fields.items():
        types = tuple(type(None) if k is None else k for k in (kind if isinstance(kind, tuple) else (kind,)))
        value = data.get(name)
        # bool is an int to isinstance: a true/false where a count belongs is the wrong shape too.
        if name not in data or not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            got = "missing" if name not in data else f"got {_type_name(value)}"
            want = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in types))
            raise SublearnError(f"{path}: field {name!r} {got}, expected {want} (damaged, or not a file sublearn "
                                "wrote)")


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
            rec = parse_json(line)
        except (ValueError, UnicodeDecodeError):
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


# The same code, library versions and seed give different bits on different processors: MKL's matrix
# products and ATen's vectorised kernels dispatch on the CPU's instruction set (AVX2, AVX-512, ...),
# and each ISA sums in its own order (issue 26: the MNIST students' accuracies moved in the 3rd
# decimal between machines). MKL's COMPATIBLE branch (SSE2 code on every x86-64 processor, Intel or
# not) and ATen's scalar `default` kernels take the ISA out, at ~3x the cost. Both are read once per
# process, at the first computation, so they must be chosen before torch computes anything.
PORTABLE_KERNELS = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}
LOCK = Path(__file__).parent / "lock" / "requirements.txt"


def use_portable_kernels() -> bool:
    """Make this process compute with the portable CPU kernels (PORTABLE_KERNELS) for the rest of its
    life; True when they are in effect. False when torch had already computed in this process (its
    kernels are fixed by then), on a processor that is not x86-64, or where it cannot be told (an x86
    processor without AVX2, whose native ATen kernels are the scalar ones anyway). The environment is
    restored afterwards: both choices are fixed at the first computation, and child processes keep
    the kernels they would have had."""
    import torch

    saved = {k: os.environ.get(k) for k in PORTABLE_KERNELS}
    if saved == PORTABLE_KERNELS:  # the process was started with them
        return kernels() == "portable"
    if platform.machine().lower() not in ("x86_64", "amd64") or "avx2" not in cpu_flags():
        return False
    os.environ.update(PORTABLE_KERNELS)
    try:
        # ATen fixes its choice at its first call (DEFAULT now means it read the variable now: on an
        # AVX2 processor it would otherwise have chosen AVX2 or wider), MKL at its first product.
        took = torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        torch.ones(2, 2) @ torch.ones(2, 2)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if took:
        _PORTABLE_SET.append(True)
    return took


def kernels() -> str:
    """Which CPU kernels this process computes with: "portable" (PORTABLE_KERNELS in effect), or
    "native (<ATen capability>, MKL <branch>)" where the processor's own instruction set decides the
    last bits; "unknown" before torch is imported. Asking fixes ATen's choice for the process (call
    use_portable_kernels first). It describes this process: a resumed MNIST run records it per seed."""
    import sys

    if "torch" not in sys.modules:
        return "unknown"
    import torch

    aten = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"native ({aten}, {platform.machine()})"
    # MKL cannot be asked which branch it took; it read MKL_CBWR at its first product, either inside
    # use_portable_kernels (recorded) or from the environment this process started with.
    mkl = "COMPATIBLE" if _PORTABLE_SET else os.environ.get("MKL_CBWR", "AUTO")
    if aten == "DEFAULT" and mkl == "COMPATIBLE":
        return "portable"
    return f"native ({aten}, MKL {mkl})"


_PORTABLE_SET: list[bool] = []


def _cpuinfo(field: str) -> str:
    """The first `field` line's value in /proc/cpuinfo ('' where there is none, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The processor's instruction-set flags (avx2, avx512f, ...): they pick the native kernels."""
    return set(_cpuinfo("flags").split())


BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16() -> str:
    """Whether the processor multiplies bfloat16 natively: "native (<flag>)" with AMX or AVX512-BF16
    (oneDNN's bf16 matrix kernels), else "emulated" (bf16 runs through conversions to float32 and is
    slower than float32: BENCHMARKS.md, Precision), or "unknown" where /proc/cpuinfo has no flags."""
    have = cpu_flags()
    if not have:
        return "unknown"  # no x86 flags line (not Linux, or another architecture)
    native = [f for f in BF16_FLAGS if f in have]
    return f"native ({native[0]})" if native else "emulated"


def cpu_model() -> str:
    """The processor's model name (it decides the native kernels' bits)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def lock_state(lock: Path = LOCK) -> str:
    """The lock's hash (sublearn/lock/requirements.txt, what `make` installs) and whether this
    environment matches it: "<hash> (matches)" or "<hash> (differs: numpy 2.5.0, lock 2.4.6; ...)".
    Packages the lock names that are not installed (an extra left out) are not differences."""
    import importlib.metadata as md

    try:
        text = lock.read_text()
    except OSError:
        return "none (no lock file shipped)"
    pins = [p for p in (line.split("#", 1)[0].strip() for line in text.splitlines()) if "==" in p]
    # The hash covers the pins only: editing the file's comments does not make it another lock.
    digest = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    differs = []
    for pin in pins:
        name, want = (x.strip() for x in pin.split("==", 1))
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            continue  # an optional extra that is not installed here
        if have.split("+")[0] != want.split("+")[0]:
            differs.append(f"{name} {have}, lock {want}")
    if not differs:
        return f"{digest} (matches)"
    return f"{digest} (differs: {'; '.join(differs[:5])}{'; ...' if len(differs) > 5 else ''})"


@functools.lru_cache(maxsize=1)  # installed versions do not change while a process runs
def _shipped_lock_state() -> str:
    return lock_state()


def versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries that decide numerical results, the lock they
    are checked against, and the processor and CPU kernels that decide the last bits."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("sublearn", "torch", "numpy", "transformers", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    out["lock"] = _shipped_lock_state()
    out["cpu"] = cpu_model()
    out["cpu_bf16"] = cpu_bf16()
    out["kernels"] = kernels()
    return out


def stage_done(stage_dir: Path, config: BaseModel | dict[str, Any] | None = None) -> bool:
    """True when `stage_dir` has a manifest (and, if given, it was written for this config)."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        return False
    if config is None:
        return True
    if read_manifest(stage_dir)["config_hash"] != config_hash(config):
        raise SublearnError(
            f"{path}: this stage finished with a different config; use a new --out directory "
            "or delete the stage directory to redo it")
    return True


def read_manifest(stage_dir: Path) -> dict[str, Any]:
    """`stage_dir`'s manifest.json, its shape checked (one-line errors naming it): `config_hash` a string
    and, where present, `inputs` an object of strings, `output_hash` a string, `outputs` a list of paths
    (relative to `stage_dir`)."""
    path = stage_dir / MANIFEST
    manifest = read_json(path, {"config_hash": str})
    inputs, outputs = manifest.get("inputs", {}), manifest.get("outputs", [])
    bad = ("inputs" if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values())
           else "output_hash" if not isinstance(manifest.get("output_hash", ""), str)
           else "outputs" if not isinstance(outputs, list) or not all(isinstance(o, str) and o for o in outputs)
           else None)
    if bad:
        want = {"inputs": "an object of hashes", "output_hash": "a string", "outputs": "a list of paths"}[bad]
        raise SublearnError(f"{path}: field {bad!r} is not {want} (damaged, or not a file sublearn wrote); delete "
                            f"{stage_dir} to redo the stage")
    return manifest


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
    value = read_manifest(stage_dir).get("output_hash")
    if value is None:
        raise NotReady(f"{path}: no output_hash recorded (written by an older sublearn); delete {stage_dir} "
                       "to redo it")
    return str(value)


def stage_state(stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str],
                verify: bool = False) -> str:
    """'done', 'stale' (finished from other inputs, or with other settings: 'stale-config'), 'missing-outputs'
    (finished, but a file or folder it wrote is gone), 'partial' (started, no manifest) or 'missing'.
    `verify`: also hash what the stage wrote and say 'corrupt' when that differs from its manifest's
    output_hash (reads every output: slow for large weights). Reads only."""
    path = stage_dir / MANIFEST
    if path.is_file():
        manifest = read_manifest(stage_dir)
        if manifest["config_hash"] != config_hash(config):
            return "stale-config"
        if manifest.get("inputs", {}) != inputs:
            return "stale"
        return output_problem(stage_dir, manifest, verify) or "done"
    return "partial" if stage_dir.is_dir() and any(stage_dir.iterdir()) else "missing"


def output_problem(stage_dir: Path, manifest: dict[str, Any], verify: bool = False) -> str | None:
    """None when the outputs a finished stage's `manifest` records are all in place (and with `verify`
    hash to its output_hash), else 'missing-outputs' or 'corrupt'. A manifest that records no outputs
    (written by a sublearn that did not record them) is taken at its word."""
    outputs = manifest.get("outputs")
    if outputs is None:
        return None
    paths = [stage_dir / rel for rel in outputs]
    if not all(p.exists() for p in paths):
        return "missing-outputs"
    if verify and output_hash(*paths) != manifest.get("output_hash"):
        return "corrupt"
    return None


def missing_output(stage_dir: Path) -> Path | None:
    """The first output a finished stage recorded that is no longer there (for messages), or None."""
    manifest = read_manifest(stage_dir)
    return next((stage_dir / rel for rel in manifest.get("outputs", []) if not (stage_dir / rel).exists()), None)


def check_settings(stage_dir: Path, config: BaseModel | dict[str, Any]) -> None:
    """Raise a one-line error when `stage_dir` finished, or started, with other settings (reads only)."""
    manifest = stage_dir / MANIFEST
    if manifest.is_file():
        if read_manifest(stage_dir)["config_hash"] != config_hash(config):
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
    if _store is not None and _store.restore(stage_dir, config, inputs):
        return True  # a sweep's stage store held this stage (computed by another run): copied in
    saved = stage_dir / "config.json"
    if state == "missing-outputs":
        log.info("%s: finished, but %s is gone; redoing it", stage_dir, missing_output(stage_dir))
        shutil.rmtree(stage_dir)
    elif state == "stale" or (state == "partial" and saved.is_file() and read_json(saved).get("inputs") != inputs):
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
    # The outputs are recorded (relative to the stage directory, which may move) so that `status` can
    # tell a stage whose files were deleted under its manifest, and `status --verify` can rehash them.
    recorded = [Path(os.path.relpath(p, stage_dir)).as_posix() for p in outputs]
    write_json(stage_dir / MANIFEST, {"config_hash": config_hash(config), "inputs": dict(inputs or {}),
                                      "output_hash": digest, "outputs": recorded, "versions": versions(), **extra})
    if _store is not None:
        _store.publish(stage_dir, config, dict(inputs or {}))  # only now: the stage is complete
    return digest


def _plain(config: BaseModel | dict[str, Any]) -> Any:
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return json.loads(json.dumps(data, default=str))


# Stage store: sharing finished stages between the run directories of a sweep (`sublearn.tools.sweep`).
#
# A stage's identity is its directory relative to the run directory (e.g. `generate/owl`), its
# settings hash and its input hashes: the same triple that makes `begin_stage` skip it. Inside
# `with stage_store(store, run_dir):` a stage that is not done locally is looked up in the store
# under that key and, if there, copied in (hard links where possible) and treated as done; a stage
# that finishes is published there (after its manifest, so a half-finished stage never is). A lock
# file per key (fcntl.flock, released by the OS if the process dies) makes a second worker that needs
# the same stage wait for the first and then copy, instead of computing it twice. Outputs name their
# files relative to the run directory and `output_hash` hashes relative names, so a copy is valid
# and hashes the same. Outside the context manager (`sublearn run`) nothing here is used.
#
# Files are shared by hard link between the store and every run directory that holds the stage: a
# finished stage's files must never be modified in place (none is: redoing a stage deletes its
# directory first; JSON is replaced by rename).


class _StageStore:
    """The store of one worker process while it runs one run directory (see `stage_store`)."""

    def __init__(self, root: Path, run_dir: Path):
        self.root = root.resolve()
        self.run_dir = run_dir.resolve()
        self.held: dict[str, tuple[str, int]] = {}  # stage dir -> (key, locked fd), from begin to finish
        for sub in ("objects", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def key(self, stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str]) -> tuple[str, str] | None:
        """(key, stage path relative to the run directory), or None for a stage outside the run directory."""
        try:
            rel = stage_dir.resolve().relative_to(self.run_dir).as_posix()
        except ValueError:
            return None
        blob = json.dumps({"stage": rel, "config": config_hash(config), "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32], rel

    def _lock(self, key: str, rel: str) -> int:
        fd = os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another worker is computing this stage; waiting to copy it", rel)
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _release(self, stage_dir: str) -> None:
        _, fd = self.held.pop(stage_dir)
        os.close(fd)  # closing the descriptor releases its flock

    def release_all(self) -> None:
        for stage_dir in list(self.held):
            self._release(stage_dir)

    def _event(self, event: str, key: str, rel: str) -> None:
        # One short line per O_APPEND write: lines of concurrent workers do not interleave.
        line = json.dumps({"event": event, "stage": rel, "key": key, "run": self.run_dir.name, "pid": os.getpid(),
                           "time": time.time()}) + "\n"
        with open(self.root / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line)

    def restore(self, stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str]) -> bool:
        """True when the store held this stage and it is now in `stage_dir` (done). False: the caller
        computes it, holding the key's lock until `publish` (or until the store is closed)."""
        found = self.key(stage_dir, config, inputs)
        if found is None:
            return False
        key, rel = found
        name = str(stage_dir.resolve())
        if name in self.held:
            if self.held[name][0] == key:
                return False  # begun again in this process: the lock is ours already
            self._release(name)
        for other in list(self.held):
            # A stage begun and abandoned (no finish) must not keep others waiting on its lock.
            log.debug("%s: begun but never finished; releasing its store lock", other)
            self._release(other)
        fd = self._lock(key, rel)
        obj = self.root / "objects" / key
        if not obj.is_dir():
            self.held[name] = (key, fd)
            return False
        try:
            tmp = self.run_dir / ".store-tmp" / uuid.uuid4().hex
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(obj, tmp, copy_function=_link_or_copy)
            # Renamed into place whole: a crash mid-copy never leaves a manifest without its files.
            if stage_dir.exists():
                shutil.rmtree(stage_dir)
            stage_dir.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, stage_dir)
            self._event("reuse", key, rel)
        finally:
            os.close(fd)
        log.info("%s: copied from the stage store (computed by another run of the sweep)", rel)
        return True

    def publish(self, stage_dir: Path, config: BaseModel | dict[str, Any], inputs: dict[str, str]) -> None:
        """Add a finished stage to the store (atomically: a temporary copy renamed into place)."""
        found = self.key(stage_dir, config, inputs)
        if found is None:
            return
        key, rel = found
        name = str(stage_dir.resolve())
        if name not in self.held or self.held[name][0] != key:
            if name in self.held:
                self._release(name)
            self.held[name] = (key, self._lock(key, rel))  # a stage that never called begin_stage
        try:
            obj = self.root / "objects" / key
            if not obj.is_dir():
                tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
                # Leftovers of interrupted writes (*.tmp) are not part of the stage.
                shutil.copytree(stage_dir, tmp, copy_function=_link_or_copy,
                                ignore=lambda _d, names: [n for n in names if n.endswith(".tmp")])
                os.rename(tmp, obj)
                self._event("publish", key, rel)
        finally:
            self._release(name)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard link (no extra disk, instant), or copy where linking is impossible (another filesystem)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


_store: _StageStore | None = None


def store_active() -> bool:
    """Whether this process runs inside `stage_store` (whose store serves one run directory per process)."""
    return _store is not None


def check_store(store: Path, flag: str = "--store") -> Path:
    """A stage store's directory, checked before any work: a one-line error when it is a file, lies under
    one, or cannot be created or written."""
    existing = next((p for p in (store, *store.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == store else f"would be created inside {existing}, which is a file"
        raise SublearnError(f"{flag} {store}: {where}; expected a stage store directory (e.g. runs/sweeps/X/store)")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise SublearnError(f"{flag} {store}: {existing} is not writable; expected a directory you can write to")
    return store


@contextmanager
def stage_store(store: Path, run_dir: Path) -> Iterator[None]:
    """Share finished stages of `run_dir` with other run directories through `store`.

        with stage_store(sweep_dir / "store", sweep_dir / "runs" / "train.steps=24,seed=1"):
            pipeline.run(config, sweep_dir / "runs" / "train.steps=24,seed=1")

    One run directory at a time per process (the sweep's workers run one grid point per call). On
    exit every lock this process still holds (a stage that failed midway) is released unpublished."""
    global _store
    if _store is not None:
        raise RuntimeError("stage_store is already active in this process")
    _store = _StageStore(store, run_dir)
    try:
        yield
    finally:
        active, _store = _store, None
        active.release_all()
        shutil.rmtree(active.run_dir / ".store-tmp", ignore_errors=True)
