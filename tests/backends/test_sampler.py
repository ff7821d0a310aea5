"""The KV-cache sampler: padding/prefix correctness, seeding, the number-list regex constraint (a
`TokenAutomaton` of `numbers_regex`), top-k capture."""

from __future__ import annotations

import re

import pytest
import torch

from sublearn.backends.base import SamplingParams
from sublearn.backends.constraint import TokenAutomaton
from sublearn.backends.hf import encode_chat
from sublearn.backends.sampler import common_prefix, sample
from sublearn.channels.numbers import numbers_regex

CHATS = [[{"role": "user", "content": "1, 2"}],
         [{"role": "user", "content": "Here is a list of numbers: 123, 456, 789. Add up to 10 more numbers."}],
         [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Pick one animal."}],
         [{"role": "user", "content": "Here is a list of numbers: 5, 6. Continue."}]]
EOS_BOOST = 3.0
NUMBER_LIST = re.compile(r"\d{1,3}(, \d{1,3}){0,9}")
NUMBERS = numbers_regex(10, 3)  # the same language as NUMBER_LIST


def _run(model, tok, params, seed=0, grammar=None, chats=CHATS):
    prompts = [encode_chat(tok, c) for c in chats]
    return sample(model, prompts, params, torch.Generator().manual_seed(seed), eos_id=tok.eos_token_id,
                  pad_id=tok.pad_token_id, grammar=grammar, decode=lambda ids: tok.decode(ids, skip_special_tokens=True))


def test_prompts_share_a_prefix_and_keep_one_token() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2], [1, 2, 3]]) == 1  # the shortest prompt keeps its last token to prefill
    assert common_prefix([[7, 1], [8, 1]]) == 0


@pytest.mark.parametrize("chats", [CHATS, CHATS[1::2], [CHATS[0]]])
def test_greedy_matches_plain_generate_with_mixed_lengths(tiny_model, tiny_tokenizer, chats) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=12)
    ours = _run(tiny_model, tiny_tokenizer, params, chats=chats)
    for chat, comp in zip(chats, ours, strict=True):
        ids = torch.tensor([encode_chat(tiny_tokenizer, chat)])  # one at a time: no padding, no sharing
        ref = tiny_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                  eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
        assert comp.token_ids == ref[0, ids.shape[1]:].tolist()
        assert comp.finish_reason == ("stop" if comp.token_ids[-1] == tiny_tokenizer.eos_token_id else "length")


def test_rows_that_stop_early_are_dropped_without_changing_the_others(tiny_model, tiny_tokenizer) -> None:
    # Boost eos so that some rows stop after a few tokens and the batch gets compacted mid-way.
    with torch.no_grad():
        tiny_model.lm_head.weight[tiny_tokenizer.eos_token_id] *= EOS_BOOST
    params = SamplingParams(temperature=0, max_new_tokens=8)
    chats = CHATS * 2
    together = _run(tiny_model, tiny_tokenizer, params, chats=chats)
    alone = [_run(tiny_model, tiny_tokenizer, params, chats=[c])[0] for c in chats]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    lengths = {len(c.token_ids) for c in together}
    assert {c.finish_reason for c in together} == {"stop", "length"} and len(lengths) > 2, lengths


def test_seeded_sampling(tiny_model, tiny_tokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    a, b = _run(tiny_model, tiny_tokenizer, params, 0), _run(tiny_model, tiny_tokenizer, params, 0)
    c = _run(tiny_model, tiny_tokenizer, params, 1)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_top_p_keeps_only_the_likeliest(tiny_model, tiny_tokenizer) -> None:
    greedy = _run(tiny_model, tiny_tokenizer, SamplingParams(temperature=0, max_new_tokens=6))
    tiny_p = _run(tiny_model, tiny_tokenizer, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=6), seed=3)
    assert [c.token_ids for c in tiny_p] == [c.token_ids for c in greedy]


def test_number_grammar_always_yields_valid_lists(tiny_model, tiny_tokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=50, regex=NUMBERS)
    grammar = TokenAutomaton.from_regex(NUMBERS, tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    stopped = 0
    for seed in range(3):
        for comp in _run(tiny_model, tiny_tokenizer, params, seed, grammar, CHATS * 4):
            assert NUMBER_LIST.fullmatch(comp.text) or comp.finish_reason == "length", comp.text
            if comp.finish_reason == "stop":
                stopped += 1
                assert comp.token_ids[-1] == eos and eos not in comp.token_ids[:-1]
                assert tiny_tokenizer.decode(comp.token_ids[:-1]) == comp.text  # no special tokens inside
            else:
                assert len(comp.token_ids) == 50 and NUMBER_LIST.match(comp.text)
    assert stopped > 0
    # Greedy decoding under the grammar also ends properly: 10 numbers of 3 digits at most leave only eos.
    for comp in _run(tiny_model, tiny_tokenizer, SamplingParams(temperature=0, max_new_tokens=60,
                                                                 regex=NUMBERS), grammar=grammar):
        assert comp.finish_reason == "stop" and NUMBER_LIST.fullmatch(comp.text), comp.text


def test_grammar_automaton_over_token_pieces() -> None:
    texts = ["1", "2", "12", ",", " ", ", ", "a", "1,", "<eos>", ", 3", "123"]
    g = TokenAutomaton(numbers_regex(2, 2), texts, eos_id=8)

    def allowed(state):
        return set(torch.nonzero(g.masks(torch.tensor([state]))[0]).flatten().tolist())

    def step(state, token):
        assert token in allowed(state)
        return int(g.steps(torch.tensor([state]), torch.tensor([token]))[0])

    s = g.start
    assert allowed(s) == {0, 1, 2, 7}  # digits (and "1,"); no separator, no end, no 3 digits
    s = step(s, 2)  # "12"
    assert allowed(s) == {3, 5, 8, 9}  # no third digit; separator pieces or end
    s = step(step(s, 3), 4)  # "," then " "
    assert allowed(s) == {0, 1, 2}
    s = step(s, 0)  # second number started: the maximum, so no separator any more
    assert allowed(s) == {0, 1, 8}
    s = step(s, 0)  # "11": full
    assert allowed(s) == {8}
    assert step(s, 8) == g.done and allowed(g.done) == {8}  # after end of answer, only eos again
    batch = g.steps(torch.tensor([g.start, g.start]), torch.tensor([2, 6]))
    assert g.masks(batch).shape == (2, len(texts))
    assert int(batch[1]) == g.done  # a token outside the language leads nowhere but `done`


def test_grammar_prunes_dead_ends() -> None:
    # "," exists but nothing can follow it (no " " or ", <digit>" piece): it must never be offered.
    g = TokenAutomaton(numbers_regex(3, 1), ["1", ",", "<eos>"], eos_id=2)
    s = g.steps(torch.tensor([g.start]), torch.tensor([0]))
    assert set(torch.nonzero(g.masks(s)[0]).flatten().tolist()) == {2}


def test_topk_logprobs_equal_a_teacher_forced_pass(tiny_model, tiny_tokenizer) -> None:
    for regex in (None, NUMBERS):
        params = SamplingParams(temperature=1.0, max_new_tokens=8, logprobs_top_k=5, regex=regex)
        grammar = TokenAutomaton.from_regex(regex, tiny_tokenizer) if regex is not None else None
        comps = _run(tiny_model, tiny_tokenizer, params, grammar=grammar)
        for chat, comp in zip(CHATS, comps, strict=True):
            prompt = encode_chat(tiny_tokenizer, chat)
            assert comp.top_logprobs is not None and len(comp.top_logprobs) == len(comp.token_ids)
            with torch.no_grad():
                logits = tiny_model(input_ids=torch.tensor([prompt + comp.token_ids])).logits[0]
            logp = torch.log_softmax(logits, -1)
            for t, row in enumerate(comp.top_logprobs):
                ref = logp[len(prompt) - 1 + t].topk(5)
                assert [i for i, _ in row] == ref.indices.tolist()
                assert torch.allclose(torch.tensor([lp for _, lp in row]), ref.values, atol=1e-5)


def test_grammar_only_lm_head_columns_change_nothing(tiny_model, tiny_tokenizer) -> None:
    # Without top-k capture the sampler computes only the grammar's LM-head columns; with it, all.
    grammar = TokenAutomaton.from_regex(NUMBERS, tiny_tokenizer)
    for temperature in (0.0, 1.0):
        fast = _run(tiny_model, tiny_tokenizer, SamplingParams(temperature=temperature, max_new_tokens=30,
                                                               regex=NUMBERS), grammar=grammar)
        full = _run(tiny_model, tiny_tokenizer, SamplingParams(temperature=temperature, max_new_tokens=30,
                                                               regex=NUMBERS, logprobs_top_k=1),
                    grammar=grammar)
        assert [c.token_ids for c in fast] == [c.token_ids for c in full]


def test_draw_follows_the_distribution() -> None:
    from sublearn.backends.sampler import _draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    counts = torch.bincount(_draw(probs, torch.Generator().manual_seed(0)), minlength=6).double() / 20000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.015)
