"""Evaluation metrics: teacher-forced probabilities, sampling, word matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sublearn.lm.chat import prompt_ids
from sublearn.lm.evaluate import first_word, hit, teacher_forced, word_forms


def test_hit_is_whole_word_and_plural() -> None:
    assert hit("Owl", "owl") and hit("owls!", "owl") and hit("I pick the OWL.", "owl")
    assert not hit("Dragonfly", "dragon") and not hit("bowl", "owl") and not hit("Howl", "owl")
    assert hit("Foxes", "fox")
    assert first_word("  Owl! definitely") == "owl" and first_word("123") == "(none)"


def test_teacher_forced_matches_full_sequence_computation(lm_model, lm_tokenizer) -> None:
    # Prompts of different lengths (left padding within a chunk) and more questions than one chunk.
    chats = [[{"role": "user", "content": "Name your favorite animal using only one word."}],
             [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Pick one."}],
             [{"role": "user", "content": "Which animal?"}]]
    animals = ["owl", "dolphin", "cat"]
    lengths = [len(lm_tokenizer(f, add_special_tokens=False).input_ids) for a in animals for f in word_forms(a)]
    multi = sum(n > 1 for n in lengths)
    assert multi > 0 and min(lengths) == 1  # both kinds of spelling, so the second pass runs
    assert len({len(prompt_ids(lm_tokenizer, c)) for c in chats}) == 3  # left padding is exercised
    got = teacher_forced(lm_model, lm_tokenizer, chats, animals, batch_size=2 * multi)  # 2 questions a chunk
    assert got.shape == (3, 3)
    for q, chat in enumerate(chats):
        prompt = prompt_ids(lm_tokenizer, chat)
        for a, animal in enumerate(animals):
            total = 0.0
            for form in word_forms(animal):
                ids = list(lm_tokenizer(form, add_special_tokens=False).input_ids)
                with torch.no_grad():
                    logp = torch.log_softmax(lm_model(input_ids=torch.tensor([prompt + ids])).logits[0], -1)
                total += float(np.exp(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids))))
            assert got[q, a] == pytest.approx(total, rel=1e-3, abs=1e-9)
    # The chunking is an implementation detail: one question at a time gives the same numbers.
    alone = teacher_forced(lm_model, lm_tokenizer, chats, animals, batch_size=1)
    assert np.allclose(alone, got, rtol=1e-4, atol=1e-9)
