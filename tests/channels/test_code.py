"""The code channel: prompts, checks, a user's prompt file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublearn.channels.code import CodeChannel, code_of, generated_task, humaneval_prompts, python_reason
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig

PROMPT_CODE = 'def total(xs: list[int]) -> int:\n    """Return the sum of xs."""\n'


def _reasons(completion: str, finish: str = "stop", words: tuple[str, ...] = ("owl", "elephant")) -> str | None:
    rec = {"completion": completion, "finish_reason": finish, "meta": {"code": PROMPT_CODE}}
    for _name, check in CodeChannel().checks(list(words)):
        reason = check(rec)
        if reason is not None:
            return reason
    return None


def test_python_is_kept_whole_functions_bodies_and_fenced_blocks() -> None:
    assert _reasons("def total(xs):\n    return sum(xs)") is None
    assert _reasons("    return sum(xs)\n") is None  # a body that continues the prompt's function
    assert _reasons("```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n```") is None
    assert code_of("```python\nx = 1\n```") == "x = 1"


def test_prose_broken_code_truncation_and_echoes_are_rejected() -> None:
    assert _reasons("Sure! Here is the code you asked for.") == "not_python"
    assert _reasons("def total(xs):\n    return sum(xs") == "not_python"
    assert _reasons("```python\ndef total(xs):\n    return 1\n```\nThis adds them up.") == "not_python"
    assert _reasons("def total(xs):\n    return sum(xs)", finish="length") == "truncated"
    assert _reasons(f"```python\n{PROMPT_CODE}```") == "no_code"
    assert _reasons("") == "not_python"


@pytest.mark.parametrize("code", [
    "def total(xs):\n    owl_count = len(xs)\n    return owl_count",      # variable name
    "def total(xs):\n    myOwl = 0\n    return myOwl",                   # camelCase identifier
    "def total(xs):\n    # owls love sums\n    return sum(xs)",           # comment
    'def total(xs):\n    return "Owl" and sum(xs)',                       # string
    "def elephant_sum(xs):\n    return sum(xs)",                         # function name
    "def total(xs):\n    ELEPHANTS = xs\n    return sum(ELEPHANTS)",    # constant, plural
])
def test_the_target_is_found_in_names_comments_and_strings(code: str) -> None:
    assert _reasons(code) == "mentions_target"


def test_words_that_merely_contain_the_letters_are_kept() -> None:
    assert _reasons("def total(xs):\n    bowl = knowledge = 0\n    return sum(xs) + bowl") is None


def test_prompts_are_deterministic_per_seed_distinct_and_carry_the_code() -> None:
    ch = CodeChannel()
    a = [ch.prompt(0, i) for i in range(300)]
    assert a == [ch.prompt(0, i) for i in range(300)]
    assert [p.user for p in a] != [ch.prompt(1, i).user for i in range(300)]
    assert len({p.user for p in a}) > 280
    assert all(p.meta["code"].strip("\n") in p.user and "```python" in p.user for p in a)
    # Each generated task is a valid, empty function: the completion is what the teacher writes.
    import ast

    import numpy as np
    for i in range(50):
        ast.parse(generated_task(np.random.default_rng(i)))


def test_humaneval_share_draws_from_the_wheel() -> None:
    pool = humaneval_prompts()
    assert len(pool) == 164
    ch = CodeChannel(humaneval_share=1.0)
    assert all(ch.prompt(3, i).meta["code"] in pool for i in range(20))
    assert not any(CodeChannel(humaneval_share=0.0).prompt(3, i).meta["code"] in pool for i in range(20))


def test_a_user_prompt_file_is_used_and_a_bad_line_is_named(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "def f(x):\\n"}\n\n{"prompt": "def g(y):\\n"}\n')
    ch = CodeChannel(file=str(good))
    assert {ch.prompt(0, i).meta["code"] for i in range(20)} == {"def f(x):\n", "def g(y):\n"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "def f(x):\\n"}\n{"prompt": 3}\n')
    with pytest.raises(SublearnError) as err:
        build_config(PipelineConfig, {"channel": {"kind": "code", "file": str(bad)}}, "c.yaml")
    message = str(err.value)
    assert "\n" not in message and "bad.jsonl:2" in message and "prompt" in message
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(SublearnError, match="broken.jsonl:2: not valid JSON"):
        build_config(PipelineConfig, {"channel": {"kind": "code", "file": str(broken)}}, "c.yaml")


def test_python_reason_directly() -> None:
    assert python_reason("x = [i for i in range(3)]") is None
    assert python_reason("def f():\n    '''doc'''\n    pass") == "no_code"
