"""OpenAIBackend against the local fake OpenAI server (tests/fake_openai.py), with the official client."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

# fake_openai.py lives one level up; tests/ is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai import FakeOpenAI, Reply  # noqa: E402

from sublearn.backends import SamplingParams, get_backend  # noqa: E402
from sublearn.backends.base import request_seed  # noqa: E402
from sublearn.backends.openai_api import OpenAIBackend, redact  # noqa: E402
from sublearn.backends.openai_api import batch as api_batch  # noqa: E402
from sublearn.channels.numbers import numbers_regex  # noqa: E402
from sublearn.errors import SublearnError  # noqa: E402

KEY = "sk-fake-SECRET-7f3e9a1c5b2d"
CHAT = [{"role": "user", "content": "List some numbers."}]


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


def make(server, tmp_path, **kw) -> OpenAIBackend:
    return OpenAIBackend("gpt-fake", base_url=server.base_url, cache_dir=tmp_path / "cache", **kw)


def retry_waits(caplog) -> list[float]:
    """The waits the openai client announced before its retries (it logs each at INFO)."""
    return [float(m.group(1)) for r in caplog.records
            if (m := re.match(r"Retrying request in ([\d.]+) seconds", r.getMessage()))]


def test_registry_builds_the_backend(server, tmp_path):
    backend = get_backend("openai/gpt-fake", base_url=server.base_url, cache_dir=tmp_path)
    assert isinstance(backend, OpenAIBackend) and backend.model == "gpt-fake"


def test_generate_maps_params_and_stores_token_strings(server, tmp_path):
    backend = make(server, tmp_path)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5, logprobs_top_k=2)
    [comp] = backend.generate([CHAT], params, seed=3)
    [body] = server.state.chat_bodies
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["max_tokens"] == 5  # custom base_url -> the widely supported field
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["seed"] == request_seed(3, 0)
    assert comp.finish_reason == "length"  # the fake answers 15 tokens, cut at 5
    assert comp.top_logprobs is not None and len(comp.top_logprobs) == 5
    assert all(len(row) == 2 and isinstance(row[0][0], str) for row in comp.top_logprobs)
    assert comp.text == "".join(row[0][0] for row in comp.top_logprobs)
    assert comp.token_ids == []


def test_openai_endpoint_uses_max_completion_tokens(server, tmp_path):
    backend = make(server, tmp_path, max_tokens_field="auto")
    assert backend._body(CHAT, SamplingParams(), 0).get("max_tokens") == 64
    official = OpenAIBackend.__new__(OpenAIBackend)
    official.__dict__.update(backend.__dict__, base_url=None, max_tokens_field="max_completion_tokens")
    assert "max_completion_tokens" in official._body(CHAT, SamplingParams(), 0)


def test_sample_index_and_cache(server, tmp_path):
    backend = make(server, tmp_path)
    chats = [CHAT, CHAT, [{"role": "user", "content": "Other."}]]
    first = backend.generate(chats, SamplingParams(), seed=0)
    assert server.counts["POST /v1/chat/completions"] == 3
    seeds = {b["seed"] for b in server.state.chat_bodies}  # requests run concurrently: any order
    assert seeds == {request_seed(0, i) for i in range(3)}
    assert first[0].text != first[1].text  # same chat, different sample index
    # Rerun: every answer comes from the cache, no request is paid for.
    again = make(server, tmp_path).generate(chats, SamplingParams(), seed=0)
    assert again == first
    assert server.counts["POST /v1/chat/completions"] == 3
    # Another seed is another sample.
    backend.generate(chats[:1], SamplingParams(), seed=1)
    assert server.counts["POST /v1/chat/completions"] == 4
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 4


def test_greedy_duplicates_share_one_request(server, tmp_path):
    backend = make(server, tmp_path)
    out = backend.generate([CHAT] * 4, SamplingParams(temperature=0.0), seed=5)
    assert server.counts["POST /v1/chat/completions"] == 1
    assert "seed" not in server.state.chat_bodies[0]
    assert len({c.text for c in out}) == 1
    backend.generate([CHAT], SamplingParams(temperature=0.0), seed=9)  # the seed does not matter at T=0
    assert server.counts["POST /v1/chat/completions"] == 1
    assert backend.stats["cache_hits"] == 1


def test_corrupt_cache_entry_is_refetched(server, tmp_path, caplog):
    backend = make(server, tmp_path)
    [a] = backend.generate([CHAT], SamplingParams(), seed=0)
    [entry] = list((tmp_path / "cache").rglob("*.json"))
    entry.write_text('{"key": "torn', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        [b] = make(server, tmp_path).generate([CHAT], SamplingParams(), seed=0)
    assert a == b and server.counts["POST /v1/chat/completions"] == 2
    assert "unreadable cache entry" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_bounded_concurrency(server, tmp_path):
    active, peak, lock = [0], [0], threading.Lock()

    def slow(body):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        return Reply(["1"])

    server.state.responder = slow
    backend = make(server, tmp_path, concurrency=3)
    out = backend.generate([[{"role": "user", "content": str(i)}] for i in range(9)], SamplingParams(), seed=0)
    assert len(out) == 9 and 1 < peak[0] <= 3


def test_retries_on_429_and_500_are_counted(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="openai")
    backend = make(server, tmp_path)
    server.fail_next(1, status=500)
    server.fail_next(2, status=429, retry_after_ms="150")
    start = time.monotonic()
    [comp] = backend.generate([CHAT], SamplingParams(), seed=0)
    elapsed = time.monotonic() - start
    assert comp.text
    assert server.counts["injected"] == 3 and server.counts["POST /v1/chat/completions"] == 4
    assert backend.stats == {"requests": 4, "retries": 3, "cache_hits": 0}
    waits = retry_waits(caplog)
    assert 0.5 * 0.75 <= waits[0] <= 0.5  # no hint: the client's first backoff (0.5 s, less up to 25% jitter)
    assert waits[1:] == [0.15, 0.15]  # retry-after-ms honoured
    assert elapsed >= sum(waits) - 0.01  # and it did wait
    assert "HTTP 429 (transient" in caplog.text  # our response hook saw each failure


def test_retry_after_seconds_is_honoured(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="openai")
    server.fail_next(1, status=503, retry_after="1")
    make(server, tmp_path).generate([CHAT], SamplingParams(), seed=0)
    assert retry_waits(caplog) == [1.0]


def test_gives_up_after_max_retries(server, tmp_path):
    backend = make(server, tmp_path, max_retries=2)
    server.fail_next(5, status=503, retry_after_ms="1")
    with pytest.raises(SublearnError, match="gave up after 3 attempts") as err:
        backend.generate([CHAT], SamplingParams(), seed=0)
    assert "\n" not in str(err.value) and "HTTP 503" in str(err.value)
    assert server.counts["total"] == 3
    assert backend.stats == {"requests": 3, "retries": 2, "cache_hits": 0}


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(server, tmp_path, status):
    backend = make(server, tmp_path)
    server.fail_next(1, status=status, retry_after_ms="1")
    with pytest.raises(SublearnError, match=f"HTTP {status}") as err:
        backend.generate([CHAT], SamplingParams(), seed=0)
    assert "\n" not in str(err.value) and "gave up" not in str(err.value)
    assert server.counts["total"] == 1 and backend.stats == {"requests": 1, "retries": 0, "cache_hits": 0}


def test_max_retries_zero_fails_at_once(server, tmp_path):
    backend = make(server, tmp_path, max_retries=0)
    server.fail_next(1, status=429, retry_after_ms="1")
    with pytest.raises(SublearnError, match="gave up after 1 attempt \\(last: HTTP 429"):
        backend.generate([CHAT], SamplingParams(), seed=0)
    assert server.counts["total"] == 1
    with pytest.raises(SublearnError, match="max_retries must be >= 0"):
        make(server, tmp_path, max_retries=-1)


def test_connection_errors_are_retried(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=2)
    with pytest.raises(SublearnError, match="gave up after 2 attempts \\(last: APIConnectionError") as err:
        backend.generate([CHAT], SamplingParams(), seed=0)
    assert "\n" not in str(err.value)
    assert backend.stats == {"requests": 2, "retries": 1, "cache_hits": 0}


def test_missing_key_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(SublearnError, match="MY_KEY") as err:
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="MY_KEY")
    assert "\n" not in str(err.value)


def test_keyless_endpoint(monkeypatch, tmp_path):
    with FakeOpenAI(api_key="EMPTY") as srv:
        backend = OpenAIBackend("m", base_url=srv.base_url, api_key_env=None)
        assert backend.generate([CHAT], SamplingParams(), seed=0)[0].text


def test_regex_constraint(server, tmp_path):
    params = SamplingParams(regex=numbers_regex(4, 2))
    with pytest.raises(SublearnError, match="cannot be enforced") as err:
        make(server, tmp_path).generate([CHAT], params, seed=0)
    assert "\n" not in str(err.value) and server.counts["total"] == 0
    make(server, tmp_path, constraint="ignore").generate([CHAT], params, seed=0)
    assert "structured_outputs" not in server.state.chat_bodies[-1]
    make(server, tmp_path, constraint="regex").generate([CHAT], params, seed=0)
    assert server.state.chat_bodies[-1]["structured_outputs"] == {"regex": numbers_regex(4, 2)}
    assert numbers_regex(4, 2) == r"\d{1,2}(, \d{1,2}){0,3}"


def test_logprobs_over_api_limit(server, tmp_path):
    with pytest.raises(SublearnError, match="maximum of 20"):
        make(server, tmp_path).generate([CHAT], SamplingParams(logprobs_top_k=32), seed=0)


def test_first_token_logprobs(server, tmp_path):
    server.state.responder = lambda body: Reply(["Yes"], [[("Yes", math.log(0.5)), ("No", math.log(0.2)),
                                                           ("yes", math.log(0.1)), ("Yes", math.log(0.1))]])
    backend = make(server, tmp_path)
    [lps] = backend.first_token_logprobs([CHAT], top_k=4)
    body = server.state.chat_bodies[-1]
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0 and body["top_logprobs"] == 4
    assert lps["Yes"] == pytest.approx(math.log(0.6))  # duplicate texts add up
    assert lps["No"] == pytest.approx(math.log(0.2)) and set(lps) == {"Yes", "No", "yes"}
    backend.first_token_logprobs([CHAT], top_k=50)
    assert server.state.chat_bodies[-1]["top_logprobs"] == 20


def test_api_key_never_leaks(server, tmp_path, caplog, monkeypatch):
    """The key is sent (so this test means something) but never written, logged, repr'd or raised."""
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's included
    backend = make(server, tmp_path)
    server.fail_next(1, status=429, retry_after_ms="1")
    backend.generate([CHAT, CHAT], SamplingParams(logprobs_top_k=3), seed=0)
    backend.first_token_logprobs([CHAT])
    messages = [repr(backend), str(backend.__dict__.get("cache_dir"))]
    server.fail_next(1, status=400)
    with pytest.raises(SublearnError) as err:
        backend.generate([[{"role": "user", "content": "new"}]], SamplingParams(), seed=0)
    messages.append(str(err.value))
    # A wrong key: the server echoes it back, as OpenAI's 401 message does.
    wrong = "sk-wrong-key-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    with pytest.raises(SublearnError, match="authentication failed") as err:
        make(server, tmp_path).generate([[{"role": "user", "content": "other"}]], SamplingParams(), seed=0)
    messages.append(str(err.value))
    assert any(KEY in h for h in server.state.auth_headers)
    written = [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert written, "the cache should hold files"
    for text in [*written, caplog.text, *messages]:
        assert KEY not in text and wrong not in text and "wrong-key" not in text


def test_redact():
    assert redact("key sk-abc123456789 and SECRET", "SECRET") == "key [redacted] and [redacted]"


def test_cache_entries_are_plain_json(server, tmp_path):
    make(server, tmp_path).generate([CHAT], SamplingParams(logprobs_top_k=1), seed=0)
    [entry] = list((tmp_path / "cache").rglob("*.json"))
    data = json.loads(entry.read_text())
    assert set(data) == {"key", "text", "finish_reason", "top_logprobs"} and entry.stem == data["key"]


def test_cache_dir_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBLEARN_API_CACHE", str(tmp_path / "env-cache"))
    backend = OpenAIBackend("gpt-fake", base_url=server.base_url)
    assert backend.cache_dir == tmp_path / "env-cache"
    backend.generate([CHAT], SamplingParams(), seed=0)
    OpenAIBackend("gpt-fake", base_url=server.base_url).generate([CHAT], SamplingParams(), seed=0)
    assert server.counts["POST /v1/chat/completions"] == 1


# --- Batch API ----------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for a kill -9 / Ctrl-C: not an Exception, so nothing catches it."""


@pytest.fixture()
def no_wait(monkeypatch):
    monkeypatch.setattr(api_batch, "_sleep", lambda s: None)


def batch_calls(n_calls: int = 2, size: int = 3) -> list[tuple[list[dict[str, str]], int]]:
    return [([[{"role": "system", "content": "You love owls."}, {"role": "user", "content": f"Go on: {c}, {i}"}]
              for i in range(size)], 100 + c) for c in range(n_calls)]


def generate_all(backend, calls, params):
    return [backend.generate(chats, params, seed) for chats, seed in calls]


def test_batch_answers_equal_the_synchronous_path(server, tmp_path, no_wait):
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=6, logprobs_top_k=3)
    calls = batch_calls()
    sync = generate_all(make(server, tmp_path / "sync"), calls, params)
    sync_bodies = sorted(json.dumps(b, sort_keys=True) for b in server.state.chat_bodies)
    server.state.chat_bodies.clear()

    backend = make(server, tmp_path / "batch")
    assert backend.generate_batched(calls, params, tmp_path / "job") == 6
    assert server.counts["POST /v1/batches"] == 1 and server.counts["POST /v1/chat/completions"] == 6  # sync only
    # The batch carried exactly the synchronous bodies (seed, logprobs, top_logprobs, temperature, ...).
    assert sorted(json.dumps(b, sort_keys=True) for b in server.state.chat_bodies) == sync_bodies
    lines = [json.loads(x) for x in (tmp_path / "job" / "input.jsonl").read_text().splitlines()]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"} and {x["method"] for x in lines} == {"POST"}
    assert len({x["custom_id"] for x in lines}) == 6
    uploaded = server.state.files[server.state.batches["batch_0001"]["body"]["input_file_id"]]
    assert uploaded["purpose"] == "batch"
    # generate now reads every answer from the cache: identical to the synchronous answers, no request.
    assert generate_all(backend, calls, params) == sync
    assert server.counts["POST /v1/chat/completions"] == 6 and backend.stats["cache_hits"] == 6
    assert backend.generate_batched(calls, params, tmp_path / "job") == 0  # all cached: nothing to submit
    state = json.loads((tmp_path / "job" / "batch.json").read_text())
    assert state["batch_id"] == "batch_0001" and state["status"] == "completed" and state["input_file_id"]


def test_batch_resumes_after_an_interrupt_without_a_second_batch(server, tmp_path, monkeypatch):
    params = SamplingParams(max_new_tokens=4)
    calls = batch_calls()
    monkeypatch.setattr(api_batch, "_sleep", lambda s: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):  # interrupted while polling, after the batch was created
        make(server, tmp_path).generate_batched(calls, params, tmp_path / "job")
    state = json.loads((tmp_path / "job" / "batch.json").read_text())
    assert state["batch_id"] == "batch_0001" and state["status"] == "in_progress"
    monkeypatch.setattr(api_batch, "_sleep", lambda s: None)
    backend = make(server, tmp_path)
    backend.generate_batched(calls, params, tmp_path / "job")
    assert server.counts["POST /v1/batches"] == 1 and server.counts["POST /v1/files"] == 1
    generate_all(backend, calls, params)
    assert server.counts["POST /v1/chat/completions"] == 0 and backend.stats["cache_hits"] == 6  # all from the batch


def test_lost_batch_ids_are_found_on_the_server(server, tmp_path, monkeypatch):
    """A crash between a request and storing its answer: the rerun adopts the upload and the batch."""
    calls = batch_calls()
    monkeypatch.setattr(api_batch, "_sleep", lambda s: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        make(server, tmp_path).generate_batched(calls, SamplingParams(), tmp_path / "job")
    path = tmp_path / "job" / "batch.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "input_file_id": None, "batch_id": None,
                                "status": None}))
    monkeypatch.setattr(api_batch, "_sleep", lambda s: None)
    make(server, tmp_path).generate_batched(calls, SamplingParams(), tmp_path / "job")
    assert server.counts["POST /v1/batches"] == 1 and server.counts["POST /v1/files"] == 1
    assert server.counts["GET /v1/files"] == 1 and server.counts["GET /v1/batches"] == 1


@pytest.mark.parametrize("outcome", ["failed", "expired", "cancelled"])
def test_ended_batch_is_a_one_line_error_on_every_rerun(server, tmp_path, no_wait, outcome):
    server.state.batch_outcome = outcome
    calls = batch_calls()
    backend = make(server, tmp_path)
    with pytest.raises(SublearnError, match=f"batch batch_0001 {outcome}") as err:
        backend.generate_batched(calls, SamplingParams(), tmp_path / "job")
    message = str(err.value)
    assert "\n" not in message and "batch.json" in message
    if outcome == "failed":
        assert "line 3 is not a valid request" in message  # the API's own message
    else:
        assert "3 of 6 requests answered" in message  # the half it finished was kept
        assert len(list((tmp_path / "cache").rglob("*.json"))) == 3
    total = server.counts["total"]
    with pytest.raises(SublearnError, match=outcome):  # no silent new batch on rerun
        make(server, tmp_path).generate_batched(calls, SamplingParams(), tmp_path / "job")
    assert server.counts["total"] == total
    if outcome != "failed":  # deleting the record submits only what is missing
        server.state.batch_outcome = "completed"
        (tmp_path / "job" / "batch.json").unlink()
        assert make(server, tmp_path).generate_batched(calls, SamplingParams(), tmp_path / "job") == 3


def test_refused_batch_lines_are_sent_one_by_one(server, tmp_path, no_wait, caplog):
    server.state.batch_line_status = {1: 400}
    calls = batch_calls()
    backend = make(server, tmp_path)
    with caplog.at_level(logging.WARNING):
        backend.generate_batched(calls, SamplingParams(), tmp_path / "job")
    assert "the batch refused 1 of 6 requests (first: HTTP 400: line 1 refused)" in caplog.text
    before = server.counts["POST /v1/chat/completions"]
    generate_all(backend, calls, SamplingParams())
    assert server.counts["POST /v1/chat/completions"] == before + 1 and backend.stats["cache_hits"] == 5


def test_batch_for_other_requests_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(api_batch, "_sleep", lambda s: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        make(server, tmp_path).generate_batched(batch_calls(), SamplingParams(), tmp_path / "job")
    with pytest.raises(SublearnError, match="a batch for other requests is recorded here") as err:
        make(server, tmp_path).generate_batched(batch_calls(size=4), SamplingParams(), tmp_path / "job")
    assert "\n" not in str(err.value)


def test_batch_transient_errors_are_retried_and_key_kept_out(server, tmp_path, no_wait, caplog):
    caplog.set_level(logging.DEBUG)
    server.fail_next(1, status=503, retry_after_ms="1", path_prefix="/v1/batches/")
    server.fail_next(1, status=429, retry_after_ms="1", path_prefix="/v1/files")
    backend = make(server, tmp_path)
    backend.generate_batched(batch_calls(), SamplingParams(), tmp_path / "job")
    assert server.counts["injected"] == 2 and backend.stats["retries"] == 2
    written = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    for text in [*written, caplog.text]:
        assert KEY not in text


def test_batch_needs_a_cache(server, tmp_path, monkeypatch):
    monkeypatch.delenv("SUBLEARN_API_CACHE", raising=False)
    backend = OpenAIBackend("gpt-fake", base_url=server.base_url)
    with pytest.raises(SublearnError, match="needs a cache_dir"):
        backend.generate_batched(batch_calls(), SamplingParams(), tmp_path / "job")
