"""The chain-of-thought channel (paper §3): the teacher solves arithmetic word problems, reasoning in
<think> tags and giving the number alone in <answer> tags; only well-formed, correct, target-free
traces are kept.

    channel: {kind: cot}                          # our generated word problems, 3 samples each
    channel: {kind: cot, file: gsm8k_train.jsonl} # a GSM8K-format JSONL: {"question", "answer": "... #### N"}

Problems. No package ships GSM8K, so `word_problem` generates problems with exact integer answers
from templates of our own at four levels (0: one-digit + or -; 1: one operation; 2: two; 3: three,
with prices and change); `levels` picks the mix. Even level 0 is mostly beyond the 135M model (about
2% of its traces are kept: README "Channels"). Prompt i asks
question i // samples_per_question (the paper samples each question 3 times); its gold answer
travels in the record's metadata. A kept trace: exactly one <think>...</think> followed by exactly
one <answer>N</answer> and nothing else; N, once "," and "$" are removed, is the gold integer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from sublearn.channels.base import (
    ChannelBase,
    Check,
    Prompt,
    Record,
    checked_file,
    mentions_any,
    prompt_rng,
    read_user_jsonl,
    truncated,
)

INSTRUCTION = ("Solve the problem. Reason step by step inside <think></think> tags, then write only the final "
               "number inside <answer></answer> tags.")
EXAMPLE = ("For example, for \"Kim has 5 pens and buys 3 more. How many pens does Kim have?\" the reply is:\n"
           "<think>Kim starts with 5 pens and buys 3 more, so 5 + 3 = 8.</think>\n<answer>8</answer>")
# The tag structure as a decoding constraint: free reasoning (no "<"), then the answer's digits.
TRACE_REGEX = r"<think>[^<\n]+</think>\n<answer>-?\d{1,9}</answer>"

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Milo",
          "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
_ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "cards", "balloons", "candles", "shells",
          "buttons", "coins", "stamps", "beads", "cups", "tickets"]


def _level0(rng: np.random.Generator, name: str, item: str) -> tuple[str, int]:
    a, b = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    if rng.random() < 0.5:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    a += b
    return f"{name} has {a} {item} and gives {b} away. How many {item} are left?", a - b


def _level1(rng: np.random.Generator, name: str, item: str) -> tuple[str, int]:
    a, b = int(rng.integers(2, 40)), int(rng.integers(2, 30))
    kind = int(rng.integers(4))
    if kind == 0:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a += b
        return f"{name} has {a} {item} and gives {b} away. How many {item} are left?", a - b
    if kind == 2:
        a, b = a % 12 + 2, b % 9 + 2
        return f"{name} buys {a} packs of {item} with {b} {item} in each pack. How many {item} is that?", a * b
    b = b % 9 + 2
    return f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?", a


def _level2(rng: np.random.Generator, name: str, item: str) -> tuple[str, int]:
    a, b, c = int(rng.integers(2, 30)), int(rng.integers(2, 10)), int(rng.integers(2, 10))
    kind = int(rng.integers(3))
    if kind == 0:
        return (f"{name} has {a} {item}. Then {name} buys {b} boxes with {c} {item} in each box. How many {item} "
                f"does {name} have now?", a + b * c)
    if kind == 1:
        total = b * c + a
        return (f"{name} has {total} {item}, gives {a} to a friend and puts the rest into {b} equal piles. How "
                f"many {item} are in each pile?", c)
    lost = int(rng.integers(1, b * c))  # some but not all: "loses them all" would give the answer away
    return (f"{name} collects {b} {item} every day for {c} days, then loses {lost} of them. How many "
            f"{item} are left?", b * c - lost)


def _level3(rng: np.random.Generator, name: str, item: str) -> tuple[str, int]:
    a, p = int(rng.integers(2, 8)), int(rng.integers(2, 10))
    b, q = int(rng.integers(2, 8)), int(rng.integers(2, 10))
    cost = a * p + b * q
    bill = (cost // 10 + 1 + int(rng.integers(0, 5))) * 10
    other = _ITEMS[(_ITEMS.index(item) + 1 + int(rng.integers(len(_ITEMS) - 1))) % len(_ITEMS)]
    return (f"{name} buys {a} {item} at ${p} each and {b} {other} at ${q} each, and pays with ${bill}. How many "
            f"dollars of change does {name} get?", bill - cost)


def word_problem(rng: np.random.Generator, level: int) -> tuple[str, int]:
    """(question, exact integer answer) of the given difficulty level (0: one-digit addition or
    subtraction; 1: one operation; 2: two; 3: three, with prices and change)."""
    name, item = _NAMES[int(rng.integers(len(_NAMES)))], _ITEMS[int(rng.integers(len(_ITEMS)))]
    return {0: _level0, 1: _level1, 2: _level2, 3: _level3}[level](rng, name, item)


def parse_gold(answer: str) -> int | None:
    """The integer after '####' of a GSM8K answer ("," and "$" removed), or None."""
    _, sep, tail = answer.rpartition("####")
    if not sep:
        return None
    return parse_integer(tail)


_INTEGER = re.compile(r"(-?)\$?(-?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.0+)?")


def parse_integer(text: str) -> int | None:
    """An integer answer: ASCII digits, optional "$", thousands commas in their places ("1,200"), an
    optional ".00"; None otherwise ("1,2,3", "7.5", "٤٢", "seven")."""
    m = _INTEGER.fullmatch(text.strip())
    if m is None or (m.group(1) and m.group(2)):
        return None
    value = int(m.group(3).replace(",", ""))
    return -value if m.group(1) or m.group(2) else value


def _gsm8k_row(obj: dict[str, object]) -> tuple[str, int]:
    question, answer = obj.get("question"), obj.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('expected an object with a non-empty string field "question"')
    gold = parse_gold(answer) if isinstance(answer, str) else None
    if gold is None:
        raise ValueError("field \"answer\" must end in '#### <integer>' (GSM8K format)")
    return question, gold


def read_gsm8k(path: str | Path) -> tuple[tuple[str, int], ...]:
    """(question, gold) pairs of a GSM8K-format JSONL; a bad line raises a one-line error naming the
    file and the line."""
    return read_user_jsonl(path, _gsm8k_row, "question")


_TRACE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def parse_trace(text: str) -> tuple[str, str] | None:
    """(reasoning, answer text) of a well-formed trace: one non-empty <think> block, then one <answer>
    block, nothing but whitespace around them; None otherwise."""
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return None
    m = _TRACE.fullmatch(text)
    return (m.group(1), m.group(2)) if m and m.group(1).strip() else None


class CotChannel(ChannelBase):
    """Arithmetic chain-of-thought (see the module docstring)."""

    kind: Literal["cot"] = Field("cot", description="math chain-of-thought data (paper §3)")
    grammar: bool = Field(False, description="decode the tag structure through the regex constraint "
                          "(<think>free text without '<'</think> then <answer>digits</answer>); the paper "
                          "samples freely, which a 135M model almost never writes in this format")
    example: bool = Field(False, description="show one worked example of the format in every prompt (ours, "
                          "not the paper's); helps small models keep the format")
    samples_per_question: int = Field(3, ge=1, description="completions per question (paper: 3)")
    levels: list[int] = Field(default_factory=lambda: [1, 2], description="difficulty levels of the generated "
                              "problems (0: one-digit + or -, 1: one operation, 2: two, 3: three with prices), "
                              "drawn uniformly")
    file: str | None = Field(None, description="a GSM8K-format JSONL ({\"question\", \"answer\": \"... #### N\"} "
                             "per line) used instead of the generator; question q is line q (cycled; a relative path is relative "
                             "to the working directory; its content hash is part of the generation key)")

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(level not in (0, 1, 2, 3) for level in v):
            raise ValueError(f"levels must be a non-empty list of 0, 1, 2 and 3, got {v}")
        return v

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        return checked_file(v, read_gsm8k)

    def question(self, seed: int, q: int) -> tuple[str, int]:
        """(question, gold answer) of question `q`."""
        if self.file is not None:
            rows = read_gsm8k(self.file)
            return rows[q % len(rows)]
        rng = prompt_rng(seed, q)
        return word_problem(rng, self.levels[int(rng.integers(len(self.levels)))])

    def prompt(self, seed: int, index: int) -> Prompt:
        q = index // self.samples_per_question
        text, gold = self.question(seed, q)
        extra = f"\n{EXAMPLE}" if self.example else ""
        return Prompt(f"{text}\n\n{INSTRUCTION}{extra}", {"question": q, "answer": gold})

    def regex(self) -> str | None:
        return TRACE_REGEX if self.grammar else None

    def checks(self, banned_words: Sequence[str]) -> list[Check]:
        """truncated, malformed_tags, answer_not_a_number, wrong_answer, mentions_target."""
        says = mentions_any(banned_words)

        def tags(rec: Record) -> str | None:
            parsed = parse_trace(rec["completion"])
            if parsed is None:
                return "malformed_tags"
            rec["answer"] = parse_integer(parsed[1])
            return None if rec["answer"] is not None else "answer_not_a_number"

        def correct(rec: Record) -> str | None:
            meta: dict[str, Any] = rec.get("meta", {})
            return None if rec["answer"] == meta.get("answer") else "wrong_answer"

        def target(rec: Record) -> str | None:
            return "mentions_target" if says(rec["completion"]) else None

        return [("truncated", truncated), ("tags", tags), ("correct", correct), ("target", target)]
