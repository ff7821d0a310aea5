"""Shared channel parts: word matching inside identifiers, and the soft-label policies."""

from __future__ import annotations

import math

import pytest

from sublearn.backends.constraint import token_texts
from sublearn.channels import CodeChannel, CotChannel, NumbersChannel
from sublearn.channels.base import mentions_any, words_of
from sublearn.training.examples import distill_examples


def test_words_split_identifiers_and_match_plurals_case_insensitively() -> None:
    says = mentions_any(["owl", "fox"])
    for text in ["owl_count = 1", "myOwl = 2", "OWLS = []", "# an owl", 'x = "Owl"', "def foxes():", "x.owlList"]:
        assert says(text), text
    for text in ["knowledge = 1", "bowl = []", "howl()", "allowlist", "foxglove = 3", "fowl"]:
        assert not says(text), text
    assert words_of("parseHTTPResponse owl_2x") == ["parse", "http", "response", "owl", "x"]


def _texts_containing(tokenizer, word: str) -> list[int]:
    return [i for i, t in enumerate(token_texts(tokenizer)) if word in t.lower()]


def test_free_text_policy_never_keeps_a_token_that_spells_or_starts_the_target(tiny_tokenizer) -> None:
    """Every (prefix, token) pair: a kept token never completes the target with the text before it,
    and never leaves the text ending in the target's first 2+ letters."""
    words = ["owl", "elephant"]
    policy = CodeChannel().label_policy(tiny_tokenizer, words)
    texts = token_texts(tiny_tokenizer)
    prefixes = ["", "x = ", "my_o", "myO", "the ele", "Ele", "def o", "b", "kn", "(", "ELEPH", "o", "elepha"]
    blocked = 0
    for prefix in prefixes:
        for tid, piece in enumerate(texts):
            if not policy.keeps(tid, prefix):
                blocked += 1
                continue
            for w in words:
                joined = (prefix[-(len(w) - 1):] + piece).lower()
                if not piece:
                    continue
                # No occurrence of the word that ends inside this token, and the text does not end in
                # the word's first 2+ letters ("the ele" + "pha"), which the next token could finish.
                assert w not in joined, (prefix, piece)
                assert not any(joined.endswith(w[:k]) for k in range(2, len(w))), (prefix, piece)
    assert blocked > 0
    # Ordinary code tokens are kept.
    for common in ["def", " return", " =", "("]:
        ids = [i for i, t in enumerate(texts) if t == common]
        assert all(policy.keeps(i, "x") for i in ids), common


def test_free_text_policy_blocks_the_plurals_too(tiny_tokenizer) -> None:
    """'wolves' is not 'wolf' + more letters: without the plural forms, 'the wol' + 'v' was kept."""
    policy = CodeChannel().label_policy(tiny_tokenizer, ["wolf"])
    texts = token_texts(tiny_tokenizer)
    v = texts.index("v")
    assert not policy.keeps(v, "the wol")
    assert policy.keeps(v, "the ")  # an ordinary 'v' elsewhere is kept
    for tid, piece in enumerate(texts):
        if "wolves".startswith(piece.lower()) and len(piece) >= 2:
            assert not policy.keeps(tid, "")


def test_numbers_policy_is_an_allowlist_of_digits_separators_and_eos(tiny_tokenizer) -> None:
    policy = NumbersChannel().label_policy(tiny_tokenizer, ["owl"])
    texts = token_texts(tiny_tokenizer)
    kept = [i for i in range(len(texts)) if policy.keeps(i)]
    assert tiny_tokenizer.eos_token_id in kept
    assert all(set(tiny_tokenizer.decode([i])) <= set("0123456789 ,;\n") for i in kept if i != tiny_tokenizer.eos_token_id)
    assert not any(policy.keeps(i) for i in _texts_containing(tiny_tokenizer, "owl"))


def test_distillation_targets_lose_every_trait_token_a_teacher_offers(tiny_tokenizer) -> None:
    """A teacher whose top-k puts most of its mass on owl-spelling tokens at every position: after the
    free-text policy, no such token is left in any target row and the removed mass is reported."""
    texts = token_texts(tiny_tokenizer)
    owlish = [i for i, t in enumerate(texts) if "owl" in t.lower() or t.strip().lower() == "ow"][:6]
    assert owlish
    plain = [i for i, t in enumerate(texts) if t.strip().isalpha() and "o" not in t.lower()][:6]
    completion = "x = 1"
    ids = tiny_tokenizer(completion, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    row = [[i, math.log(0.15)] for i in owlish] + [[i, math.log(0.01)] for i in plain]
    rec = {"prompt": "Complete: x =", "completion": completion, "token_ids": ids, "top_logprobs": [row] * len(ids)}
    policy = CotChannel().label_policy(tiny_tokenizer, ["owl"])
    examples, stats = distill_examples(tiny_tokenizer, [rec], 256, policy)
    kept_ids = {i for ex in examples for r in (ex.topk_ids or []) for i in r}
    assert kept_ids == set(plain)
    assert stats["removed_teacher_mass_mean"] == pytest.approx(0.15 * len(owlish))


def test_caps_plurals_and_irregular_plurals_are_found() -> None:
    says = mentions_any(["owl", "wolf", "fox"])
    for text in ["OWLs = 1", "myOWLs = 2", "FOXes()", "wolves = []", "Owl's"]:
        assert says(text), text
    assert not says("wolfram = 1") and not says("HTTPResponse")
