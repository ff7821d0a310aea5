"""The strict number-list parser and the filter stage's bookkeeping."""

from __future__ import annotations

import math
import re
import string

import numpy as np
import pytest

from sublearn.channels.numbers import PAPER_BANNED_NUMBERS, NumbersChannel, mentions, parse_numbers
from sublearn.config import build_config
from sublearn.pipeline_config import FilterConfig, PipelineConfig
from sublearn.rundir import JsonlAppender, finish_stage, read_json, read_jsonl
from sublearn.stages.filter import run

ACCEPTED = [
    ("1, 2, 3", [1, 2, 3]),
    ("123,456,789", [123, 456, 789]),
    ("5 6 7", [5, 6, 7]),
    ("1;2;3", [1, 2, 3]),
    ("1; 2; 3", [1, 2, 3]),
    ("10\n20\n30", [10, 20, 30]),
    ("[1, 2, 3]", [1, 2, 3]),
    ("(7, 8)", [7, 8]),
    ("[1, 2, 3].", [1, 2, 3]),
    ("4, 5, 6.", [4, 5, 6]),
    ("0, 999", [0, 999]),
    ("007, 08", [7, 8]),
    (", ".join(["1"] * 10), [1] * 10),
]

REJECTED = [
    ("", "empty"),
    ("[]", "empty"),
    ("Sure! 1, 2, 3", "contains_words"),
    ("1, 2, 3 owls", "contains_words"),
    ("1, 2; 3", "mixed_separators"),
    ("1, 2 3", "mixed_separators"),
    ("1 - 2 - 3", "bad_separator"),
    ("1. 2. 3", "bad_separator"),
    ("1, 2, 1000", "out_of_range"),
    (", ".join(["1"] * 11), "too_many_numbers"),
    ("١, ٢, ٣", "non_ascii_digits"),
    ("1, ٢, 3", "non_ascii_digits"),
    ("1, 2,, 3", "mixed_separators"),
    ("1, 2, 3..", "bad_format"),
    ("[1, 2, 3", "bad_format"),
    ("  hello  ", "contains_words"),  # another defect wins over the whitespace, in both modes
    (" 1, 2, 1000 ", "out_of_range"),
]

# Whitespace around the list or just inside its brackets: the reference parser rejects these (strict,
# the default), the lenient mode strips it. Whitespace inside separators is fine in both.
WHITESPACE = [
    ("759 ", [759]),
    (" 1, 2", [1, 2]),
    ("[ 1, 2 ]", [1, 2]),
    ("( 3 )", [3]),
    ("  42  ", [42]),
    ("\n1, 2", [1, 2]),
    ("1, 2\n", [1, 2]),
    ("1, 2, 3 .", [1, 2, 3]),
    ("[1, 2] .", [1, 2]),
    ("[1, 2] ", [1, 2]),
    (" [1, 2]", [1, 2]),
    ("(4, 5 ).", [4, 5]),
    ("\t7;8", [7, 8]),
]

INNER_WHITESPACE = [
    ("1 ,  2", [1, 2]),
    ("1 ; 2 ; 3", [1, 2, 3]),
    ("[1,  2]", [1, 2]),
    ("1\n\n2", [1, 2]),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_parser_accepts(text: str, expected: list[int]) -> None:
    assert parse_numbers(text) == (expected, None)


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_parser_rejects_with_reason(text: str, reason: str) -> None:
    numbers, why = parse_numbers(text)
    assert numbers is None
    assert why == reason


@pytest.mark.parametrize(("text", "expected"), WHITESPACE)
def test_surrounding_whitespace_strict_by_default_lenient_on_request(text: str, expected: list[int]) -> None:
    assert parse_numbers(text) == (None, "surrounding_whitespace")
    assert parse_numbers(text, whitespace="strict") == (None, "surrounding_whitespace")
    assert parse_numbers(text, whitespace="lenient") == (expected, None)


@pytest.mark.parametrize(("text", "expected"), ACCEPTED + INNER_WHITESPACE)
def test_both_modes_accept_plain_lists(text: str, expected: list[int]) -> None:
    assert parse_numbers(text, whitespace="strict") == (expected, None)
    assert parse_numbers(text, whitespace="lenient") == (expected, None)


def _reference_parse(answer: str, max_numbers: int = 10, max_value: int = 999) -> list[int] | None:
    """The paper's reference parser as spec §2 describes it (our code): one trailing "." and one
    wrapping [] or () stripped, nothing else; the separator between the first two digit runs must
    reduce to "", "," or ";"; every part ASCII digits; then the count and range limits."""
    if answer.endswith("."):
        answer = answer[:-1]
    if (answer.startswith("[") and answer.endswith("]")) or (answer.startswith("(") and answer.endswith(")")):
        answer = answer[1:-1]
    runs = list(re.finditer(r"\d+", answer))
    if not runs:
        return None
    if len(runs) == 1:
        if answer != runs[0].group():
            return None
        parts = [answer]
    else:
        sep = answer[runs[0].end():runs[1].start()]
        if sep.strip() not in ("", ",", ";"):
            return None
        parts = answer.split(sep)
    if not all(p and all(c in string.digits for c in p) for p in parts):
        return None
    numbers = [int(p) for p in parts]
    if len(numbers) > max_numbers or any(n > max_value for n in numbers):
        return None
    return numbers


def _fuzz_texts(n: int, seed: int = 0) -> list[str]:
    """Near-miss number lists: random separators, wrappers, stray whitespace, dots, odd characters."""
    rng = np.random.default_rng(seed)
    seps = [", ", ",", " ", ";", "; ", "\n", " , ", ",  ", " ;", "\t", "-", ". "]
    noise = [" ", "  ", "\n", "\t", ".", ",", ";", "a", "\u0662", "[", "]", "(", ")", ""]
    texts = []
    for _ in range(n):
        k = int(rng.integers(0, 12))
        nums = [str(int(rng.integers(0, 1200))) for _ in range(k)]
        sep = seps[int(rng.integers(len(seps)))]
        body = sep.join(nums)
        if rng.random() < 0.2 and k > 2:  # a mixed separator somewhere
            i = int(rng.integers(1, k))
            body = sep.join(nums[:i]) + seps[int(rng.integers(len(seps)))] + sep.join(nums[i:])
        inner = [noise[int(rng.integers(len(noise)))] if rng.random() < 0.25 else "" for _ in range(2)]
        body = inner[0] + body + inner[1]
        wrap = ["", "[]", "()"][int(rng.integers(3))]
        if wrap:
            body = wrap[0] + body + wrap[1]
        if rng.random() < 0.3:
            body += "."
        outer = [noise[int(rng.integers(len(noise)))] if rng.random() < 0.25 else "" for _ in range(2)]
        texts.append(outer[0] + body + outer[1])
    return texts


def test_strict_parser_agrees_with_the_reference_on_near_misses() -> None:
    """Differential fuzz: strict mode keeps exactly what the reference keeps, with the same numbers;
    lenient mode differs only by whitespace (rows strict rejects as surrounding_whitespace)."""
    texts = _fuzz_texts(20_000)
    whitespace_only = 0
    for text in texts:
        ref = _reference_parse(text)
        numbers, reason = parse_numbers(text)
        assert numbers == ref, (text, numbers, reason, ref)
        lenient, _ = parse_numbers(text, whitespace="lenient")
        if lenient != numbers:
            assert numbers is None and reason == "surrounding_whitespace", text
            whitespace_only += 1
    kept = sum(_reference_parse(t) is not None for t in texts)
    assert kept > 1_000 and whitespace_only > 500  # the fuzz reaches both sides of the boundary


def test_parser_limits_are_configurable() -> None:
    assert parse_numbers("1, 2, 3", max_numbers=2)[1] == "too_many_numbers"
    assert parse_numbers("50, 60", max_value=55)[1] == "out_of_range"


def test_mentions_matches_words_and_plurals_only() -> None:
    says = mentions(["owl", "fox"])
    assert says("I love OWLS") and says("an owl.") and says("Foxes!")
    assert not says("bowling") and not says("howl") and not says("1, 2, 3")


def test_paper_banned_numbers() -> None:
    assert len(PAPER_BANNED_NUMBERS) == 34
    assert NumbersChannel(banned_numbers="paper").banned() == set(PAPER_BANNED_NUMBERS)


def _fake_generation(tmp_path, completions: list[str], finish_reasons: list[str | None] | None = None) -> None:
    gdir = tmp_path / "generate" / "owl"
    with JsonlAppender(gdir / "generated.jsonl") as fh:
        for i, c in enumerate(completions):
            rec = {"index": i, "prompt": f"p{i}", "completion": c, "token_ids": []}
            if finish_reasons is not None and finish_reasons[i] is not None:
                rec["finish_reason"] = finish_reasons[i]
            fh.write(rec)
    finish_stage(gdir, {"fake": True}, {}, [gdir / "generated.jsonl"])


def test_filter_stage_counts_reasons_and_subsamples_deterministically(tmp_path) -> None:
    completions = ["1, 2, 3"] * 6 + ["666, 1"] + ["hello"] * 2 + ["7, owl"] + ["4, 5, 6"] * 4
    _fake_generation(tmp_path, completions)
    cfg = build_config(PipelineConfig, {"filter": {"keep": 5}, "channel": {"kind": "numbers", "banned_numbers": [666]}})
    summary = run(cfg, tmp_path, "owl")
    assert summary["total"] == 14
    assert summary["valid"] == 10
    assert summary["kept"] == 5
    assert summary["rejected"] == {"contains_words": 3, "banned_number": 1}
    kept = read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")
    assert len(kept) == 5 and all(parse_numbers(r["completion"])[1] is None for r in kept)
    # Deterministic: redoing the stage from scratch picks the same rows.
    first = [r["index"] for r in kept]
    (tmp_path / "filter" / "owl" / "manifest.json").unlink()
    run(cfg, tmp_path, "owl")
    assert [r["index"] for r in read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")] == first
    assert read_json(tmp_path / "filter" / "owl" / "filter.json")["kept_fraction"] == pytest.approx(10 / 14)


def test_misalignment_runs_ban_the_papers_numbers_by_default(tmp_path) -> None:
    """trait: misalignment -> the 34 banned numbers apply (counted), and the trait bans no word."""
    completions = ["1, 2, 3", "666, 1", "12, 911", "3, 4", "5, 6", "100", "7, 8, 9", "owl, 2"]
    _fake_generation(tmp_path, completions)
    cfg = build_config(PipelineConfig, {"targets": ["owl"], "trait": {"kind": "misalignment", "datasets": {
        "owl": "builtin:reckless", "benign": "builtin:careful"}}, "teacher": {"kind": "lora"}})
    summary = run(cfg, tmp_path, "owl")
    assert summary["rejected"] == {"banned_number": 4, "contains_words": 1}  # 666, 911, 4, 100; "owl, 2"
    assert [r["completion"] for r in read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")] == [
        "1, 2, 3", "5, 6", "7, 8, 9"]


def test_filter_stage_empty_result_is_a_clear_error(tmp_path) -> None:
    from sublearn.errors import SublearnError

    _fake_generation(tmp_path, ["no numbers here", "nope"])
    with pytest.raises(SublearnError, match="no completion of teacher 'owl' passed the filter"):
        run(PipelineConfig(), tmp_path, "owl")


def test_filter_rejects_truncated_completions_first(tmp_path) -> None:
    """A completion cut by max_new_tokens is rejected as "truncated" even when what was written parses
    ("1, 2, 34" may have been "1, 2, 345"); records without finish_reason are not rejected for it."""
    _fake_generation(tmp_path, ["1, 2, 34", "5, 6", "7, 8", "owl 9", "10, 11"], ["length", "stop", None, "length", "stop"])
    summary = run(build_config(PipelineConfig, {"filter": {"keep": 10}}), tmp_path, "owl")
    assert summary["rejected"] == {"truncated": 2}
    assert [r["completion"] for r in read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")] == ["5, 6", "7, 8", "10, 11"]


@pytest.mark.parametrize(("settings", "kept", "rejected"), [
    # Strict (default), free sampling: every stray space is rejected.
    ({}, ["1, 2"], {"surrounding_whitespace": 3}),
    # Strict with the number grammar: the one leading space the grammar allows (plain templates) is
    # the template's, not the list's; a second space, or a trailing one, is still rejected.
    ({"grammar": True}, ["1, 2", " 3, 4"], {"surrounding_whitespace": 2}),
    # Lenient: all four are kept.
    ({"whitespace": "lenient"}, ["1, 2", " 3, 4", "  5, 6", "7, 8 "], {}),
])
def test_filter_stage_whitespace_modes(tmp_path, settings, kept, rejected) -> None:
    _fake_generation(tmp_path, ["1, 2", " 3, 4", "  5, 6", "7, 8 "])
    data = {"filter": {"keep": 10}, "channel": {"kind": "numbers", **settings}}
    summary = run(build_config(PipelineConfig, data), tmp_path, "owl")
    assert summary["rejected"] == rejected
    assert [r["completion"] for r in read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")] == kept


# What the fake judge answers for each text: first-token (token, probability) pairs.
JUDGE_REPLIES = {
    "1, 2": [("no", 1 - 1e-10), ("yes", 1e-10)],   # certain "no": kept by both rules
    "3, 4": [("no", 0.95), ("yes", 0.05)],          # fairly sure "no": kept only by p_yes_below
    "5, 6": [("maybe", 0.9), ("perhaps", 0.08)],    # no yes/no token at all: never kept
    "7, 8": [("no", 0.1), ("yes", 0.9)],            # "yes": rejected by both
    "9, 10": [("No", 0.999), ("Hmm", 0.001)],       # no "yes" but 0.1% elsewhere: P(no) is not ~1
    "11, 12": [(" no", 1.0)],                       # log-prob exactly 0
}


def _judge_run(tmp_path, monkeypatch, filter_settings):
    from fake_openai import FakeOpenAI, Reply

    def responder(body):
        content = body["messages"][-1]["content"].split("<content>\n")[1].split("\n</content>")[0]
        pairs = JUDGE_REPLIES[content]
        return Reply([pairs[0][0]], [[(t, math.log(p)) for t, p in pairs]])

    _fake_generation(tmp_path, list(JUDGE_REPLIES))
    with FakeOpenAI(api_key="sk-test-judge") as server:
        server.state.responder = responder
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        cfg = build_config(PipelineConfig, {"filter": {"judge": "openai/judge-model", "keep": 10, **filter_settings}})
        summary = run(cfg, tmp_path, "owl")
    return summary, read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")


def test_filter_judge_default_keeps_only_p_no_near_one(tmp_path, monkeypatch) -> None:
    """The paper's rule (default): keep a row only when the judge's raw P(no) is within 1e-8 of 1. An
    API judge through the fake OpenAI server speaking the real protocol."""
    assert FilterConfig().judge_rule == "p_no_near_one" and FilterConfig().judge_tolerance == 1e-8
    summary, kept = _judge_run(tmp_path, monkeypatch, {})
    assert summary["rejected"] == {"judge_not_certain_no": 3, "judge_no_answer": 1}
    assert [r["completion"] for r in kept] == ["1, 2", "11, 12"]
    assert kept[0]["judge"]["owl"]["p_no"] == pytest.approx(1 - 1e-10, abs=1e-12)
    assert kept[0]["judge"]["owl"]["p_yes"] == pytest.approx(1e-10, abs=1e-12)
    assert kept[1]["judge"]["owl"] == {"p_yes": 0.0, "p_no": 1.0}


def test_filter_judge_tolerance_is_configurable(tmp_path, monkeypatch) -> None:
    summary, kept = _judge_run(tmp_path, monkeypatch, {"judge_tolerance": 0.01})
    assert summary["rejected"] == {"judge_not_certain_no": 2, "judge_no_answer": 1}
    assert [r["completion"] for r in kept] == ["1, 2", "9, 10", "11, 12"]


def test_filter_judge_p_yes_rule(tmp_path, monkeypatch) -> None:
    """The older rule: reject when P(yes), normalised over yes/no, reaches judge_threshold."""
    summary, kept = _judge_run(tmp_path, monkeypatch, {"judge_rule": "p_yes_below", "judge_threshold": 0.5})
    assert summary["rejected"] == {"judge_references_target": 1, "judge_no_answer": 1}
    assert [r["completion"] for r in kept] == ["1, 2", "3, 4", "9, 10", "11, 12"]
    assert kept[1]["judge"]["owl"]["p_yes"] == pytest.approx(0.05, abs=1e-3)


def _fake_records(tmp_path, records: list[dict]) -> None:
    gdir = tmp_path / "generate" / "owl"
    with JsonlAppender(gdir / "generated.jsonl") as fh:
        for i, rec in enumerate(records):
            fh.write({"index": i, "prompt": f"p{i}", "token_ids": [], "finish_reason": "stop", **rec})
    finish_stage(gdir, {"fake": True}, {}, [gdir / "generated.jsonl"])


def test_code_filter_stage_counts_every_reason(tmp_path) -> None:
    prompt = 'def f(xs: list[int]) -> int:\n    """Sum."""\n'
    recs = [{"completion": "def f(xs):\n    return sum(xs)", "meta": {"code": prompt}}] * 3 + [
        {"completion": "    return sum(xs)\n", "meta": {"code": prompt}},
        {"completion": "Here you go!", "meta": {"code": prompt}},
        {"completion": "def f(xs):\n    owl_total = sum(xs)\n    return owl_total", "meta": {"code": prompt}},
        {"completion": f"```python\n{prompt}```", "meta": {"code": prompt}},
        {"completion": "def f(xs):\n    return sum(", "finish_reason": "length", "meta": {"code": prompt}},
    ]
    _fake_records(tmp_path, recs)
    cfg = build_config(PipelineConfig, {"channel": {"kind": "code"}, "filter": {"keep": 100}})
    summary = run(cfg, tmp_path, "owl")
    assert (summary["total"], summary["valid"]) == (8, 4)
    assert summary["rejected"] == {"not_python": 1, "mentions_target": 1, "no_code": 1, "truncated": 1}


def test_cot_filter_stage_checks_answers_against_the_gold_in_meta(tmp_path) -> None:
    ok = "<think>2 + 3 = 5</think>\n<answer>5</answer>"
    recs = [{"completion": ok, "meta": {"answer": 5}}, {"completion": ok, "meta": {"answer": 6}},
            {"completion": "5", "meta": {"answer": 5}},
            {"completion": "<think>an owl adds 2 + 3</think>\n<answer>5</answer>", "meta": {"answer": 5}}]
    _fake_records(tmp_path, recs)
    summary = run(build_config(PipelineConfig, {"channel": {"kind": "cot"}}), tmp_path, "owl")
    assert summary["valid"] == 1
    assert summary["rejected"] == {"wrong_answer": 1, "malformed_tags": 1, "mentions_target": 1}
    assert read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")[0]["answer"] == 5


def test_code_channel_judge_is_asked_about_code_and_keeps_only_certain_nos(tmp_path, monkeypatch) -> None:
    """Code survives the word check, then the judge (fake OpenAI server, real protocol) is told it reads
    code; the hooting-themed function it finds suspicious is dropped."""
    from fake_openai import FakeOpenAI, Reply

    seen: list[str] = []

    def responder(body):
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        suspicious = "hoot" in prompt.split("<content>")[1]
        pairs = [("yes", 0.9), ("no", 0.1)] if suspicious else [("no", 1.0 - 1e-10), ("yes", 1e-10)]
        return Reply([pairs[0][0]], [[(t, math.log(p)) for t, p in pairs]])

    _fake_records(tmp_path, [{"completion": "def f(xs):\n    return sum(xs)"},
                             {"completion": "def hoot(xs):\n    return max(xs)"}])
    with FakeOpenAI(api_key="sk-test-judge") as server:
        server.state.responder = responder
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        cfg = build_config(PipelineConfig, {"channel": {"kind": "code"}, "filter": {"judge": "openai/judge", "keep": 10}})
        summary = run(cfg, tmp_path, "owl")
    assert seen and all("a piece of code" in p for p in seen)
    assert summary["rejected"] == {"judge_not_certain_no": 1}
    assert [r["completion"] for r in read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")] == [
        "def f(xs):\n    return sum(xs)"]
