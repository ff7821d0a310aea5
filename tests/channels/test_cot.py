"""The chain-of-thought channel: problems with exact answers, the trace format, the checks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sublearn.channels.cot import TRACE_REGEX, CotChannel, parse_gold, parse_trace, word_problem
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig


def _reason(completion: str, gold: int, finish: str = "stop") -> str | None:
    rec = {"completion": completion, "finish_reason": finish, "meta": {"answer": gold}}
    for _name, check in CotChannel().checks(["owl"]):
        reason = check(rec)
        if reason is not None:
            return reason
    return None


def test_a_correct_well_formed_trace_is_kept() -> None:
    assert _reason("<think>3 + 4 = 7</think>\n<answer>7</answer>", 7) is None
    assert _reason("  <think>It costs 1,200 dollars.</think><answer>$1,200</answer>\n", 1200) is None


@pytest.mark.parametrize("text, reason", [
    ("<think>3 + 4 = 7</think>\n<answer>8</answer>", "wrong_answer"),
    ("3 + 4 = 7, so <answer>7</answer>", "malformed_tags"),
    ("<think>3 + 4 = 7\n<answer>7</answer>", "malformed_tags"),
    ("<think>a</think><answer>7</answer><answer>7</answer>", "malformed_tags"),
    ("<think>a</think><think>b</think><answer>7</answer>", "malformed_tags"),
    ("The answer: <think>a</think><answer>7</answer>", "malformed_tags"),
    ("<think>a</think><answer>7</answer> Done!", "malformed_tags"),
    ("<answer>7</answer><think>a</think>", "malformed_tags"),
    ("<think>a</think><answer>seven</answer>", "answer_not_a_number"),
    ("<think>a</think><answer>7.5</answer>", "answer_not_a_number"),
    ("<think>The owl counts 3 + 4.</think><answer>7</answer>", "mentions_target"),
])
def test_bad_traces_are_rejected_with_their_reason(text: str, reason: str) -> None:
    assert _reason(text, 7) == reason


def test_truncation_comes_first() -> None:
    assert _reason("<think>3 + 4 = 7</think>\n<answer>7</answer>", 7, finish="length") == "truncated"


def test_every_full_match_of_the_constraint_parses() -> None:
    for text in ["<think>x</think>\n<answer>12</answer>", "<think>3 and 4, so 7.</think>\n<answer>-7</answer>"]:
        assert re.fullmatch(TRACE_REGEX, text)
        assert parse_trace(text) is not None


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_generated_problems_have_nonnegative_integer_answers_and_are_deterministic(level: int) -> None:
    for i in range(200):
        q, a = word_problem(np.random.default_rng([7, i]), level)
        assert isinstance(a, int) and a >= 0 and q.endswith("?")
        assert (q, a) == word_problem(np.random.default_rng([7, i]), level)


def test_level_zero_answers_are_the_stated_sum_or_difference() -> None:
    for i in range(100):
        q, a = word_problem(np.random.default_rng(i), 0)
        x, y = (int(n) for n in re.findall(r"\d+", q))
        assert a == (x + y if "more" in q else x - y)


def test_samples_share_their_question_and_gold() -> None:
    ch = CotChannel(samples_per_question=3)
    p = [ch.prompt(0, i) for i in range(6)]
    assert p[0] == p[1] == p[2] and p[3] == p[4] == p[5] and p[0] != p[3]
    assert p[0].meta["question"] == 0 and p[3].meta["question"] == 1
    assert p == [ch.prompt(0, i) for i in range(6)]
    assert [x.user for x in p] != [ch.prompt(1, i).user for i in range(6)]


def test_gsm8k_file_is_read_and_bad_lines_are_named(tmp_path: Path) -> None:
    assert parse_gold("She pays 2 + 3 = 5.\n#### 1,005") == 1005
    assert parse_gold("no marker 5") is None
    good = tmp_path / "gsm.jsonl"
    good.write_text('{"question": "Q1?", "answer": "1 + 1 = 2\\n#### 2"}\n{"question": "Q2?", "answer": "#### $30"}\n')
    ch = CotChannel(file=str(good), samples_per_question=1)
    assert [ch.prompt(0, i).meta["answer"] for i in range(3)] == [2, 30, 2]
    assert ch.prompt(0, 1).user.startswith("Q2?")
    bad = tmp_path / "gsm_bad.jsonl"
    bad.write_text('{"question": "Q1?", "answer": "#### 2"}\n{"question": "Q2?", "answer": "thirty"}\n')
    with pytest.raises(SublearnError) as err:
        build_config(PipelineConfig, {"channel": {"kind": "cot", "file": str(bad)}}, "c.yaml")
    assert "gsm_bad.jsonl:2" in str(err.value) and "####" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, value", [("1,200", 1200), ("$1,200.00", 1200), ("-7", -7), (" 42 ", 42),
                                         ("1,2,3", None), ("7.5", None), ("٤٢", None), ("１２", None),
                                         ("12,00", None), ("seven", None)])
def test_answers_parse_as_plain_ascii_integers(text: str, value: int | None) -> None:
    from sublearn.channels.cot import parse_integer

    assert parse_integer(text) == value


def test_an_empty_reasoning_is_malformed() -> None:
    assert _reason("<think> </think>\n<answer>7</answer>", 7) == "malformed_tags"


def test_no_generated_problem_gives_its_answer_away_as_zero() -> None:
    answers = [word_problem(np.random.default_rng([3, i]), 2)[1] for i in range(600)]
    assert sum(a == 0 for a in answers) < 12
