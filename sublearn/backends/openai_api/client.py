"""The OpenAI client as every part of this package uses it: `ApiClient` (an `openai.OpenAI` client, the
key it sends and its request counter), `make_client`, the API key read from the environment, redaction
of that key from every message, request counting, and the one-line errors for calls that failed for good.

    api = make_client(base_url, "OPENAI_API_KEY", timeout=60.0, max_retries=6)
    reply = api.call(lambda: api.client.chat.completions.create(**body), "openai/gpt-4.1-nano")

Retries. The openai client retries 408, 409, 429, 5xx, connection errors and timeouts itself, up to
`max_retries` times, with exponential backoff and jitter (0.5 s doubling to 8 s), honouring
`Retry-After`/`retry-after-ms` (up to 60 s) when the server sends them. We count what it sends through
httpx event hooks (`RequestCounter`): every request, and the retries among them (by the client's
`x-stainless-retry-count` header). A failure that remains is one line, with the key scrubbed.

The API key is read from the environment variable `api_key_env` and handed to the client only, and
every message we raise or log is scrubbed of it. The `openai` package is imported only when a client
is made or an error is described, so this module imports without it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sublearn.errors import SublearnError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Tokens that look like API keys ("sk-...", "sk-proj-...") are scrubbed from server messages too: an
# authentication error may echo a partly masked key back to us.
_KEYLIKE = re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")


def redact(text: str, secret: str | None) -> str:
    """`text` with `secret` and anything shaped like an API key replaced by [redacted]."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def read_api_key(api_key_env: str | None) -> str:
    """The key from the environment, or a one-line error naming the variable. `None` means the
    endpoint needs no key (e.g. a local vLLM server); a placeholder is sent."""
    if api_key_env is None:
        return "EMPTY"
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise SublearnError(f"environment variable {api_key_env} is not set: export your API key in it "
                            "(keys are read from the environment only, never from configs)")
    return key


def make_client(base_url: str | None, api_key_env: str | None, timeout: float, max_retries: int = 6) -> ApiClient:
    """An `openai.OpenAI` client that retries transient failures itself (`max_retries`), with every
    request it sends counted through httpx event hooks."""
    try:
        import openai
    except ImportError:
        raise SublearnError("the openai backend needs the openai client; install it with: "
                            "pip install 'sublearn[openai]'") from None
    if max_retries < 0:
        raise SublearnError(f"openai backend: max_retries must be >= 0, got {max_retries}")
    key = read_api_key(api_key_env)
    counter = RequestCounter()
    # The SDK's own httpx client class (its timeouts and connection limits), plus our hooks.
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [counter.on_request],
                                                         "response": [counter.on_response]})
    client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                           http_client=http_client)
    return ApiClient(client, key, counter)


RETRY_STATUS = frozenset({408, 409, 429})
"""With 5xx: the statuses the openai client retries (it also retries connection errors and timeouts)."""


def _retryable(status: int) -> bool:
    """Whether the openai client retries a response with this HTTP status."""
    return status in RETRY_STATUS or status >= 500


def _retry_count(request: Any) -> int:
    """How many times the client had already sent this request (its `x-stainless-retry-count`)."""
    try:
        return int(request.headers.get("x-stainless-retry-count") or 0)
    except (AttributeError, ValueError):
        return 0


class RequestCounter:
    """httpx event hooks: `requests` counts every request that goes out, `retries` those the client
    sends again after a transient failure (requests beyond the first of a logical call). Thread-safe."""

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self._lock = threading.Lock()

    def on_request(self, request: Any) -> None:
        retry = _retry_count(request) > 0
        with self._lock:
            self.requests += 1
            self.retries += int(retry)
        if retry:
            log.info("%s %s: retry %d", request.method, request.url.path, _retry_count(request))

    def on_response(self, response: Any) -> None:
        if _retryable(response.status_code):
            log.warning("%s %s: HTTP %d (transient; the client retries while it has retries left)",
                        response.request.method, response.request.url.path, response.status_code)


def _transient(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, openai.APIStatusError):
        return _retryable(exc.status_code)
    return False


def describe(exc: Exception, secret: str | None) -> str:
    """A redacted description of an API exception (SublearnError makes it one line)."""
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
    head = f"HTTP {status}" if status is not None else type(exc).__name__
    return redact(f"{head}: {message}", secret)


def api_error(exc: Exception, what: str, secret: str | None) -> SublearnError:
    """The one-line error for an API call that failed for good (the client has done its retries)."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return SublearnError(f"{what}: authentication failed ({describe(exc, secret)}); check the API key in "
                             "the environment")
    if _transient(exc):
        attempts = _retry_count(getattr(exc, "request", None)) + 1
        return SublearnError(f"{what}: gave up after {attempts} attempt{'s' * (attempts > 1)} "
                             f"(last: {describe(exc, secret)})")
    return SublearnError(f"{what}: {describe(exc, secret)}")


class ApiClient:
    """An `openai.OpenAI` client, the key it sends (for redaction only) and its request counter."""

    def __init__(self, client: Any, secret: str, counter: RequestCounter):
        self.client = client
        self.secret = secret
        self.counter = counter

    def __repr__(self) -> str:
        return f"ApiClient(base_url={str(self.client.base_url)!r})"

    def call(self, fn: Callable[[], T], what: str) -> T:
        """`fn()` (an SDK call, retried by the client on transient failures); a failure that remains
        becomes a one-line SublearnError that starts with `what`, scrubbed of the key."""
        import openai

        try:
            return fn()
        except openai.OpenAIError as exc:
            raise api_error(exc, what, self.secret) from None

    def close(self) -> None:
        self.client.close()

