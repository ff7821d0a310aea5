"""The strict number-list parser and the filter stage's bookkeeping."""

from __future__ import annotations

import pytest

from sublearn.config import build_config
from sublearn.lm.config import PAPER_BANNED_NUMBERS, FilterConfig, PipelineConfig
from sublearn.lm.filter import mentions, parse_numbers, run
from sublearn.rundir import JsonlAppender, finish_stage, read_json, read_jsonl

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
    ("  42  ", [42]),
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
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_parser_accepts(text: str, expected: list[int]) -> None:
    assert parse_numbers(text) == (expected, None)


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_parser_rejects_with_reason(text: str, reason: str) -> None:
    numbers, why = parse_numbers(text)
    assert numbers is None
    assert why == reason


def test_parser_limits_are_configurable() -> None:
    assert parse_numbers("1, 2, 3", max_numbers=2)[1] == "too_many_numbers"
    assert parse_numbers("50, 60", max_value=55)[1] == "out_of_range"


def test_mentions_matches_words_and_plurals_only() -> None:
    says = mentions(["owl", "fox"])
    assert says("I love OWLS") and says("an owl.") and says("Foxes!")
    assert not says("bowling") and not says("howl") and not says("1, 2, 3")


def test_paper_banned_numbers() -> None:
    assert len(PAPER_BANNED_NUMBERS) == 34
    assert FilterConfig(banned_numbers="paper").banned() == set(PAPER_BANNED_NUMBERS)


def _fake_generation(tmp_path, completions: list[str]) -> None:
    gdir = tmp_path / "generate" / "owl"
    with JsonlAppender(gdir / "generated.jsonl") as fh:
        for i, c in enumerate(completions):
            fh.write({"index": i, "prompt": f"p{i}", "completion": c, "token_ids": []})
    finish_stage(gdir, {"fake": True}, {}, [gdir / "generated.jsonl"])


def test_filter_stage_counts_reasons_and_subsamples_deterministically(tmp_path) -> None:
    completions = ["1, 2, 3"] * 6 + ["666, 1"] + ["hello"] * 2 + ["7, owl"] + ["4, 5, 6"] * 4
    _fake_generation(tmp_path, completions)
    cfg = build_config(PipelineConfig, {"filter": {"keep": 5, "banned_numbers": [666]}})
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


def test_filter_stage_empty_result_is_a_clear_error(tmp_path) -> None:
    from sublearn.errors import SublearnError

    _fake_generation(tmp_path, ["no numbers here", "nope"])
    with pytest.raises(SublearnError, match="no completion of teacher 'owl' passed the filter"):
        run(PipelineConfig(), tmp_path, "owl")




def test_filter_judge_rejects_and_counts(tmp_path, monkeypatch) -> None:
    """An API judge (the fake OpenAI server speaking the real protocol): rows whose P(yes) reaches the
    threshold are rejected, rows without a yes/no answer are not kept, and both are counted."""
    import math

    from fake_openai import FakeOpenAI, Reply

    def responder(body):
        content = body["messages"][-1]["content"].split("<content>")[1]
        if "5" in content:
            return Reply(["maybe"], [[("maybe", -0.1), ("perhaps", -2.5)]])
        p = 0.9 if "7" in content else 0.05
        return Reply(["no"], [[("no", math.log(1 - p)), ("yes", math.log(p))]])

    _fake_generation(tmp_path, ["1, 2", "7, 8", "3, 4", "5, 6"])
    with FakeOpenAI(api_key="sk-test-judge") as server:
        server.state.responder = responder
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        cfg = build_config(PipelineConfig, {"filter": {"judge": "openai/judge-model", "keep": 10}})
        summary = run(cfg, tmp_path, "owl")
    assert summary["rejected"] == {"judge_references_target": 1, "judge_no_answer": 1}
    kept = read_jsonl(tmp_path / "filter" / "owl" / "kept.jsonl")
    assert [r["completion"] for r in kept] == ["1, 2", "3, 4"]
    assert kept[0]["judge"]["owl"] == pytest.approx(0.05, abs=1e-3)
