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
from sublearn.backends.openai_api.client import make_client
from sublearn.backends.openai_api.jobs import RemoteJob
from sublearn.config import Frozen, format_validation_error
from sublearn.errors import SublearnError
from sublearn.rundir import read_json, write_bytes

log = logging.getLogger(__name__)

STATE = "job.json"
TRAIN = "train.jsonl"

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


class _Job(RemoteJob):
    """One fine-tuning run directory and the API calls that advance it."""

    noun = "fine-tuning job"
    unit = "training rows"
    purpose = "fine-tune"
    file_prefix = "sublearn"
    file_key = "file_id"
    id_key = "job_id"
    input_field = "training_file"
    given_up = ("failed", "cancelled")
    succeeded = "succeeded"

    def __init__(self, out_dir: Path, config: FinetuneConfig, data: bytes, *, base_url: str | None,
                 api_key_env: str | None, timeout: float, max_retries: int):
        api = make_client(base_url, api_key_env, timeout, max_retries)  # the client retries transient failures
        super().__init__(api, out_dir / STATE, data, "fine-tuning")
        self.config = config
        self.state = self._load()

    def _load(self) -> dict[str, Any]:
        want = {"config": self.config.model_dump(mode="json"), "train_sha256": self.sha}
        if not self.state_path.is_file():
            state: dict[str, Any] = {**want, "rows": self.data.count(b"\n"), "file_id": None, "job_id": None,
                                     "status": None, "fine_tuned_model": None, "error": None}
            self.state = state
            self.save()
            return state
        state = read_json(self.state_path)
        if {k: state.get(k) for k in want} != want:
            raise SublearnError(f"{self.state_path}: a fine-tuning job with different data or settings is "
                                "recorded here; use another directory or delete it to start over")
        return state

    def write_file(self) -> None:
        """Write `train.jsonl` (kept for inspection; the upload sends `self.data`, the same bytes)."""
        path = self.dir / TRAIN
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != self.sha:
            write_bytes(path, self.data)

    # --- the API calls particular to fine-tuning ---------------------------------------------

    def _create_remote(self, file_id: str) -> str:
        c = self.config
        kwargs: dict[str, Any] = {
            "model": c.base_model, "training_file": file_id, "seed": c.seed,
            "hyperparameters": {"n_epochs": c.n_epochs, "batch_size": c.batch_size,
                                "learning_rate_multiplier": c.learning_rate_multiplier}}
        if c.suffix:
            kwargs["suffix"] = c.suffix
        job = self.call(lambda: self.api.client.fine_tuning.jobs.create(**kwargs), "create job")
        log.info("created fine-tuning job %s on %s", job.id, file_id)
        return str(job.id)

    def _list_remote(self) -> list[Any]:
        return list(self.call(lambda: self.api.client.fine_tuning.jobs.list(limit=100), "list jobs").data)

    def _retrieve(self, job_id: str) -> Any:
        return self.call(lambda: self.api.client.fine_tuning.jobs.retrieve(job_id), f"poll job {job_id}")

    def finish(self, job: Any) -> str:
        """The fine-tuned model id of a job that ended; a one-line error unless it succeeded."""
        if job.status == "succeeded":
            if not job.fine_tuned_model:
                raise SublearnError(f"fine-tuning job {job.id} succeeded but names no fine_tuned_model")
            self.state["fine_tuned_model"] = job.fine_tuned_model
            self.save()
            log.info("fine-tuning job %s finished: %s", job.id, job.fine_tuned_model)
            return str(job.fine_tuned_model)
        message = getattr(job.error, "message", None) if job.error is not None else None
        self.state["error"] = message
        self.save()
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
            if state.get("status") in _Job.given_up:
                raise _job_error(str(state.get("job_id")), str(state["status"]), state.get("error"), state_path)
    job = _Job(out_dir, config, data, base_url=base_url, api_key_env=api_key_env, timeout=timeout,
               max_retries=max_retries)
    try:
        job.write_file()
        job_id = job.create(job.upload())
        return job.finish(job.poll(job_id, poll_interval=poll_interval, max_poll_interval=max_poll_interval,
                                    max_wait=max_wait, sleep=_sleep, now=_now))  # looked up now: tests replace them
    finally:
        job.api.close()
