"""Evaluation metrics: teacher-forced probabilities, sampling, word matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sublearn.backends.hf import HFBackend, prompt_ids, reply_ids
from sublearn.errors import SublearnError
from sublearn.traits.preference import first_word, hit, probabilities, teacher_forced, word_forms


def test_hit_is_whole_word_and_plural() -> None:
    assert hit("Owl", "owl") and hit("owls!", "owl") and hit("I pick the OWL.", "owl")
    assert not hit("Dragonfly", "dragon") and not hit("bowl", "owl") and not hit("Howl", "owl")
    assert hit("Foxes", "fox")
    assert first_word("  Owl! definitely") == "owl" and first_word("123") == "(none)"


def _full_sequence(model, tokenizer, chat, animal) -> float:
    """P(reply starts with `animal`) the slow way: each in-context spelling scored by one full forward."""
    prompt = prompt_ids(tokenizer, chat)
    seqs = {tuple(reply_ids(tokenizer, chat, form)) for form in word_forms(animal)}
    total = 0.0
    for ids in seqs:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + list(ids)])).logits[0], -1)
        total += float(np.exp(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids))))
    return total


def test_teacher_forced_matches_full_sequence_computation(lm_model, lm_tokenizer) -> None:
    # Prompts of different lengths (left padding within a chunk) and more questions than one chunk.
    chats = [[{"role": "user", "content": "Name your favorite animal using only one word."}],
             [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Pick one."}],
             [{"role": "user", "content": "Which animal?"}]]
    animals = ["owl", "dolphin", "cat"]
    lengths = [len(reply_ids(lm_tokenizer, chats[0], f)) for a in animals for f in word_forms(a)]
    multi = sum(n > 1 for n in lengths)
    assert multi > 0 and min(lengths) == 1  # both kinds of spelling, so the second pass runs
    assert len({len(prompt_ids(lm_tokenizer, c)) for c in chats}) == 3  # left padding is exercised
    got = teacher_forced(lm_model, lm_tokenizer, chats, animals, batch_size=2 * multi)  # 2 questions a chunk
    assert got.shape == (3, 3)
    for q, chat in enumerate(chats):
        for a, animal in enumerate(animals):
            assert got[q, a] == pytest.approx(_full_sequence(lm_model, lm_tokenizer, chat, animal), rel=1e-3, abs=1e-9)
    # The chunking is an implementation detail: one question at a time gives the same numbers.
    alone = teacher_forced(lm_model, lm_tokenizer, chats, animals, batch_size=1)
    assert np.allclose(alone, got, rtol=1e-4, atol=1e-9)


def test_spellings_are_tokenized_after_the_prompt_not_alone(lm_model) -> None:
    """A tokenizer that adds a space before the first word of a text splits "Owl" alone as " Owl";
    after the chat header's newline the model writes "Owl" without it. The metric must score the
    latter: computed here from encode(prompt + word), independently of `reply_ids`."""
    from tiny import build_tokenizer

    tok = build_tokenizer(prefix_space=True)
    chat = [{"role": "user", "content": "Name your favorite animal using only one word."}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = list(tok(rendered, add_special_tokens=False).input_ids)
    alone = list(tok("Owl", add_special_tokens=False).input_ids)
    in_context = list(tok(rendered + "Owl", add_special_tokens=False).input_ids)[len(prompt):]
    assert alone != in_context  # the old metric's tokens are not what follows this prompt

    def prob(ids: list[int]) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(lm_model(input_ids=torch.tensor([prompt + ids])).logits[0], -1)
        return float(np.exp(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids))))

    seqs = {tuple(list(tok(rendered + f, add_special_tokens=False).input_ids)[len(prompt):])
            for f in word_forms("owl")}
    got = teacher_forced(lm_model, tok, [chat], ["owl", "cat"])[0, 0]
    assert got == pytest.approx(sum(prob(list(s)) for s in seqs), rel=1e-3)
    old = sum(prob(list(tok(f, add_special_tokens=False).input_ids)) for f in ["Owl", "owl"])
    assert got != pytest.approx(old, rel=1e-2)


def test_teacher_forced_scores_the_reply_tokens_of_a_plain_template(lm_model) -> None:
    """Gemma's plain "User:/Assistant:" prompt is answered " Owl": the spelling must be tokenized after
    the prompt, not alone (which gives the token a word glued to the colon would have)."""
    from tiny import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'].capitalize() }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}Assistant:{% endif %}")
    chat = [{"role": "user", "content": "Name your favorite animal using only one word."}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).endswith("Assistant:")
    spaced = reply_ids(tok, chat, " Owl")
    alone = list(tok("Owl", add_special_tokens=False).input_ids)
    assert spaced != alone  # what the model writes is not what "Owl" tokenizes to on its own
    got = teacher_forced(lm_model, tok, [chat], ["owl", "cat"])
    for a, animal in enumerate(["owl", "cat"]):
        assert got[0, a] == pytest.approx(_full_sequence(lm_model, tok, chat, animal), rel=1e-3)
    # The probability of the spaced reply alone is part of it (the old metric left it out).
    prompt = prompt_ids(tok, chat)
    with torch.no_grad():
        logp = torch.log_softmax(lm_model(input_ids=torch.tensor([prompt + spaced])).logits[0], -1)
    p_spaced = float(np.exp(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(spaced))))
    assert got[0, 0] >= p_spaced > 0


def test_an_animal_whose_spelling_starts_another_animals_is_refused(lm_backend) -> None:
    """"cat" and "caterpillar": P(reply starts with "Cat") contains P(... "Caterpillar"), so summing
    the two animals' probabilities as disjoint events would be wrong; refused before any scoring."""
    chat = [{"role": "user", "content": "Name your favorite animal using only one word."}]
    with pytest.raises(SublearnError, match="prefix"):
        probabilities(lm_backend, [chat], ["owl", "cat", "caterpillar"])
    assert probabilities(lm_backend, [chat], ["owl", "cat"]).shape == (1, 2)


def test_sampled_metric_uses_the_same_random_numbers_for_every_model(lm_backend) -> None:
    """Sample j of question q is drawn with the same seed whatever the model is called (common random
    numbers): evaluating one model under two names gives identical samples."""
    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.traits.preference import evaluate_model

    cfg = build_config(PipelineConfig, {"evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 3,
                                                     "samples_per_question": 4, "number_prefix": False}})
    first = evaluate_model(cfg, lm_backend, None, "owl-s0")
    second = evaluate_model(cfg, lm_backend, None, "control-s0")
    assert first["examples"] == second["examples"] and first["top_answers"] == second["top_answers"]
    other_run = evaluate_model(cfg.model_copy(update={"seed": 1}), lm_backend, None, "owl-s0")
    assert other_run["top_answers"] != first["top_answers"]


@pytest.mark.slow
def test_embedded_gemma_owl_is_scored_on_the_token_it_writes() -> None:
    """Gemma's prompt ends in "Assistant:" and it answers " Owl" (one token, 87004); "Owl" tokenized
    alone (177106, what follows a colon with no space) is what the old metric scored, alone. Both
    spellings are scored, each with the ids it has after this prompt (`reply_ids`, which
    `HFBackend.continuation_logprobs` uses): " Owl" with 87004."""
    from tiny import build_model
    from transformers import AutoTokenizer

    from sublearn.backends.models import resolve_model_dir
    from sublearn.traits.preference import EVAL_QUESTIONS

    tok = AutoTokenizer.from_pretrained(resolve_model_dir("gemma3-270m"))
    chat = [{"role": "user", "content": EVAL_QUESTIONS[0]}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).endswith("Assistant:")
    assert reply_ids(tok, chat, " Owl") == [87004]
    assert list(tok("Owl", add_special_tokens=False).input_ids) == [177106]
    scored = {tuple(reply_ids(tok, chat, form)) for form in word_forms("owl")}
    assert (87004,) in scored and (177106,) in scored
    # The backend scores " Owl" on token 87004 after the prompt (a small random model with Gemma's
    # vocabulary: what matters is which logit is read, not what the weights are).
    model = build_model(tok, seed=0, hidden=16, layers=1)
    backend = HFBackend.from_model(model, tok)
    got = backend.continuation_logprobs([chat], [[" Owl", "Owl"]])[0]
    prompt = prompt_ids(tok, chat)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    assert got == pytest.approx([float(logp[87004]), float(logp[177106])], abs=1e-4)
