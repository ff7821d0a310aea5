"""`RemoteJob`: what a resumable OpenAI job (a fine-tuning job, a batch) does the same way: upload once,
create once, poll.

The fine-tuning job (`sublearn.backends.openai_api.finetune`) and the batch
(`sublearn.backends.openai_api.batch`) subclass `RemoteJob`. A subclass names its files-API purpose,
its state keys and its remote object's fields (the class attributes below), builds and loads its own
state record (`save` writes it), and implements the three API calls that differ (`_create_remote`,
`_list_remote`, `_retrieve`; each request through `call`). It then advances a job with

    file_id = job.upload()                # stored id, or an earlier upload found on the server, or a new one
    remote_id = job.create(file_id)       # likewise for the job or batch
    obj = job.poll(remote_id, poll_interval=30, max_poll_interval=300, max_wait=None, sleep=_sleep, now=_now)

Every step stores its answer in the JSON state file the moment it has it. Before a step that the
server may have completed without our hearing back (an upload, a create), a `*_started` flag is
stored; only a rerun that finds the flag set asks the server for an earlier answer, so an
uninterrupted run never pays for a listing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from sublearn.backends.openai_api.client import ApiClient
from sublearn.errors import SublearnError
from sublearn.rundir import write_json


class RemoteJob:
    """One job directory: its state record (`self.state`, saved to `state_path`), the input file's
    bytes, and the shared steps that advance it on the server."""

    noun: ClassVar[str]  # in messages: "batch", "fine-tuning job"
    unit: ClassVar[str]  # what one input line is, in the upload message: "batch requests", "training rows"
    purpose: ClassVar[str]  # the files API purpose of the input file
    file_prefix: ClassVar[str]  # the uploaded file's name before its content hash
    file_key: ClassVar[str]  # the state key of the uploaded file's id
    id_key: ClassVar[str]  # the state key of the remote job's id
    input_field: ClassVar[str]  # the remote object's field naming its input file
    given_up: ClassVar[tuple[str, ...]]  # remote statuses of a job that will never finish
    succeeded: ClassVar[str]  # the remote status of a job that finished well (it, or `given_up`, ends polling)

    def __init__(self, api: ApiClient, state_path: Path, data: bytes, label: str):
        self.api = api
        self.dir = state_path.parent
        self.state_path = state_path
        self.data = data
        self.sha = hashlib.sha256(data).hexdigest()
        self.label = label  # prefixes every API error: "<label> <step>: ..."
        self.state: dict[str, Any] = {}
        # Log as the subclass's module, as each did before they shared this code.
        self.log = logging.getLogger(type(self).__module__)

    @property
    def filename(self) -> str:
        """The uploaded file's name: content-addressed, so findable on the server after a crash."""
        return f"{self.file_prefix}-{self.sha[:16]}.jsonl"

    def save(self) -> None:
        """Write the state record (atomically)."""
        write_json(self.state_path, self.state)

    def call(self, fn: Callable[[], Any], step: str) -> Any:
        """`fn()` through the client; a failure is a one-line error that starts with "<label> <step>"."""
        return self.api.call(fn, f"{self.label} {step}")

    def _started_before(self, flag: str) -> bool:
        """Whether an earlier run began this step; records that this one has (before the request)."""
        if self.state.get(flag):
            return True
        self.state[flag] = True
        self.save()
        return False

    # --- what a subclass implements -----------------------------------------------------------

    def _create_remote(self, file_id: str) -> str:
        """Create the job on `file_id` (one API call); return its id."""
        raise NotImplementedError

    def _list_remote(self) -> list[Any]:
        """The most recent remote jobs (one API call)."""
        raise NotImplementedError

    def _retrieve(self, remote_id: str) -> Any:
        """The remote job now (one API call)."""
        raise NotImplementedError

    def _progress(self, obj: Any) -> str:
        """Added to the status-change log line."""
        return ""

    # --- steps ------------------------------------------------------------------------------

    def upload(self) -> str:
        """The input file's id on the server, uploading it only if no earlier run did."""
        if self.state[self.file_key]:
            return str(self.state[self.file_key])
        found = self._find_upload()
        if found is None:
            data, name = self.data, self.filename  # bytes, not a handle: a retried request sends the whole file again
            obj = self.call(lambda: self.api.client.files.create(file=(name, data), purpose=self.purpose), "upload")
            found = obj.id
            self.log.info("uploaded %d %s as %s", data.count(b"\n"), self.unit, found)
        else:
            self.log.info("found our earlier upload %s on the server; not uploading again", found)
        self.state[self.file_key] = found
        self.save()
        return str(found)

    def _find_upload(self) -> str | None:
        # Only after a crash between upload and save can the server hold our file without us knowing.
        if not self._started_before("upload_started"):
            return None
        page = self.call(lambda: self.api.client.files.list(purpose=self.purpose), "list files")
        for f in page.data:
            if f.filename == self.filename and f.bytes == len(self.data) and f.status != "error":
                return str(f.id)
        return None

    def create(self, file_id: str) -> str:
        """The remote job's id, creating it on `file_id` only if no earlier run did."""
        if self.state[self.id_key]:
            return str(self.state[self.id_key])
        found = self._find_remote(file_id)
        if found is None:
            found = self._create_remote(file_id)
        else:
            self.log.info("found our earlier %s %s on the server; not creating another", self.noun, found)
        self.state[self.id_key] = found
        self.save()
        return str(found)

    def _find_remote(self, file_id: str) -> str | None:
        if not self._started_before("create_started"):
            return None
        for obj in self._list_remote():
            # A file id is unique to our upload, so a job on it is ours.
            if getattr(obj, self.input_field) == file_id and obj.status not in self.given_up:
                return str(obj.id)
        return None

    def poll(self, remote_id: str, *, poll_interval: float, max_poll_interval: float, max_wait: float | None,
             sleep: Callable[[float], None], now: Callable[[], float]) -> Any:
        """Poll with growing intervals until the job reaches a terminal status; return it. Each status
        change is logged and stored. Past `max_wait` seconds (None: never) a one-line error says how to
        resume. `sleep` and `now` are the caller module's, which tests replace."""
        start = now()
        interval = poll_interval
        last = self.state.get("status")
        while True:
            obj = self._retrieve(remote_id)
            if obj.status != last:
                self.log.info("%s %s: %s%s", self.noun, remote_id, obj.status, self._progress(obj))
                last = obj.status
                self.state["status"] = obj.status
                self.save()
            if obj.status == self.succeeded or obj.status in self.given_up:
                return obj
            if max_wait is not None and now() - start > max_wait:
                raise SublearnError(f"{self.noun} {remote_id} is still {obj.status} after {max_wait:.0f}s; rerun "
                                    f"to keep waiting (its id is stored in {self.state_path})")
            sleep(interval)
            interval = min(max_poll_interval, interval * 1.5)
