"""`OpenAIBackend`: any OpenAI-compatible chat endpoint (OpenAI itself, a `vllm serve` server, other
providers), with its request cache.

    backend = get_backend("openai/gpt-4.1-nano", cache_dir=Path("runs/x/api-cache"))
    completions = backend.generate(chats, SamplingParams(temperature=1.0), seed=0)

Sample index. The i-th chat of a `generate(chats, params, seed)` call is sample (seed, i): it is sent
with the request seed `request_seed(seed, i)` and (seed, i) is part of the cache key. So repeating a
chat inside one call gives independent samples, and rerunning the same call with the same seed reads
every answer back from the cache instead of paying again. At temperature 0 the seed is left out of
the request and the key (a greedy reply does not depend on it), so identical chats share one request.
Providers treat the request seed as best effort: a cache miss may not reproduce an earlier reply.

Cache. With `cache_dir` (or, when it is not given, the directory in $SUBLEARN_API_CACHE), one JSON
file per request under `cache_dir/<key[:2]>/<key>.json`, written atomically (temp
file + rename), keyed by the SHA-256 of the request body we would send plus the endpoint. A crash
never leaves a torn entry, and a half-finished batch keeps the answers it already paid for.

Retries. The openai client retries transient failures itself (`max_retries`); `stats` counts every
request it sends and the retries among them (see `sublearn.backends.openai_api.client`). A failure
that remains is one line, with the key scrubbed.

Batch API (`generate_batched`): the same requests as one OpenAI batch job at half the price, resumable
(see `sublearn.backends.openai_api.batch`); the answers land in the cache, so `generate` then reads
them back.

Regex constraint (`SamplingParams.regex`). An API cannot restrict decoding to a regex, so by default
it is an error. `constraint="ignore"` samples unconstrained (the filter stage then rejects what does
not parse; expect a lower yield); `constraint="regex"` sends vLLM's `structured_outputs.regex`
extension, for a `vllm serve` endpoint (vLLM >= 0.11) given as `base_url`.

The API key is read from the environment variable `api_key_env` and handed to the client only: it is
not stored on this object, and every message we raise or log is scrubbed of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sublearn.backends.base import Backend, Chat, Completion, SamplingParams, request_seed
from sublearn.backends.openai_api.batch import run_batch
from sublearn.backends.openai_api.client import make_client, redact
from sublearn.errors import SublearnError
from sublearn.rundir import write_json

log = logging.getLogger(__name__)

API_MAX_TOP_LOGPROBS = 20
"""OpenAI returns at most 20 alternatives per position."""

CACHE_VERSION = 1
CACHE_ENV = "SUBLEARN_API_CACHE"
"""Default cache directory when the constructor gets none (unset: no cache)."""


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible endpoint; see the module docstring for the sample
    index, the cache, retries, the Batch API and the regex constraint."""

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, timeout: float = 60.0,
                 cache_dir: Path | str | None = None, constraint: Literal["error", "ignore", "regex"] = "error",
                 max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"):
        if concurrency < 1:
            raise SublearnError(f"openai backend: concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.base_url = base_url
        self.concurrency = concurrency
        # Callers that build backends by name pass no cache_dir; the environment can still give one.
        cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.constraint = constraint
        # OpenAI now prefers max_completion_tokens (reasoning models refuse max_tokens); many other
        # compatible servers only know max_tokens.
        self.max_tokens_field = (max_tokens_field if max_tokens_field != "auto"
                                 else "max_completion_tokens" if base_url is None else "max_tokens")
        self._api = make_client(base_url, api_key_env, timeout, max_retries)
        self.cache_hits = 0
        self._lock = threading.Lock()
        self._endpoint = (base_url or "https://api.openai.com/v1").rstrip("/")

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, cache_dir={self.cache_dir!r})"

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent (including retried ones), retries, and answers read from the cache."""
        counter = self._api.counter
        return {"requests": counter.requests, "retries": counter.retries, "cache_hits": self.cache_hits}

    # --- request bodies -------------------------------------------------------------------------

    def _body(self, chat: Chat, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in chat],
                                "temperature": params.temperature, "top_p": params.top_p,
                                self.max_tokens_field: params.max_new_tokens}
        if params.temperature > 0 and seed is not None:
            body["seed"] = seed
        if params.logprobs_top_k > 0:
            if params.logprobs_top_k > API_MAX_TOP_LOGPROBS:
                raise SublearnError(f"openai backend: logprobs_top_k={params.logprobs_top_k} exceeds the API "
                                    f"maximum of {API_MAX_TOP_LOGPROBS}")
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs_top_k
        if params.regex is not None:
            if self.constraint == "error":
                raise SublearnError(
                    "openai backend: a regex constraint cannot be enforced through an API; set "
                    "channel.grammar: false (the filter stage rejects what does not parse), or pass "
                    "constraint='regex' for a vLLM server endpoint")
            if self.constraint == "regex":
                body["extra_body"] = {"structured_outputs": {"regex": params.regex}}
        return body

    def _key(self, kind: str, body: dict[str, Any]) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "kind": kind, "endpoint": self._endpoint, "body": body},
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # --- cache ----------------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            # Entries are renamed into place whole, so this is outside damage: refetch.
            log.warning("%s: unreadable cache entry, requesting again", path)
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def _cache_put(self, key: str, value: dict[str, Any]) -> None:
        path = self._cache_path(key)
        if path is not None:
            write_json(path, {"key": key, **value})

    # --- calls ----------------------------------------------------------------------------------

    def _request(self, body: dict[str, Any]) -> Any:
        what = f"{self.name}/{self.model}"
        return self._api.call(lambda: self._api.client.chat.completions.create(**body), what)

    def _bodies(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[dict[str, Any]]:
        """The request bodies of `generate(chats, params, seed)`: chat i is sample (seed, i)."""
        return [self._body(chat, params, request_seed(seed, i)) for i, chat in enumerate(chats)]

    def _pending(self, kind: str, bodies: Sequence[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]],
                                                                             dict[str, dict[str, Any]]]:
        """(key -> cached answer, key -> body to send) of `bodies`, each distinct request once."""
        results: dict[str, dict[str, Any]] = {}
        todo: dict[str, dict[str, Any]] = {}
        for body in bodies:
            key = self._key(kind, body)
            if key in results or key in todo:
                continue  # identical requests (e.g. greedy duplicates) are sent once
            cached = self._cache_get(key)
            if cached is not None:
                results[key] = cached
            else:
                todo[key] = body
        return results, todo

    def _run(self, kind: str, bodies: list[dict[str, Any]], parse: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer every body (cache first, then the API with bounded concurrency); in order."""
        keys = [self._key(kind, b) for b in bodies]
        results, todo = self._pending(kind, bodies)
        with self._lock:
            self.cache_hits += len(results)
        if todo:
            log.debug("%s/%s: %d requests (%d cached)", self.name, self.model, len(todo), len(results))

            def one(key: str, body: dict[str, Any]) -> None:
                value = parse(self._request(body))
                self._cache_put(key, value)  # written as it arrives: a crash keeps what was paid for
                results[key] = value

            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                futures = [pool.submit(one, k, b) for k, b in todo.items()]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in pending:
                    fut.cancel()
                for fut in futures:
                    if fut.done() and not fut.cancelled() and fut.exception() is not None:
                        raise fut.exception()  # type: ignore[misc]
        return [results[k] for k in keys]

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        """One completion per chat; chat i is sample (seed, i) (see the module docstring)."""
        answers = self._run("chat", self._bodies(chats, params, seed), _parse_completion)
        out = []
        for a in answers:
            top = a.get("top_logprobs")
            out.append(Completion(text=a["text"], finish_reason=a["finish_reason"],
                                  top_logprobs=None if top is None else [[(str(t), float(lp)) for t, lp in row]
                                                                         for row in top]))
        return out

    def generate_batched(self, calls: Sequence[tuple[Sequence[Chat], int]], params: SamplingParams, job_dir: Path,
                         **poll: Any) -> int:
        """Answer, through one OpenAI Batch API job recorded in `job_dir` (half the price; minutes to
        hours), every request that `generate(chats, params, seed)` would send for each (chats, seed) of
        `calls`. The answers go to the cache, so those `generate` calls then read them back: the result
        is the same as without the batch. Requests the batch refused are left to `generate` to send one
        by one. Resumable (see `sublearn.backends.openai_api.batch`); `poll` goes to `run_batch`. Returns
        the number of requests submitted (0: the cache held every answer)."""
        if self.cache_dir is None:
            raise SublearnError("openai backend: the Batch API path needs a cache_dir (the answers are read "
                                "back from the cache)")
        _, pending = self._pending("chat", [body for chats, seed in calls for body in self._bodies(chats, params, seed)])
        todo = {key: _wire_body(body) for key, body in pending.items()}
        if not todo:
            return 0

        def keep(answers: dict[str, dict[str, Any]]) -> None:
            from openai.types.chat import ChatCompletion

            for key, completion in answers.items():  # keys are content-addressed: any answer is right for its key
                if self._cache_get(key) is None:
                    self._cache_put(key, _parse_completion(ChatCompletion.model_validate(completion)))

        failed = run_batch(self._api, todo, job_dir, what=f"{self.name}/{self.model}", keep=keep, **poll)
        if failed:
            first = next(iter(failed.values()))
            log.warning("%s/%s: the batch refused %d of %d requests (first: %s); they are sent one by one",
                        self.name, self.model, len(failed), len(todo), redact(first, self._api.secret))
        return len(todo)

    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        """Top-`top_k` (at most 20) first reply tokens and their log-probs, from one greedy token."""
        k = min(top_k, API_MAX_TOP_LOGPROBS)
        params = SamplingParams(temperature=0.0, max_new_tokens=1, logprobs_top_k=k)
        bodies = [self._body(chat, params, None) for chat in chats]
        answers = self._run("chat", bodies, _parse_completion)
        results = []
        for a in answers:
            entry: dict[str, float] = {}
            for token, lp in (a.get("top_logprobs") or [[]])[0]:
                # Distinct tokens can share a text form; their probabilities add up.
                entry[token] = float(np.logaddexp(entry[token], lp)) if token in entry else float(lp)
            results.append(entry)
        return results

    def close(self) -> None:
        self._api.close()


def _wire_body(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON the client sends for `chat.completions.create(**body)` (`extra_body` merged in)."""
    wire = {k: v for k, v in body.items() if k != "extra_body"}
    wire.update(body.get("extra_body") or {})
    return wire


def _parse_completion(response: Any) -> dict[str, Any]:
    """The cacheable part of a chat completion: text, finish reason, per-token top-k (token, logprob)."""
    choice = response.choices[0]
    finish = "length" if choice.finish_reason == "length" else "stop"
    top: list[list[list[Any]]] | None = None
    if choice.logprobs is not None and choice.logprobs.content is not None:
        top = [[[alt.token, alt.logprob if math.isfinite(alt.logprob) else -9999.0] for alt in tok.top_logprobs]
               for tok in choice.logprobs.content]
    return {"text": choice.message.content or "", "finish_reason": finish, "top_logprobs": top}
