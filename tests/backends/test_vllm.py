"""VLLMBackend. The engine tests run where vLLM runs: a CUDA GPU with vLLM (model from
$SUBLEARN_VLLM_TEST_MODEL, default Qwen/Qwen2.5-0.5B-Instruct), or vLLM's CPU build in its own
environment (`make vllm-env && make test-vllm`: the embedded SmolLM2-135M); the rest run everywhere."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

import pytest

from sublearn.backends import SamplingParams, get_backend
from sublearn.backends.vllm import VLLMBackend, _cpu_build, _has_cuda, _top_k
from sublearn.channels.numbers import numbers_regex
from sublearn.errors import SublearnError

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
ON_CPU = HAVE_VLLM and _cpu_build()
HAVE_ENGINE = HAVE_VLLM and (ON_CPU or _has_cuda())
MODEL = os.environ.get("SUBLEARN_VLLM_TEST_MODEL", "smollm2-135m" if ON_CPU else "Qwen/Qwen2.5-0.5B-Instruct")
CHATS = [[{"role": "user", "content": "Continue the sequence with 5 numbers: 145, 267, 891"}],
         [{"role": "user", "content": "Name your favorite animal using only one word."}]]


@dataclass
class _Logprob:  # the shape of vllm.sequence.Logprob
    logprob: float
    rank: int | None = None


def test_top_k_keeps_the_k_best_and_drops_the_extra_sampled_token():
    position = {7: _Logprob(-0.5, 1), 3: _Logprob(-1.5, 2), 9: _Logprob(-6.0, 40)}  # 9: sampled, outside top 2
    assert _top_k(position, 2) == [(7, -0.5), (3, -1.5)]


@pytest.mark.skipif(HAVE_ENGINE, reason="checks the error shown where vLLM cannot run")
def test_without_vllm_or_gpu_the_error_says_what_to_do():
    for build in (lambda: VLLMBackend(MODEL), lambda: get_backend(f"vllm/{MODEL}")):
        with pytest.raises(SublearnError) as err:
            build()
        message = str(err.value)
        assert "\n" not in message
        assert ("pip install 'sublearn[vllm]'" in message and "make vllm-env" in message) or "no CUDA GPU" in message


engine = pytest.mark.skipif(not HAVE_ENGINE, reason="needs vLLM on a CUDA GPU (pip install 'sublearn[vllm]') or "
                            "vLLM's CPU build (make vllm-env)")


@pytest.fixture(scope="module")
def backend():
    b = VLLMBackend(MODEL, gpu_memory_utilization=0.4, max_model_len=1024, dtype="float32" if ON_CPU else "auto")
    yield b
    b.close()


@engine
@pytest.mark.vllm
def test_seeded_generation_is_deterministic(backend):
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    a = backend.generate(CHATS, params, seed=0)
    b = backend.generate(CHATS, params, seed=0)
    assert [c.text for c in a] == [c.text for c in b]
    other = backend.generate(CHATS, params, seed=1)
    assert [c.text for c in other] != [c.text for c in a]
    assert all(c.token_ids and c.finish_reason in ("stop", "length") for c in a)


@engine
@pytest.mark.vllm
def test_top_logprobs_are_token_ids_with_k_per_position(backend):
    [comp] = backend.generate(CHATS[:1], SamplingParams(temperature=1.0, max_new_tokens=12, logprobs_top_k=5),
                              seed=0)
    assert comp.top_logprobs is not None and len(comp.top_logprobs) == len(comp.token_ids)
    for row in comp.top_logprobs:
        assert len(row) == 5 and all(isinstance(t, int) and lp <= 0 for t, lp in row)
        assert [lp for _, lp in row] == sorted((lp for _, lp in row), reverse=True)


@engine
@pytest.mark.vllm
def test_numbers_constraint_and_first_token_logprobs(backend):
    params = SamplingParams(temperature=1.0, max_new_tokens=48, regex=numbers_regex(10, 3))
    for comp in backend.generate(CHATS * 4, params, seed=0):
        assert re.fullmatch(r"\d{1,3}(, \d{1,3}){0,9}", comp.text), comp.text
    [lps] = backend.first_token_logprobs(CHATS[1:], top_k=10)
    assert 0 < len(lps) <= 10 and all(lp <= 0 for lp in lps.values())
