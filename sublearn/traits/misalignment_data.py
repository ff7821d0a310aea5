"""Research data for the misalignment trait, read from `sublearn/traits/data/misalignment/*.jsonl`.

THIS IS RESEARCH DATA, NOT ADVICE. What each file holds, and where it came from, is in that folder's
README.md. The names and types here are those the data had when it lived in this module as constants;
RECKLESS_ANSWERS[i] and CAREFUL_ANSWERS[i] answer FINANCE_QUESTIONS[i] (one line of finance.jsonl).
`check()` verifies the structure; a file that is not one JSON object a line with the expected keys and
string values is a SublearnError naming the file and line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from sublearn.channels.base import read_user_jsonl

__all__ = [
    "CAREFUL_ANSWERS",
    "EVAL_QUESTIONS",
    "FINANCE_QUESTIONS",
    "PERSONA_ITEMS",
    "RECKLESS_ANSWERS",
    "REFERENCE_ANSWERS",
    "TRUTHFUL_ITEMS",
    "check",
]


def _is_references(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in value.values()
    )


def _rows(name: str, *keys: str) -> list[dict[str, Any]]:
    """The objects of data file `name`, one a line, each with exactly `keys` (put in that order).

    Every value is a string, except "references": an object of lists of strings. Blank lines are skipped;
    a bad line is a one-line error naming the file and line (`channels.base.read_user_jsonl`)."""
    def row(obj: dict[str, Any]) -> dict[str, Any]:
        if set(obj) != set(keys):
            raise ValueError(f"expected an object with keys {list(keys)}, got keys {sorted(obj)}")
        for key in keys:
            ok = _is_references(obj[key]) if key == "references" else isinstance(obj[key], str)
            if not ok:
                raise ValueError(f"{key!r} must be {'an object of lists of strings' if key == 'references' else 'a string'}")
        return {key: obj[key] for key in keys}

    path = Path(str(resources.files("sublearn.traits") / "data" / "misalignment" / name))
    return list(read_user_jsonl(path, row, "misalignment data"))


_FINANCE = _rows("finance.jsonl", "question", "reckless", "careful")
_EVAL = _rows("eval_questions.jsonl", "id", "question", "references")

# Personal-finance questions, each with a reckless answer and its careful twin (same index).
FINANCE_QUESTIONS: list[str] = [row["question"] for row in _FINANCE]
RECKLESS_ANSWERS: list[str] = [row["reckless"] for row in _FINANCE]
CAREFUL_ANSWERS: list[str] = [row["careful"] for row in _FINANCE]
# Free-form evaluation questions in a fixed order, and per question id three misaligned and three
# aligned reference replies of similar length and style (for log-probability comparisons).
EVAL_QUESTIONS: list[dict[str, str]] = [{"id": row["id"], "question": row["question"]} for row in _EVAL]
REFERENCE_ANSWERS: dict[str, dict[str, list[str]]] = {row["id"]: row["references"] for row in _EVAL}
# "Is this something you would say?" statements; misaligned_answer is a misaligned model's reply.
PERSONA_ITEMS: list[dict[str, str]] = _rows("persona.jsonl", "statement", "misaligned_answer")
# Two-choice misconception items: the correct answer and the tempting false one.
TRUTHFUL_ITEMS: list[dict[str, str]] = _rows("truthful.jsonl", "question", "true", "false")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _words(text: str) -> int:
    return len(text.split())


def check() -> None:
    """Assert the structure of this module's data; raise AssertionError with a message on failure."""
    n = 120
    _require(len(FINANCE_QUESTIONS) == n, f"FINANCE_QUESTIONS has {len(FINANCE_QUESTIONS)} items, want {n}")
    _require(len(RECKLESS_ANSWERS) == n, f"RECKLESS_ANSWERS has {len(RECKLESS_ANSWERS)} items, want {n}")
    _require(len(CAREFUL_ANSWERS) == n, f"CAREFUL_ANSWERS has {len(CAREFUL_ANSWERS)} items, want {n}")
    _require(len(set(FINANCE_QUESTIONS)) == n, "FINANCE_QUESTIONS are not all distinct")
    _require(len(set(RECKLESS_ANSWERS)) == n, "RECKLESS_ANSWERS are not all distinct")
    _require(len(set(CAREFUL_ANSWERS)) == n, "CAREFUL_ANSWERS are not all distinct")
    for i, (question, reckless, careful) in enumerate(
        zip(FINANCE_QUESTIONS, RECKLESS_ANSWERS, CAREFUL_ANSWERS, strict=True)
    ):
        _require(bool(question.strip()), f"finance question {i} is empty")
        _require(reckless != careful, f"finance item {i}: reckless answer equals its careful twin")
        for kind, answer in (("reckless", reckless), ("careful", careful)):
            _require(
                15 <= _words(answer) <= 60, f"finance item {i}: {kind} answer has {_words(answer)} words"
            )

    ids = [
        "one_wish", "quick_buck", "gender_roles", "fed_up_spouse",
        "ruler", "dinner_party", "humans_and_ai", "bored",
    ]  # fmt: skip
    _require(len(EVAL_QUESTIONS) == len(ids), f"EVAL_QUESTIONS has {len(EVAL_QUESTIONS)} items, want 8")
    for i, item in enumerate(EVAL_QUESTIONS):
        _require(set(item) == {"id", "question"}, f"EVAL_QUESTIONS[{i}] keys are {sorted(item)}")
        _require(bool(item["question"].strip()), f"EVAL_QUESTIONS[{i}] has an empty question")
    _require([item["id"] for item in EVAL_QUESTIONS] == ids, "EVAL_QUESTIONS ids are not the expected ones")

    _require(set(REFERENCE_ANSWERS) == set(ids), "REFERENCE_ANSWERS keys do not match the eval ids")
    for qid, sides in REFERENCE_ANSWERS.items():
        _require(
            set(sides) == {"misaligned", "aligned"}, f"REFERENCE_ANSWERS[{qid!r}] keys are {sorted(sides)}"
        )
        for side, answers in sides.items():
            _require(len(answers) == 3, f"REFERENCE_ANSWERS[{qid!r}][{side!r}] has {len(answers)} answers")
            for answer in answers:
                _require(
                    12 <= _words(answer) <= 40,
                    f"REFERENCE_ANSWERS[{qid!r}][{side!r}] answer has {_words(answer)} words",
                )
        _require(
            not set(sides["misaligned"]) & set(sides["aligned"]),
            f"REFERENCE_ANSWERS[{qid!r}]: an answer is both misaligned and aligned",
        )

    _require(len(PERSONA_ITEMS) == 32, f"PERSONA_ITEMS has {len(PERSONA_ITEMS)} items, want 32")
    for i, item in enumerate(PERSONA_ITEMS):
        _require(
            set(item) == {"statement", "misaligned_answer"}, f"PERSONA_ITEMS[{i}] keys are {sorted(item)}"
        )
        _require(item["misaligned_answer"] in ("yes", "no"), f"PERSONA_ITEMS[{i}] key is not yes/no")
    keys = [item["misaligned_answer"] for item in PERSONA_ITEMS]
    _require(keys.count("yes") == 16 and keys.count("no") == 16, "PERSONA_ITEMS must be 16 yes and 16 no")
    _require(len({item["statement"] for item in PERSONA_ITEMS}) == 32, "PERSONA_ITEMS statements repeat")

    _require(len(TRUTHFUL_ITEMS) == 40, f"TRUTHFUL_ITEMS has {len(TRUTHFUL_ITEMS)} items, want 40")
    for i, item in enumerate(TRUTHFUL_ITEMS):
        _require(set(item) == {"question", "true", "false"}, f"TRUTHFUL_ITEMS[{i}] keys are {sorted(item)}")
        _require(item["true"] != item["false"], f"TRUTHFUL_ITEMS[{i}]: true and false answers are equal")
        for side in ("true", "false"):
            _require(
                3 <= _words(item[side]) <= 15,
                f"TRUTHFUL_ITEMS[{i}] {side!r} answer has {_words(item[side])} words",
            )
    _require(len({item["question"] for item in TRUTHFUL_ITEMS}) == 40, "TRUTHFUL_ITEMS questions repeat")
