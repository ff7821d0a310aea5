"""Fine-tuning through an OpenAI-compatible API, resumable across crashes.

    model_id = run_finetune(rows, run_dir / "job", base_model="gpt-4.1-nano", n_epochs=10, seed=0)

Jobs run for hours and cost money, so every step leaves a record in `out_dir/job.json` (atomic write)
the moment it happens, and a rerun continues from that record instead of paying again:

1. `train.jsonl` is written once (one `{"messages": [...]}` line per row, each row exactly once);
2. it is uploaded once; the file id is stored immediately;
3. the job is created once; the job id is stored immediately;
4. the job is polled with growing intervals until it ends; the `fine_tuned_model` id is stored.

A rerun with a stored job id only polls; with a stored file id it does not upload again. If a crash
fell between a request and storing its answer, the rerun first looks for that answer on the server
(an uploaded file with our content-addressed name and size; a job on our file) before creating
anything. A failed or cancelled job is a one-line error (with the API's message) on every rerun until
`job.json` is deleted: a new job is never started silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from sublearn.backends.base import Chat
from sublearn.backends.openai_api import make_client
from sublearn.config import Frozen, format_validation_error
from sublearn.errors import SublearnError
from sublearn.rundir import read_json, write_json

log = logging.getLogger(__name__)

STATE = "job.json"
TRAIN = "train.jsonl"
TERMINAL = ("succeeded", "failed", "cancelled")

# Replaceable in tests: a simulated crash or a clock that does not wait.
_sleep: Callable[[float], None] = time.sleep
_now: Callable[[], float] = time.monotonic


class FinetuneConfig(Frozen):
    """What defines a fine-tuning job. Stored in `job.json`; a rerun must ask for the same."""

    base_model: str = Field(description="model to fine-tune, e.g. gpt-4.1-nano-2025-04-14")
    n_epochs: int | Literal["auto"] = Field(10, description="epochs (paper: 10; CoT students: 2)")
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    seed: int = 0
    suffix: str | None = Field(None, max_length=64, description="added to the fine-tuned model's name")


def training_jsonl(rows: Sequence[Chat]) -> bytes:
    """The chat-format training file: one `{"messages": [...]}` line per row, in order."""
    if not rows:
        raise SublearnError("fine-tuning: no training rows")
    lines = []
    for i, row in enumerate(rows):
        if not row or row[-1].get("role") != "assistant":
            raise SublearnError(f"fine-tuning row {i}: expected a chat ending with an assistant message")
        lines.append(json.dumps({"messages": [{"role": m["role"], "content": m["content"]} for m in row]},
                                ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


class _Job:
    """One fine-tuning run directory and the API calls that advance it."""

    def __init__(self, out_dir: Path, config: FinetuneConfig, data: bytes, *, base_url: str | None,
                 api_key_env: str | None, timeout: float, max_retries: int):
        self.dir = out_dir
        self.state_path = out_dir / STATE
        self.config = config
        self.data = data
        self.sha = hashlib.sha256(data).hexdigest()
        self.filename = f"sublearn-{self.sha[:16]}.jsonl"  # content-addressed: findable after a crash
        self.api = make_client(base_url, api_key_env, timeout, max_retries)  # the client retries transient failures
        self.client = self.api.client
        self.state = self._load()

    def _load(self) -> dict[str, Any]:
        want = {"config": self.config.model_dump(mode="json"), "train_sha256": self.sha}
        if not self.state_path.is_file():
            state: dict[str, Any] = {**want, "rows": self.data.count(b"\n"), "file_id": None, "job_id": None,
                                     "status": None, "fine_tuned_model": None, "error": None}
            self.dir.mkdir(parents=True, exist_ok=True)
            self._save(state)
            return state
        state = read_json(self.state_path)
        if {k: state.get(k) for k in want} != want:
            raise SublearnError(f"{self.state_path}: a fine-tuning job with different data or settings is "
                                "recorded here; use another directory or delete it to start over")
        return state

    def _save(self, state: dict[str, Any] | None = None) -> None:
        write_json(self.state_path, state if state is not None else self.state)

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        return self.api.call(fn, f"fine-tuning {what}")

    # --- steps ------------------------------------------------------------------------------

    def write_file(self) -> Path:
        path = self.dir / TRAIN
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != self.sha:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(self.data)
            tmp.replace(path)
        return path

    def upload(self, path: Path) -> str:
        if self.state["file_id"]:
            return str(self.state["file_id"])
        found = self._find_upload()
        if found is None:
            # Bytes, not a file handle: a retried request must send the whole file again.
            content = path.read_bytes()
            obj = self._call(lambda: self.client.files.create(file=(self.filename, content), purpose="fine-tune"),
                             "upload")
            found = obj.id
            log.info("uploaded %s (%d rows) as %s", path, self.state["rows"], found)
        else:
            log.info("found our earlier upload %s on the server; not uploading again", found)
        self.state["file_id"] = found
        self._save()
        return str(found)

    def _find_upload(self) -> str | None:
        # Only after a crash between upload and save can the server hold our file without us knowing.
        if not self.state.get("upload_started"):
            self.state["upload_started"] = True
            self._save()
            return None
        page = self._call(lambda: self.client.files.list(purpose="fine-tune"), "list files")
        for f in page.data:
            if f.filename == self.filename and f.bytes == len(self.data) and f.status != "error":
                return str(f.id)
        return None

    def create(self, file_id: str) -> str:
        if self.state["job_id"]:
            return str(self.state["job_id"])
        found = self._find_job(file_id)
        if found is None:
            c = self.config
            kwargs: dict[str, Any] = {
                "model": c.base_model, "training_file": file_id, "seed": c.seed,
                "hyperparameters": {"n_epochs": c.n_epochs, "batch_size": c.batch_size,
                                    "learning_rate_multiplier": c.learning_rate_multiplier}}
            if c.suffix:
                kwargs["suffix"] = c.suffix
            job = self._call(lambda: self.client.fine_tuning.jobs.create(**kwargs), "create job")
            found = job.id
            log.info("created fine-tuning job %s on %s", found, file_id)
        else:
            log.info("found our earlier job %s on the server; not creating another", found)
        self.state["job_id"] = found
        self._save()
        return str(found)

    def _find_job(self, file_id: str) -> str | None:
        if not self.state.get("create_started"):
            self.state["create_started"] = True
            self._save()
            return None
        page = self._call(lambda: self.client.fine_tuning.jobs.list(limit=100), "list jobs")
        for job in page.data:
            # A file id is unique to our upload, so a job on it is ours.
            if job.training_file == file_id and job.status not in ("failed", "cancelled"):
                return str(job.id)
        return None

    def poll(self, job_id: str, *, poll_interval: float, max_poll_interval: float, max_wait: float | None) -> str:
        start = _now()
        interval = poll_interval
        last = self.state.get("status")
        while True:
            job = self._call(lambda: self.client.fine_tuning.jobs.retrieve(job_id), f"poll job {job_id}")
            if job.status != last:
                log.info("fine-tuning job %s: %s", job_id, job.status)
                last = job.status
                self.state["status"] = job.status
                self._save()
            if job.status in TERMINAL:
                return self._finish(job)
            if max_wait is not None and _now() - start > max_wait:
                raise SublearnError(f"fine-tuning job {job_id} is still {job.status} after {max_wait:.0f}s; rerun "
                                    f"to keep waiting (its id is stored in {self.state_path})")
            _sleep(interval)
            interval = min(max_poll_interval, interval * 1.5)

    def _finish(self, job: Any) -> str:
        if job.status == "succeeded":
            if not job.fine_tuned_model:
                raise SublearnError(f"fine-tuning job {job.id} succeeded but names no fine_tuned_model")
            self.state["fine_tuned_model"] = job.fine_tuned_model
            self._save()
            log.info("fine-tuning job %s finished: %s", job.id, job.fine_tuned_model)
            return str(job.fine_tuned_model)
        message = getattr(job.error, "message", None) if job.error is not None else None
        self.state["error"] = message
        self._save()
        raise _job_error(job.id, job.status, message, self.state_path)


def _job_error(job_id: str, status: str, message: str | None, path: Path) -> SublearnError:
    reason = f": {message}" if message else ""
    return SublearnError(f"fine-tuning job {job_id} {status}{reason} (delete {path} to start a new job)")


def run_finetune(rows: Sequence[Chat], out_dir: Path, *, base_model: str, n_epochs: int | Literal["auto"] = 10,
                 learning_rate_multiplier: float | Literal["auto"] = "auto",
                 batch_size: int | Literal["auto"] = "auto", seed: int = 0, suffix: str | None = None,
                 base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 poll_interval: float = 30.0, max_poll_interval: float = 300.0, max_wait: float | None = None,
                 timeout: float = 120.0, max_retries: int = 6) -> str:
    """Fine-tune `base_model` on `rows` (chats ending with the assistant's reply) and return the
    fine-tuned model id. Resumable: rerun with the same arguments after any interruption (see the
    module docstring). `max_wait` (seconds) bounds one call's polling; None waits for the end."""
    try:
        config = FinetuneConfig(base_model=base_model, n_epochs=n_epochs,
                                learning_rate_multiplier=learning_rate_multiplier, batch_size=batch_size, seed=seed,
                                suffix=suffix)
    except ValidationError as exc:
        raise SublearnError(format_validation_error(exc, "fine-tuning")) from None
    out_dir = Path(out_dir)
    data = training_jsonl(rows)
    state_path = out_dir / STATE
    if state_path.is_file():
        # A finished or failed job needs no client (and no key): answer from the record.
        state = read_json(state_path)
        if state.get("train_sha256") == hashlib.sha256(data).hexdigest() and \
                state.get("config") == config.model_dump(mode="json"):
            if state.get("fine_tuned_model"):
                return str(state["fine_tuned_model"])
            if state.get("status") in ("failed", "cancelled"):
                raise _job_error(str(state.get("job_id")), str(state["status"]), state.get("error"), state_path)
    job = _Job(out_dir, config, data, base_url=base_url, api_key_env=api_key_env, timeout=timeout,
               max_retries=max_retries)
    try:
        path = job.write_file()
        file_id = job.upload(path)
        job_id = job.create(file_id)
        return job.poll(job_id, poll_interval=poll_interval, max_poll_interval=max_poll_interval, max_wait=max_wait)
    finally:
        job.api.close()
