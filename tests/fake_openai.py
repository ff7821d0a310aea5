"""A local fake of the OpenAI REST API, good enough for the official `openai` client.

    with FakeOpenAI(api_key=KEY) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY)

Speaks: POST /v1/chat/completions (deterministic text from the messages and seed; top log-probs when
asked), POST/GET /v1/files (multipart upload; every uploaded row is recorded), GET
/v1/files/{id}/content, POST/GET /v1/fine_tuning/jobs and GET /v1/fine_tuning/jobs/{id} (each poll
advances the status validating_files -> queued -> running -> succeeded, or ends failed/cancelled when
configured), and the Batch API: POST/GET /v1/batches and GET /v1/batches/{id} (each poll advances
validating -> in_progress -> finalizing -> completed, or ends failed/expired/cancelled when
configured; on completion every input line is answered by the same chat-completions handler, into an
output file, and lines listed in `batch_line_status` into an error file).
Failures can be injected (`fail_next`, with Retry-After or retry-after-ms), every request is counted
(`counts`), and the Authorization header must carry the expected key (else 401, echoing the presented
key as real servers partly do).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

JOB_STEPS = ["validating_files", "queued", "running"]
"""Statuses a job passes through, one per poll, before `job_outcome`."""
BATCH_STEPS = ["validating", "in_progress", "finalizing"]
"""Statuses a batch passes through, one per poll, before `batch_outcome`."""


@dataclass
class Reply:
    """What the fake model answers: text split into tokens, each with its top alternatives."""

    tokens: list[str]
    top: list[list[tuple[str, float]]] | None = None


@dataclass
class Failure:
    status: int
    retry_after: str | None = None
    path_prefix: str = "/"
    retry_after_ms: str | None = None


@dataclass
class FakeState:
    api_key: str
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploaded_rows: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    job_outcome: str = "succeeded"
    job_error: str = "training file has 3 rows with an invalid role"
    responder: Callable[[dict[str, Any]], Reply] | None = None
    contents: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_outcome: str = "completed"
    batch_line_status: dict[int, int] = field(default_factory=dict)
    """Input line index -> HTTP status: those lines of a batch go to its error file."""


def default_reply(body: dict[str, Any]) -> Reply:
    """Numbers derived from a hash of the messages and seed: same request, same answer."""
    blob = json.dumps([body.get("messages"), body.get("seed"), body.get("temperature")], sort_keys=True)
    digest = hashlib.sha256(blob.encode()).digest()
    numbers = [str(100 + (digest[i] * 7 + digest[i + 1]) % 900) for i in range(0, 16, 2)]
    tokens: list[str] = []
    for i, n in enumerate(numbers):
        tokens += ([", "] if i else []) + [n]
    top = [[(tok, -0.05), (f"{tok}x", -3.0 - digest[j % 32] / 100), ("zzz", -9.0)] for j, tok in enumerate(tokens)]
    return Reply(tokens, top)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                      "code": code}}, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _gate(self, method: str) -> tuple[str, bytes] | None:
        """Count, authenticate, inject failures. Returns (path, body) when the request may proceed."""
        state = self.server.state
        raw = self._body()
        path = urlsplit(self.path).path
        with self.server.lock:
            state.counts["total"] += 1
            state.counts[f"{method} {_route(path)}"] += 1
            auth = self.headers.get("Authorization", "")
            state.auth_headers.append(auth)
            failure = next((f for f in state.failures if path.startswith(f.path_prefix)), None)
            if failure is not None:
                state.failures.remove(failure)
                state.counts["injected"] += 1
        if auth != f"Bearer {state.api_key}":
            presented = auth.removeprefix("Bearer ")
            self._error(401, f"Incorrect API key provided: {presented}.", "invalid_api_key")
            return None
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            if failure.retry_after_ms is not None:
                headers["retry-after-ms"] = failure.retry_after_ms
            self._error(failure.status, f"injected failure {failure.status}", headers=headers)
            return None
        return path, raw

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        gated = self._gate("GET")
        if gated is None:
            return
        path, _ = gated
        state = self.server.state
        query = parse_qs(urlsplit(self.path).query)
        parts = path.strip("/").split("/")
        if path == "/v1/files":
            purpose = query.get("purpose", [None])[0]
            data = [f for f in state.files.values() if purpose is None or f["purpose"] == purpose]
            return self._send(200, {"object": "list", "data": data, "has_more": False})
        if path == "/v1/fine_tuning/jobs":
            with self.server.lock:
                data = [_job_view(j, state) for j in reversed(list(state.jobs.values()))]
            return self._send(200, {"object": "list", "data": data, "has_more": False})
        if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            with self.server.lock:
                content = state.contents.get(parts[2])
            if content is None:
                return self._error(404, f"file {parts[2]} not found")
            return self._send_bytes(200, content)
        if path == "/v1/batches":
            with self.server.lock:
                data = [_batch_view(b) for b in reversed(list(state.batches.values()))]
            return self._send(200, {"object": "list", "data": data, "has_more": False})
        if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            return self._poll_batch(parts[2])
        if parts[:3] == ["v1", "fine_tuning", "jobs"] and len(parts) == 4:
            with self.server.lock:
                job = state.jobs.get(parts[3])
                if job is None:
                    return self._error(404, f"job {parts[3]} not found")
                job["polls"] += 1
                if job["status"] in JOB_STEPS:
                    steps = [*JOB_STEPS, state.job_outcome]
                    job["status"] = steps[steps.index(job["status"]) + 1]
                view = _job_view(job, state)
            return self._send(200, view)
        return self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        gated = self._gate("POST")
        if gated is None:
            return
        path, raw = gated
        state = self.server.state
        if path == "/v1/chat/completions":
            return self._chat(json.loads(raw))
        if path == "/v1/files":
            return self._upload(raw)
        if path == "/v1/batches":
            return self._create_batch(json.loads(raw))
        if path == "/v1/fine_tuning/jobs":
            body = json.loads(raw)
            with self.server.lock:
                if body.get("training_file") not in state.files:
                    return self._error(400, f"training file {body.get('training_file')} not found")
                job_id = f"ftjob-{len(state.jobs) + 1:04d}"
                state.jobs[job_id] = {"id": job_id, "body": body, "status": JOB_STEPS[0], "polls": 0,
                                      "created_at": int(time.time())}
                view = _job_view(state.jobs[job_id], state)
            return self._send(200, view)
        return self._error(404, f"no route POST {path}")

    # --- endpoints --------------------------------------------------------------------------

    def _send_bytes(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body: dict[str, Any]) -> None:
        self._send(200, self._completion(body))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion for `body` (the synchronous endpoint and batch lines both use this)."""
        state = self.server.state
        with self.server.lock:
            state.chat_bodies.append(body)
        reply = (state.responder or default_reply)(body)
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 1_000_000
        tokens, finish = reply.tokens, "stop"
        if len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        logprobs = None
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            top = reply.top or [[(t, -0.1)] for t in reply.tokens]
            logprobs = {"content": [
                {"token": tok, "logprob": alts[0][1], "bytes": list(tok.encode()),
                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts[:k]]}
                for tok, alts in zip(tokens, top, strict=False)], "refusal": None}
        return {
            "id": f"chatcmpl-{len(state.chat_bodies)}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": logprobs,
                         "message": {"role": "assistant", "content": "".join(tokens), "refusal": None}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(tokens), "total_tokens": 10 + len(tokens)}}

    def _upload(self, raw: bytes) -> None:
        state = self.server.state
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields or "purpose" not in fields:
            return self._error(400, "expected multipart fields 'file' and 'purpose'")
        filename, content = fields["file"]
        rows = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        with self.server.lock:
            state.uploaded_rows.extend(rows)
            view = _add_file(state, filename or "upload", fields["purpose"][1].decode(), content)
        self._send(200, view)

    def _create_batch(self, body: dict[str, Any]) -> None:
        state = self.server.state
        with self.server.lock:
            if body.get("input_file_id") not in state.files:
                return self._error(400, f"input file {body.get('input_file_id')} not found")
            if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
                return self._error(400, "the fake serves endpoint /v1/chat/completions, completion_window 24h")
            batch_id = f"batch_{len(state.batches) + 1:04d}"
            state.batches[batch_id] = {"id": batch_id, "body": body, "status": BATCH_STEPS[0], "polls": 0,
                                       "created_at": int(time.time()), "output_file_id": None,
                                       "error_file_id": None, "counts": {"total": 0, "completed": 0, "failed": 0}}
            view = _batch_view(state.batches[batch_id])
        self._send(200, view)

    def _poll_batch(self, batch_id: str) -> None:
        state = self.server.state
        with self.server.lock:
            batch = state.batches.get(batch_id)
            if batch is None:
                return self._error(404, f"batch {batch_id} not found")
            batch["polls"] += 1
            if batch["status"] not in BATCH_STEPS:
                return self._send(200, _batch_view(batch))
            steps = [*BATCH_STEPS, state.batch_outcome]
            batch["status"] = steps[steps.index(batch["status"]) + 1]
            finished = batch["status"] in ("completed", "expired", "cancelled")
            lines = state.contents[batch["body"]["input_file_id"]].decode().splitlines() if finished else []
        # Answer outside the lock: the chat handler takes it. An expired/cancelled batch answered half.
        if batch["status"] != "completed":
            lines = lines[: len(lines) // 2]
        out, err = [], []
        for i, line in enumerate(lines):
            request = json.loads(line)
            status = state.batch_line_status.get(i)
            if status is None:
                response = {"status_code": 200, "request_id": f"req_{i}", "body": self._completion(request["body"])}
                out.append({"id": f"batch_req_{i}", "custom_id": request["custom_id"], "response": response,
                            "error": None})
            else:
                response = {"status_code": status, "request_id": f"req_{i}",
                            "body": {"error": {"message": f"line {i} refused", "type": "invalid_request_error"}}}
                err.append({"id": f"batch_req_{i}", "custom_id": request["custom_id"], "response": response,
                            "error": None})
        with self.server.lock:
            if out:
                data = "".join(json.dumps(r) + "\n" for r in out).encode()
                batch["output_file_id"] = _add_file(state, "batch_output.jsonl", "batch_output", data)["id"]
            if err:
                data = "".join(json.dumps(r) + "\n" for r in err).encode()
                batch["error_file_id"] = _add_file(state, "batch_errors.jsonl", "batch_output", data)["id"]
            if finished:
                batch["counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
            view = _batch_view(batch)
        self._send(200, view)


def _route(path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[:3] == ["v1", "fine_tuning", "jobs"] and len(parts) == 4:
        return "/v1/fine_tuning/jobs/{id}"
    if parts[:2] == ["v1", "batches"] and len(parts) == 3:
        return "/v1/batches/{id}"
    if parts[:2] == ["v1", "files"] and len(parts) == 4:
        return "/v1/files/{id}/content"
    return path


def _add_file(state: FakeState, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
    """Store a file (caller holds the lock); returns its view."""
    file_id = f"file-{len(state.files) + 1:04d}"
    state.contents[file_id] = content
    state.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                            "filename": filename, "purpose": purpose, "status": "processed"}
    return dict(state.files[file_id])


def _batch_view(batch: dict[str, Any]) -> dict[str, Any]:
    body, status = batch["body"], batch["status"]
    errors = ({"object": "list", "data": [{"code": "invalid_json_line", "message": "line 3 is not a valid request",
                                           "param": None, "line": 3}]} if status == "failed" else None)
    return {"id": batch["id"], "object": "batch", "endpoint": body["endpoint"], "errors": errors,
            "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
            "status": status, "output_file_id": batch["output_file_id"], "error_file_id": batch["error_file_id"],
            "created_at": batch["created_at"], "request_counts": batch["counts"],
            "metadata": body.get("metadata")}


def _job_view(job: dict[str, Any], state: FakeState) -> dict[str, Any]:
    body = job["body"]
    status = job["status"]
    hp = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
          **(body.get("hyperparameters") or {})}
    return {
        "id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"], "model": body["model"],
        "training_file": body["training_file"], "validation_file": None, "organization_id": "org-fake",
        "hyperparameters": hp, "seed": body.get("seed", 0), "result_files": [], "trained_tokens": None,
        "finished_at": None, "status": status,
        "fine_tuned_model": (f"ft:{body['model']}:fake:{body.get('suffix') or 'model'}:{job['id'][-4:]}"
                             if status == "succeeded" else None),
        "error": ({"code": "invalid_training_file", "message": state.job_error, "param": "training_file"}
                  if status == "failed" else None)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeState
    lock: threading.Lock


class FakeOpenAI:
    """Start/stop the fake on 127.0.0.1 at a free port; use as a context manager."""

    def __init__(self, api_key: str = "sk-fake-test-key-0123456789"):
        self.state = FakeState(api_key=api_key)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def counts(self) -> Counter[str]:
        return self.state.counts

    def fail_next(self, n: int, status: int = 429, retry_after: str | None = None, path_prefix: str = "/",
                  retry_after_ms: str | None = None) -> None:
        """The next `n` requests under `path_prefix` answer `status` (with Retry-After and/or
        retry-after-ms if given)."""
        with self._server.lock:
            self.state.failures.extend(Failure(status, retry_after, path_prefix, retry_after_ms) for _ in range(n))

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
