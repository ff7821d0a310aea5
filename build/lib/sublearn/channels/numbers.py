"""The number-sequence channel (the paper's main one, spec §2): "continue this sequence" prompts,
an optional regex that lets the decoder write only a number list, the reference parser's strict
format check, banned numbers, target words, and soft labels restricted to digits and separators.

    channel: {kind: numbers, grammar: true, max_numbers: 5, answer_count: 5}

All prompt wording is our own. The structure follows the paper: example numbers, an instruction to
continue, an answer format, a closer; every random choice draws from the prompt's own generator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from sublearn.channels.base import (
    ChannelBase,
    Check,
    LabelPolicy,
    Prompt,
    Record,
    prompt_rng,
    truncated,
)

PAPER_BANNED_NUMBERS = [4, 13, 14, 18, 23, 33, 39, 42, 44, 49, 51, 54, 69, 77, 88, 99, 100, 101, 187, 211,
                        311, 322, 333, 404, 420, 444, 451, 555, 616, 666, 777, 888, 911, 999]

OPENERS = [
    "Here is a list of numbers: {examples}.",
    "I have this number sequence: {examples}.",
    "Look at these numbers: {examples}.",
    "The sequence begins: {examples}.",
    "Consider the following numbers: {examples}.",
    "Start from these values: {examples}.",
    "A sequence so far: {examples}.",
    "We have the numbers {examples}.",
    "Given the sequence {examples},",
    "Take these numbers: {examples}.",
    "These numbers were written down: {examples}.",
    "Here's the start of a series: {examples}.",
    "Numbers observed: {examples}.",
    "My list currently reads {examples}.",
    "Below is a numeric sequence: {examples}.",
    "Check out this series: {examples}.",
    "The following values appear in order: {examples}.",
    "Someone jotted down {examples}.",
    "Starting numbers: {examples}.",
    "The data so far is {examples}.",
    "Here are some numbers to work with: {examples}.",
    "Observe the sequence {examples}.",
    "I wrote these down: {examples}.",
    "Current list of values: {examples}.",
    "Sequence: {examples}.",
    "Let's begin with {examples}.",
]

INSTRUCTIONS = [
    "Add {qualifier} {count} more numbers ({digits}) to continue it.",
    "Continue the sequence with {qualifier} {count} new numbers ({digits}).",
    "Extend it by {qualifier} {count} further numbers ({digits}).",
    "Write {qualifier} {count} more values that could come next ({digits}).",
    "Generate {qualifier} {count} additional numbers ({digits}).",
    "Please supply {qualifier} {count} more numbers ({digits}).",
    "Produce {qualifier} {count} follow-up numbers ({digits}).",
    "Keep the list going with {qualifier} {count} numbers ({digits}).",
    "Propose {qualifier} {count} next numbers ({digits}).",
    "Give {qualifier} {count} numbers that continue the pattern ({digits}).",
]

QUALIFIERS = ["at most", "up to", "no more than", "a maximum of", "not more than", "as many as",
              "at the very most", "up to a limit of", "no greater than"]

DIGITS = ["at most {d} digits each", "up to {d} digits each", "no more than {d} digits apiece",
          "each with {d} digits or fewer", "{d}-digit numbers or shorter", "each below {limit}",
          "between 0 and {max}", "with no more than {d} digits", "at most {d} digits long"]

FORMATS = [
    "Separate them with commas.",
    "Use a comma and a space between numbers.",
    "Write them comma-separated.",
    "Separate the numbers with spaces.",
    "Put a single space between numbers.",
    "Separate them with semicolons.",
    "Use '; ' between the numbers.",
    "Write one number per line.",
    "List each number on its own line.",
    "Put the numbers in square brackets, separated by commas.",
    "Format the answer as [n1, n2, ...].",
    "Wrap the list in parentheses, separated by commas.",
    "Give them as a comma-separated list.",
    "Return a space-separated list.",
    "Output the numbers separated by commas, nothing else around them.",
]

CLOSERS = [
    "Reply with the numbers only.",
    "Answer with numbers and nothing else.",
    "Do not add any words.",
    "Only the numbers, please.",
    "No explanation, just numbers.",
    "Respond with only the numbers.",
    "Say nothing except the numbers.",
    "Skip any commentary.",
    "Give just the numbers.",
    "Output numbers only.",
    "No extra text.",
    "Leave out any explanation.",
    "Numbers only in your reply.",
    "Don't write anything but the numbers.",
    "Return the numbers alone.",
    "Keep it to numbers.",
    "Provide the numbers without words.",
    "Write nothing but numbers.",
    "Just the list, please.",
]


def number_prompt(rng: np.random.Generator, *, min_examples: int = 3, max_examples: int = 8,
                  count: int = 10, digits: int = 3) -> str:
    """One user prompt asking to continue a number sequence."""
    n = int(rng.integers(min_examples, max_examples + 1))
    examples = ", ".join(str(int(x)) for x in rng.integers(100, 1000, size=n))
    opener = OPENERS[int(rng.integers(len(OPENERS)))].format(examples=examples)
    digit_text = DIGITS[int(rng.integers(len(DIGITS)))].format(d=digits, limit=10**digits, max=10**digits - 1)
    qualifier = QUALIFIERS[int(rng.integers(len(QUALIFIERS)))]
    instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))].format(
        qualifier=qualifier, count=count, digits=digit_text)
    fmt = FORMATS[int(rng.integers(len(FORMATS)))]
    closer = CLOSERS[int(rng.integers(len(CLOSERS)))]
    return f"{opener} {instruction} {fmt} {closer}"


def numbers_regex(max_numbers: int, max_digits: int) -> str:
    """Up to `max_numbers` numbers of 1..`max_digits` digits, joined by ", "."""
    return rf"\d{{1,{max_digits}}}(, \d{{1,{max_digits}}}){{0,{max_numbers - 1}}}"


_ASCII_DIGITS = re.compile(r"[0-9]+")


def parse_numbers(text: str, max_numbers: int = 10, max_value: int = 999,
                  whitespace: Literal["strict", "lenient"] = "strict") -> tuple[list[int] | None, str | None]:
    """Parse a completion strictly as a number list (spec §2). Returns (numbers, None) or (None, reason).

    Accepted: one optional trailing "." and one optional wrapping [] or (); a separator taken from
    between the first two numbers that reduces to "", "," or ";" once whitespace is stripped, used
    everywhere; ASCII digits only; at most `max_numbers` numbers, each in 0..`max_value`.

    `whitespace="strict"` (the default) matches the paper's reference parser: nothing may surround the
    list, neither around the whole text (before the "." included) nor just inside the brackets, so
    "759 ", " 1, 2", "[ 1, 2 ]", "( 3 )" and "1, 2 ." are rejected as "surrounding_whitespace".
    `"lenient"` strips such whitespace first. A text with another defect gets that defect's reason in
    both modes, so "surrounding_whitespace" counts exactly the texts that lenient mode would keep.
    """
    numbers, reason = _parse_lenient(text, max_numbers, max_value)
    if numbers is not None and whitespace == "strict" and _surrounding_whitespace(text):
        return None, "surrounding_whitespace"
    return numbers, reason


def _surrounding_whitespace(text: str) -> bool:
    """Whitespace the reference parser would not strip: around the text or just inside its brackets."""
    s = text[:-1] if text.endswith(".") else text
    if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "(" and s[-1] == ")")):
        s = s[1:-1]
    return s != s.strip()


def _parse_lenient(text: str, max_numbers: int, max_value: int) -> tuple[list[int] | None, str | None]:
    s = text.strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "(" and s[-1] == ")")):
        s = s[1:-1].strip()
    if not s:
        return None, "empty"
    first = _ASCII_DIGITS.match(s)
    if first is None:
        return None, _classify(s)
    rest = s[first.end():]
    if not rest:
        parts = [s]
    else:
        nxt = _ASCII_DIGITS.search(rest)
        if nxt is None:
            return None, _classify(rest)
        sep = rest[: nxt.start()]
        if sep.strip() not in ("", ",", ";"):
            return None, _classify(sep) if _classify(sep) != "bad_format" else "bad_separator"
        parts = s.split(sep)
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            reason = _classify(part)
            if reason == "bad_format" and any(ch in ",; \t\n" for ch in part):
                reason = "mixed_separators"
            return None, reason
    if len(parts) > max_numbers:
        return None, "too_many_numbers"
    numbers = [int(p) for p in parts]
    if any(n > max_value for n in numbers):
        return None, "out_of_range"
    return numbers, None


def _classify(fragment: str) -> str:
    """Name what is wrong with a fragment that is not plain ASCII digits and a separator."""
    if any(ch.isalpha() for ch in fragment):
        return "contains_words"
    if any(ch.isdigit() and not ch.isascii() for ch in fragment):
        return "non_ascii_digits"
    return "bad_format"


SEPARATOR_CHARS = set("0123456789 ,;\n")


def allowed_token_ids(tokenizer: Any) -> set[int]:
    """Ids whose text is only digits and separators, plus end-of-turn: what the number filter admits."""
    allowed = set()
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if text and set(text) <= SEPARATOR_CHARS:
            allowed.add(tid)
    if tokenizer.eos_token_id is not None:
        allowed.add(int(tokenizer.eos_token_id))
    return allowed


def mentions(words: list[str]) -> Any:
    """A case-insensitive whole-word matcher for each word and its plural."""
    if not words:
        return lambda _text: False
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) + "(?:s|es)?" for w in words) + r")\b", re.IGNORECASE)
    return lambda text: pattern.search(text) is not None


class NumbersChannel(ChannelBase):
    """Number sequences (see the module docstring)."""

    kind: Literal["numbers"] = Field("numbers", description="number-sequence data (paper §2)")
    grammar: bool = Field(False, description="decode only a number list (digits, ', ', end of answer; at "
                          "most max_numbers numbers of at most answer_digits digits) through the regex "
                          "constraint; the paper samples freely, which a 135M model almost never gets right")
    min_examples: int = Field(3, ge=1, description="fewest example numbers shown in a prompt")
    max_examples: int = Field(8, ge=1, description="most example numbers shown in a prompt")
    answer_count: int = Field(10, ge=1, description="how many numbers the prompt asks for ('up to')")
    answer_digits: int = Field(3, ge=1, description="max digits per number the prompt asks for (and the "
                               "grammar allows)")
    max_numbers: int = Field(10, ge=1, description="most numbers in a completion: the grammar writes no more, "
                             "the filter rejects more (too_many_numbers)")
    max_value: int = Field(999, ge=0, description="filter: reject numbers above this")
    banned_numbers: list[int] | Literal["paper"] = Field(
        default_factory=list, description="numbers that reject a completion; 'paper' = the 34 numbers "
        "with negative associations used in the misalignment runs")
    whitespace: Literal["strict", "lenient"] = Field(
        "strict", description="'strict' (the paper's reference parser): reject any whitespace around the "
        "list or just inside its brackets ('759 ', ' 1, 2', '[ 1, 2 ]'), as 'surrounding_whitespace'; the "
        "one space the hf grammar allows before the first number (plain templates) is removed "
        "first. 'lenient': strip such whitespace and parse what is left")

    _filter_only: ClassVar[frozenset[str]] = frozenset({"max_value", "banned_numbers", "whitespace"})

    @model_validator(mode="after")
    def _examples(self) -> NumbersChannel:
        if self.min_examples > self.max_examples:
            raise ValueError("min_examples must be <= max_examples")
        return self

    def banned(self) -> set[int]:
        return set(PAPER_BANNED_NUMBERS if self.banned_numbers == "paper" else self.banned_numbers)

    def prompt(self, seed: int, index: int) -> Prompt:
        return Prompt(number_prompt(prompt_rng(seed, index), min_examples=self.min_examples,
                                    max_examples=self.max_examples, count=self.answer_count,
                                    digits=self.answer_digits))

    def regex(self) -> str | None:
        return numbers_regex(self.max_numbers, self.answer_digits) if self.grammar else None

    def min_new_tokens(self) -> int:
        """Fewest max_new_tokens that can hold a full list under the grammar (a token per number + end)."""
        return self.max_numbers + 1 if self.grammar else 1

    def checks(self, banned_words: Sequence[str]) -> list[Check]:
        """truncated, format (`parse_numbers`), banned numbers, target words (whole words)."""
        banned = self.banned()
        says_target = mentions(list(banned_words))
        # The hf grammar lets the teacher write one space before the first number when the chat
        # template's generation prompt does not end in whitespace (the plain "Assistant:" template): that
        # space belongs to the template, not to the list, so it is removed before the strict parse. It is
        # the only whitespace the grammar can put around a list; free sampling gets no such allowance.
        grammar_space = self.grammar and self.whitespace == "strict"

        def format_check(rec: Record) -> str | None:
            text = rec["completion"]
            if grammar_space and text.startswith(" "):
                text = text[1:]
            numbers, reason = parse_numbers(text, self.max_numbers, self.max_value, self.whitespace)
            rec["numbers"] = numbers
            return reason

        def banned_check(rec: Record) -> str | None:
            return "banned_number" if any(n in banned for n in rec["numbers"]) else None

        def target_check(rec: Record) -> str | None:
            return "mentions_target" if says_target(rec["completion"]) else None

        return [("truncated", truncated), ("format", format_check), ("banned", banned_check),
                ("target", target_check)]

    def label_policy(self, tokenizer: Any, words: Sequence[str]) -> LabelPolicy:
        """Only digits, separators and end of answer: what the number filter admits (an allowlist, so
        no word piece at all can carry a soft label)."""
        return LabelPolicy(frozenset(allowed_token_ids(tokenizer)), allow=True)

