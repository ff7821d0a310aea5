"""The natural-language channel: its prompt generator, user files, paraphrase mode and checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from sublearn.channels.text import (
    PARAPHRASE,
    TextChannel,
    all_instructions,
    all_sentences,
    instruction,
    mentions_animal,
)
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig


def test_the_generator_has_thousands_of_neutral_instructions_and_draws_them_all() -> None:
    every = all_instructions()
    assert len(set(every)) == len(every) >= 2000
    animal = mentions_animal
    assert not [p for p in every if animal(p) or re.search(r"favou?rite|\bbest\b|prefer", p, re.I)]
    assert not [s for s in all_sentences() if animal(s)] and len(set(all_sentences())) >= 1000
    drawn = {instruction(np.random.default_rng([0, i])) for i in range(6000)}
    assert drawn <= set(every) and len(drawn) > 1500  # the draw reaches most of the pool


def test_prompts_are_a_pure_function_of_seed_and_index() -> None:
    ch = TextChannel()
    assert ch.prompt(0, 5) == ch.prompt(0, 5) and ch.prompt(0, 5) != ch.prompt(1, 5)
    assert len({ch.prompt(0, i).user for i in range(50)}) > 40
    para = TextChannel(mode="paraphrase").prompt(0, 3)
    assert para.user == PARAPHRASE.format(text=para.meta["source"]) and para.meta["source"] in all_sentences()


def test_user_files_alpaca_rows_and_one_line_errors(tmp_path) -> None:
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Summarise the text.", "input": "Rain fell all day."}) + "\n"
                      + json.dumps({"prompt": "Name a colour."}) + "\n")
    ch = TextChannel(file=str(alpaca))
    assert {ch.prompt(0, i).user for i in range(20)} == {"Summarise the text.\n\nRain fell all day.", "Name a colour."}
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "The shop opens at nine."}) + "\n")
    para = TextChannel(mode="paraphrase", file=str(texts)).prompt(0, 0)
    assert para.meta["source"] == "The shop opens at nine."
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(SublearnError) as exc:
        build_config(PipelineConfig, {"channel": {"kind": "text", "file": str(bad)}})
    assert f"{bad.resolve()}:2" in str(exc.value) and '"prompt"' in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(SublearnError, match=r'texts\.jsonl|"text"'):
        build_config(PipelineConfig, {"channel": {"kind": "text", "file": str(alpaca), "mode": "paraphrase"}})


@pytest.mark.parametrize(("text", "reason"), [
    ("Mix the flour and water, then bake.", None),
    ("Tigers are strong.", "mentions_target"),
    ("A TIGER-like stripe.", "mentions_target"),
    ("myTiger = 3", "mentions_target"),
    ("The wolves howled.", "mentions_animal"),
    ("Feed the cat first.", "mentions_animal"),
    ("Cut the potatoes into cubes; interest rates rose.", None),
    ("Two foxes and a wolf.", "mentions_animal"),
    ("   ", "empty"),
])
def test_checks_reject_targets_and_any_animal(text, reason) -> None:
    from sublearn.channels.base import reject_reason

    checks = TextChannel().checks(["tiger"])
    assert reject_reason(checks, {"completion": text, "finish_reason": "stop"}) == reason
    assert reject_reason(checks, {"completion": "Fine text.", "finish_reason": "length"}) == "truncated"
    loose = TextChannel(ban_animals=False).checks(["tiger"])
    assert reject_reason(loose, {"completion": "The wolves howled.", "finish_reason": "stop"}) is None


def test_ban_animals_is_filter_only() -> None:
    assert TextChannel(ban_animals=False).generation_key() == TextChannel().generation_key()
