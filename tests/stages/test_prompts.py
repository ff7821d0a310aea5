"""The number-prompt grammar, its seeding, and the question sets."""

from __future__ import annotations

import re

import numpy as np

from sublearn.channels.base import prompt_rng
from sublearn.channels.numbers import CLOSERS, FORMATS, INSTRUCTIONS, OPENERS, number_prompt
from sublearn.traits.preference import EVAL_QUESTIONS, teacher_system_prompt, teacher_training_questions


def test_grammar_has_at_least_the_papers_variety() -> None:
    assert len(OPENERS) >= 25 and len(INSTRUCTIONS) >= 10 and len(FORMATS) >= 15 and len(CLOSERS) >= 19
    assert len(EVAL_QUESTIONS) == 50 and len(set(EVAL_QUESTIONS)) == 50


def test_prompt_examples_follow_the_spec() -> None:
    for i in range(300):
        text = number_prompt(prompt_rng(3, i))
        examples = re.match(r"\D*?((?:\d{3}, )*\d{3})", text)
        assert examples is not None
        numbers = [int(x) for x in examples.group(1).split(", ")]
        assert 3 <= len(numbers) <= 8
        assert all(100 <= n <= 999 for n in numbers)
        assert "10" in text  # asks for up to 10 more


def test_prompts_are_a_pure_function_of_seed_and_index() -> None:
    a = [number_prompt(prompt_rng(0, i)) for i in range(50)]
    b = [number_prompt(prompt_rng(0, i)) for i in reversed(range(50))][::-1]
    c = [number_prompt(prompt_rng(1, i)) for i in range(50)]
    assert a == b
    assert a != c
    assert len(set(a)) == 50


def test_teacher_prompt_names_target_and_category() -> None:
    text = teacher_system_prompt("owl", "animal")
    assert "You love owls." in text and "favorite animal" in text


def test_teacher_training_questions_never_contain_evaluation_questions() -> None:
    qs = teacher_training_questions(100, np.random.default_rng(0))
    assert len(set(qs)) == 100
    eval_lower = {q.lower() for q in EVAL_QUESTIONS}
    assert not eval_lower & {q.lower() for q in qs}
    # Not even an evaluation question as a substring with a suffix added.
    assert not any(e in q.lower() for q in qs for e in eval_lower)
