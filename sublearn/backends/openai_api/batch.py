"""The OpenAI Batch API for large generation jobs: the same chat requests at half the price, resumable.

    failed = run_batch(api, {custom_id: body, ...}, job_dir, what="openai/gpt-4.1-nano", keep=store)

A batch takes minutes to hours (at most its 24 h completion window), so, like a fine-tuning job
(`sublearn.backends.openai_api.finetune`), every step leaves a record in `job_dir/batch.json` (atomic
write) the moment it happens, and a rerun continues from that record instead of paying again:

1. `input.jsonl` is written once: one `{"custom_id", "method": "POST", "url": "/v1/chat/completions",
   "body"}` line per request, the body exactly what the synchronous path sends;
2. it is uploaded once (purpose "batch"); the file id is stored immediately;
3. the batch is created once (completion window 24h); the batch id is stored immediately;
4. the batch is polled with growing intervals until it ends; its output file (and error file) are
   downloaded into `job_dir` and every answer is handed to `keep` (the caller's cache).

A rerun with a stored batch id only polls (or, once downloaded, only reads `output.jsonl`). If a crash
fell between a request and storing its answer, the rerun first looks for that answer on the server
(an uploaded file with our content-addressed name and size; a batch on our file). A failed batch is
a one-line error with the API's message; an expired or cancelled one first hands the answers it did
finish to `keep` (they were paid for), then is a one-line error. Either stays an error on every rerun
until `batch.json` is deleted: a new batch is never submitted silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sublearn.backends.openai_api.client import ApiClient
from sublearn.backends.openai_api.jobs import RemoteJob
from sublearn.errors import SublearnError
from sublearn.rundir import read_json, write_bytes

log = logging.getLogger(__name__)

STATE = "batch.json"
INPUT = "input.jsonl"
OUTPUT = "output.jsonl"
ERRORS = "errors.jsonl"
ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
MAX_REQUESTS = 50_000
"""OpenAI's limit on the requests of one batch."""
ENDED = ("failed", "expired", "cancelled")

# Replaceable in tests: a simulated crash or a clock that does not wait.
_sleep: Callable[[float], None] = time.sleep
_now: Callable[[], float] = time.monotonic


def batch_jsonl(requests: Mapping[str, Mapping[str, Any]]) -> bytes:
    """The batch input file: one request line per custom id, in order."""
    return "".join(json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body},
                              ensure_ascii=False, sort_keys=True) + "\n"
                   for cid, body in requests.items()).encode("utf-8")


def _custom_ids(data: bytes) -> set[str]:
    return {json.loads(line)["custom_id"] for line in data.splitlines() if line.strip()}


class _Batch(RemoteJob):
    """One batch directory and the API calls that advance it."""

    noun = "batch"
    unit = "batch requests"
    purpose = "batch"
    file_prefix = "sublearn-batch"
    file_key = "input_file_id"
    id_key = "batch_id"
    input_field = "input_file_id"
    given_up = ENDED
    succeeded = "completed"

    def __init__(self, api: ApiClient, job_dir: Path, data: bytes, what: str):
        super().__init__(api, job_dir / STATE, data, f"{what} batch")

    def load(self, wanted: set[str]) -> None:
        """Adopt the recorded batch when it covers every wanted request, or start a record."""
        if self.state_path.is_file():
            state = read_json(self.state_path)
            if state.get("input_sha256") != self.sha:
                recorded_path = self.dir / INPUT
                recorded = recorded_path.read_bytes() if recorded_path.is_file() else None
                if not (recorded is not None and hashlib.sha256(recorded).hexdigest() == state.get("input_sha256")
                        and wanted <= _custom_ids(recorded)):
                    raise SublearnError(f"{self.state_path}: a batch for other requests is recorded here; delete "
                                        f"{self.dir} to submit these")
                # Answers cached since (a crash while storing them) shrank what we want: same batch.
                self.data = recorded
                self.sha = state["input_sha256"]
            self.state = state
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_bytes(self.dir / INPUT, self.data)
        self.state = {"input_sha256": self.sha, "requests": self.data.count(b"\n"), "endpoint": ENDPOINT,
                      "input_file_id": None, "batch_id": None, "status": None, "output_file_id": None,
                      "error_file_id": None, "downloaded": False, "error": None}
        self.save()

    # --- the API calls particular to batches ------------------------------------------------

    def _create_remote(self, file_id: str) -> str:
        batch = self.call(lambda: self.api.client.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window=WINDOW,
            metadata={"client": "sublearn"}), "create")
        log.info("created batch %s on %s (%d requests)", batch.id, file_id, self.state["requests"])
        return str(batch.id)

    def _list_remote(self) -> list[Any]:
        return list(self.call(lambda: self.api.client.batches.list(limit=100), "list batches").data)

    def _retrieve(self, batch_id: str) -> Any:
        return self.call(lambda: self.api.client.batches.retrieve(batch_id), f"poll {batch_id}")

    def _progress(self, batch: Any) -> str:
        counts = batch.request_counts
        return f" ({counts.completed + counts.failed}/{counts.total} requests done)" if counts else ""

    def download(self, batch: Any) -> None:
        """Fetch the output and error files (once) into the batch directory."""
        for field, name in (("output_file_id", OUTPUT), ("error_file_id", ERRORS)):
            file_id = getattr(batch, field, None)
            self.state[field] = file_id
            if file_id:
                content = self.call(functools.partial(self.api.client.files.content, file_id),
                                     f"download {file_id}")
                write_bytes(self.dir / name, content.content)
        self.state["downloaded"] = True
        self.save()

    def results(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """(custom id -> chat completion body, custom id -> error message) from the downloaded files."""
        answers: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for name in (OUTPUT, ERRORS):
            path = self.dir / name
            if not path.is_file():
                continue
            for n, line in enumerate(path.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    cid = str(row["custom_id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SublearnError(f"{path}:{n}: not a batch result line") from None
                response = row.get("response") or {}
                if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                    answers[cid] = response["body"]
                else:
                    error = row.get("error") or (response.get("body") or {}).get("error") or {}
                    status = response.get("status_code")
                    errors[cid] = f"HTTP {status}: {error.get('message')}" if status else str(error.get("message"))
        return answers, errors


def _ended_error(state: dict[str, Any], path: Path) -> SublearnError:
    reason = f": {state['error']}" if state.get("error") else ""
    return SublearnError(f"batch {state.get('batch_id')} {state.get('status')}{reason} (delete {path} "
                         "to submit a new batch; answers it finished are kept in the cache)")


def run_batch(api: ApiClient, requests: Mapping[str, Mapping[str, Any]], job_dir: Path, *, what: str,
              keep: Callable[[dict[str, dict[str, Any]]], None], poll_interval: float = 30.0,
              max_poll_interval: float = 300.0, max_wait: float | None = None) -> dict[str, str]:
    """Send `requests` (custom id -> chat-completions body) as one batch job recorded in `job_dir`,
    wait for it, and hand every answer (custom id -> chat completion body) to `keep`. Returns the
    requests the batch answered with an error (custom id -> one-line message). Resumable: rerun with
    the same requests, or a subset of them, after any interruption (see the module docstring).
    `max_wait` (seconds) bounds one call's polling; None waits for the end."""
    if not requests:
        return {}
    if len(requests) > MAX_REQUESTS:
        raise SublearnError(f"{what}: {len(requests)} requests exceed the Batch API's {MAX_REQUESTS} per batch; "
                            "lower generate.n_prompts or generate without the Batch API")
    job = _Batch(api, Path(job_dir), batch_jsonl(requests), what)
    job.load(set(requests))
    if job.state.get("status") == "failed":
        raise _ended_error(job.state, job.state_path)
    if not job.state.get("downloaded"):
        batch_id = job.create(job.upload())
        batch = job.poll(batch_id, poll_interval=poll_interval, max_poll_interval=max_poll_interval,
                         max_wait=max_wait, sleep=_sleep, now=_now)  # looked up now: tests replace them
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            job.state["error"] = "; ".join(f"{e.message}" + (f" (line {e.line})" if e.line else "")
                                           for e in errors[:3]) or None
            job.save()
            raise _ended_error(job.state, job.state_path)
        job.download(batch)
    answers, errors = job.results()
    keep(answers)
    if job.state.get("status") in ENDED:
        job.state["error"] = job.state.get("error") or f"{len(answers)} of {job.state['requests']} requests answered"
        job.save()
        raise _ended_error(job.state, job.state_path)
    log.info("batch %s: %d answers, %d errors", job.state["batch_id"], len(answers), len(errors))
    return errors
