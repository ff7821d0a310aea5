"""Evaluation metrics: teacher-forced probabilities, sampling, word matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sublearn.lm.chat import prompt_ids
from sublearn.lm.evaluate import first_word, hit, sample_answers, teacher_forced, word_forms


def test_hit_is_whole_word_and_plural() -> None:
    assert hit("Owl", "owl") and hit("owls!", "owl") and hit("I pick the OWL.", "owl")
    assert not hit("Dragonfly", "dragon") and not hit("bowl", "owl") and not hit("Howl", "owl")
    assert hit("Foxes", "fox")
    assert first_word("  Owl! definitely") == "owl" and first_word("123") == "(none)"


def test_teacher_forced_matches_full_sequence_computation(lm_model, lm_tokenizer) -> None:
    chats = [[{"role": "user", "content": "Name your favorite animal using only one word."}],
             [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Pick one."}]]
    animals = ["owl", "dolphin", "cat"]
    got = teacher_forced(lm_model, lm_tokenizer, chats, animals)
    assert got.shape == (2, 3)
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


def test_sampling_is_seeded(lm_model, lm_tokenizer) -> None:
    chat = [{"role": "user", "content": "Pick an animal."}]
    a = sample_answers(lm_model, lm_tokenizer, chat, 6, 5, 1.0, torch.Generator().manual_seed(0))
    b = sample_answers(lm_model, lm_tokenizer, chat, 6, 5, 1.0, torch.Generator().manual_seed(0))
    c = sample_answers(lm_model, lm_tokenizer, chat, 6, 5, 1.0, torch.Generator().manual_seed(1))
    assert a == b and a != c and len(a) == 6
    greedy = sample_answers(lm_model, lm_tokenizer, chat, 3, 5, 0.0, torch.Generator().manual_seed(0))
    assert len(set(greedy)) == 1
