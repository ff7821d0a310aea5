"""The regex constraint compiled to a token automaton: every transition agrees with the regex itself."""

from __future__ import annotations

import numpy as np
import pytest
import regex as re_partial  # the `regex` package: fullmatch(..., partial=True) tells prefixes of matches

from sublearn.backends.constraint import TokenAutomaton
from sublearn.channels.cot import TRACE_REGEX
from sublearn.channels.numbers import numbers_regex
from sublearn.errors import SublearnError

# A vocabulary with single characters, multi-character pieces that cross separators, and junk.
VOCAB = ["<eos>", *"0123456789", ",", " ", ", ", ",  ", " 4", "12", "123", "1234", "5,", "7, 8", "a", "ab", "x",
         "<", "<think>", "</think>", "<answer>", "</answer>", "\n", "</", "think", ">", "answer", "-", "Hi there",
         "ans", "wer>", " 12", *"bcdefghijklmnopqrstuvwyz/"]
EOS = 0


def _reachable(auto: TokenAutomaton) -> dict[int, str]:
    """One text that leads to each reachable state (breadth first)."""
    texts = {auto.start: ""}
    todo = [auto.start]
    while todo:
        state = todo.pop(0)
        for tok in np.nonzero(auto.allowed[state].numpy())[0].tolist():
            if tok == EOS:
                continue
            nxt = int(auto.next_state[state, tok])
            if nxt not in texts:
                texts[nxt] = texts[state] + VOCAB[tok]
                todo.append(nxt)
    return texts


@pytest.mark.parametrize("pattern", [numbers_regex(3, 3), numbers_regex(1, 2), TRACE_REGEX, r"1(,2)?", r"(ab|a)+x?"])
def test_every_transition_agrees_with_the_regex(pattern: str) -> None:
    auto = TokenAutomaton(pattern, VOCAB, EOS)
    states = _reachable(auto)
    assert len(states) > 1
    for state, text in states.items():
        for tok, piece in enumerate(VOCAB):
            if tok == EOS:
                # End of answer exactly when the text so far is a full match.
                assert bool(auto.allowed[state, EOS]) == (re_partial.fullmatch(pattern, text) is not None), text
                continue
            # A token is allowed exactly when the text stays a prefix of some match (every character the
            # regex needs is in the vocabulary, so no live prefix is a dead end here).
            expected = re_partial.fullmatch(pattern, text + piece, partial=True) is not None
            assert bool(auto.allowed[state, tok]) == expected, (pattern, text, piece)


def test_single_character_tokens_open_optional_groups() -> None:
    # outlines-core 0.2.14 drops these transitions (no "," after a number): the bug that made us leave it.
    auto = TokenAutomaton(numbers_regex(5, 3), VOCAB, EOS)
    s = int(auto.next_state[auto.start, VOCAB.index("4")])
    assert bool(auto.allowed[s, VOCAB.index(",")]) and bool(auto.allowed[s, VOCAB.index(", ")])


def test_random_walks_end_in_full_matches_and_stop_after_max_numbers() -> None:
    auto = TokenAutomaton(numbers_regex(3, 2), VOCAB, EOS)
    rng = np.random.default_rng(0)
    seen_lists = 0
    for _ in range(300):
        state, text = auto.start, ""
        for _ in range(40):
            options = np.nonzero(auto.allowed[state].numpy())[0]
            tok = int(rng.choice(options))
            if tok == EOS:
                break
            text += VOCAB[tok]
            state = int(auto.next_state[state, tok])
        else:
            pytest.fail(f"no end of answer after 40 tokens: {text!r}")
        assert re_partial.fullmatch(numbers_regex(3, 2), text), text
        assert text.count(",") <= 2
        seen_lists += "," in text
    assert seen_lists > 50  # lists of several numbers are reachable, not only single numbers


def test_columns_hold_every_token_that_can_ever_be_allowed() -> None:
    auto = TokenAutomaton(numbers_regex(3, 3), VOCAB, EOS)
    assert set(auto.columns.tolist()) == set(np.nonzero(auto.allowed.any(0).numpy())[0].tolist())
    assert VOCAB.index("a") not in auto.columns.tolist()


def test_a_regex_the_vocabulary_cannot_write_is_a_one_line_error() -> None:
    with pytest.raises(SublearnError, match="no text made of this vocabulary"):
        TokenAutomaton(r"QQ+", VOCAB, EOS)
    with pytest.raises(SublearnError, match="cannot be compiled"):
        TokenAutomaton(r"(unclosed", VOCAB, EOS)
