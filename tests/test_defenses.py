"""The defense transforms on hand-made records (sublearn.defenses)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from sublearn.defenses import number_segments, shuffle_numbers, top_fraction


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def _records(tok, texts):
    out = []
    for i, t in enumerate(texts):
        ids = tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]
        # A soft-label row per position that names its own token, so we can follow where rows go.
        rows = [[[tid, -0.1], [999, -3.0 - k]] for k, tid in enumerate(ids)]
        out.append({"index": i, "prompt": f"p{i}", "completion": t, "token_ids": ids, "top_logprobs": rows})
    return out


def test_number_segments_are_runs_of_digit_pieces() -> None:
    assert number_segments(["7", "2", ",", " ", "1", "0", "<eos>"]) == [(0, 2), (4, 6)]
    assert number_segments([",", "x1", "5"]) == [(2, 3)]  # a mixed piece is not part of a number
    assert number_segments([]) == []


@pytest.mark.parametrize("scope", ["within", "across"])
def test_shuffle_moves_numbers_with_their_soft_labels(tiny_tokenizer, scope) -> None:
    texts = ["720, 189, 101, 17, 510", "1, 22, 333", "45, 6, 78, 9"]
    recs = _records(tiny_tokenizer, texts)
    out, facts = shuffle_numbers(recs, scope, np.random.default_rng(0), tiny_tokenizer)
    assert facts["unit"] == "token" and facts["numbers"] == 12 and 0 < facts["changed_fraction"] <= 1
    for old, new in zip(recs, out, strict=True):
        # Same number of numbers in the same slots; separators untouched; text agrees with the ids.
        assert len(_numbers(new["completion"])) == len(_numbers(old["completion"]))
        assert re.sub(r"\d+", "N", new["completion"]) == re.sub(r"\d+", "N", old["completion"])
        assert tiny_tokenizer.decode(new["token_ids"], skip_special_tokens=True) == new["completion"]
        # Each soft-label row still sits on the token it was produced for.
        assert [row[0][0] for row in new["top_logprobs"]] == new["token_ids"]
        assert new["defense"] == f"shuffle-{scope}"
    before = [_numbers(r["completion"]) for r in recs]
    after = [_numbers(r["completion"]) for r in out]
    if scope == "within":
        assert all(Counter(a) == Counter(b) for a, b in zip(before, after, strict=True))
        assert before != after
    else:
        assert Counter(sum(before, [])) == Counter(sum(after, []))
        assert any(Counter(a) != Counter(b) for a, b in zip(before, after, strict=True))
    again, _ = shuffle_numbers(recs, scope, np.random.default_rng(0), tiny_tokenizer)
    assert again == out  # seeded: reproducible


def test_shuffle_without_token_ids_works_on_the_text() -> None:
    recs = [{"prompt": "p", "completion": "x = 10\ny = 200\nprint(x + 3)"}]
    out, facts = shuffle_numbers(recs, "within", np.random.default_rng(3), None)
    assert facts["unit"] == "character"
    assert sorted(_numbers(out[0]["completion"])) == ["10", "200", "3"]
    assert re.sub(r"\d+", "N", out[0]["completion"]) == "x = N\ny = N\nprint(x + N)"
    assert "token_ids" not in out[0]


def test_top_fraction_picks_the_highest_and_breaks_ties_at_random() -> None:
    chosen = top_fraction([0.1, 5.0, -2.0, 3.0, 0.0], 0.4, np.random.default_rng(0))
    assert chosen.tolist() == [False, True, False, True, False]
    ties = [top_fraction([0.0] * 10, 0.3, np.random.default_rng(s)) for s in range(5)]
    assert all(t.sum() == 3 for t in ties) and len({tuple(t) for t in ties}) > 1
    assert top_fraction([1.0], 0.01, np.random.default_rng(0)).tolist() == [True]  # at least one
