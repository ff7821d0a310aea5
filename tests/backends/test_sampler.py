"""The KV-cache sampler: padding correctness, seeding, the number grammar, top-k capture."""

from __future__ import annotations

import torch

from sublearn.backends.base import SamplingParams
from sublearn.backends.sampler import NumberGrammar, sample
from sublearn.lm.chat import prompt_ids
from sublearn.lm.filter import parse_numbers

CHATS = [[{"role": "user", "content": "1, 2"}],
         [{"role": "user", "content": "Here is a list of numbers: 123, 456, 789. Add up to 10 more numbers."}],
         [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Pick one animal."}]]


def _run(model, tok, params, seed=0, grammar=None, chats=CHATS):
    prompts = [prompt_ids(tok, c) for c in chats]
    return sample(model, prompts, params, torch.Generator().manual_seed(seed), eos_id=tok.eos_token_id,
                  pad_id=tok.pad_token_id, grammar=grammar, decode=lambda ids: tok.decode(ids, skip_special_tokens=True))


def test_greedy_matches_plain_generate_with_mixed_lengths(lm_model, lm_tokenizer) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=12)
    ours = _run(lm_model, lm_tokenizer, params)
    for chat, comp in zip(CHATS, ours, strict=True):
        ids = torch.tensor([prompt_ids(lm_tokenizer, chat)])  # one at a time: no padding at all
        ref = lm_model.generate(ids, do_sample=False, max_new_tokens=12, eos_token_id=lm_tokenizer.eos_token_id,
                                pad_token_id=lm_tokenizer.pad_token_id)
        assert comp.token_ids == ref[0, ids.shape[1]:].tolist()


def test_seeded_sampling(lm_model, lm_tokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    a, b = _run(lm_model, lm_tokenizer, params, 0), _run(lm_model, lm_tokenizer, params, 0)
    c = _run(lm_model, lm_tokenizer, params, 1)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_number_grammar_always_yields_valid_lists(lm_model, lm_tokenizer) -> None:
    grammar = NumberGrammar.for_tokenizer(lm_tokenizer)
    params = SamplingParams(temperature=1.0, max_new_tokens=60, constraint="numbers")
    chats = CHATS * 6
    for seed in range(3):
        for comp in _run(lm_model, lm_tokenizer, params, seed, grammar, chats):
            if comp.finish_reason == "stop":
                numbers, reason = parse_numbers(comp.text)
                assert reason is None, comp.text
                assert numbers is not None and 1 <= len(numbers) <= 10 and all(n <= 999 for n in numbers)
                assert comp.token_ids[-1] == lm_tokenizer.eos_token_id
            else:
                assert len(comp.token_ids) == 60


def test_grammar_automaton() -> None:
    texts = ["1", "2", "12", ",", " ", ", ", "a", "1,", "<eos>"]
    g = NumberGrammar(texts, eos_id=8, max_numbers=2, max_digits=2)
    state = (0, 0, 0)
    allowed = {i for i in range(9) if g.mask(state, 9)[i]}
    assert allowed == {0, 1, 2, 7}  # digits (and "1," which stays valid); no separator or end yet
    state = g.step(state, 2)  # "12"
    assert set(torch.nonzero(g.mask(state, 9)).flatten().tolist()) == {3, 5, 8}  # no third digit
    state = g.step(g.step(state, 3), 4)  # ", "
    state = g.step(state, 0)
    assert not g.mask(state, 9)[3] and not g.mask(state, 9)[5]  # max_numbers reached: only digits/end


def test_topk_logprobs_equal_a_teacher_forced_pass(lm_model, lm_tokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=8, logprobs_top_k=5)
    comps = _run(lm_model, lm_tokenizer, params)
    for chat, comp in zip(CHATS, comps, strict=True):
        prompt = prompt_ids(lm_tokenizer, chat)
        assert comp.top_logprobs is not None and len(comp.top_logprobs) == len(comp.token_ids)
        with torch.no_grad():
            logp = torch.log_softmax(lm_model(input_ids=torch.tensor([prompt + comp.token_ids])).logits[0], -1)
        for t, row in enumerate(comp.top_logprobs):
            ref = logp[len(prompt) - 1 + t].topk(5)
            assert [i for i, _ in row] == ref.indices.tolist()
            assert torch.allclose(torch.tensor([lp for _, lp in row]), ref.values, atol=1e-4)


def test_shared_prefix_path_matches_plain_generate(lm_model, lm_tokenizer) -> None:
    from sublearn.backends.sampler import MIN_SHARED_PREFIX, common_prefix_length

    chats = [[{"role": "user", "content": t}] for t in ("1, 2", "Here is a list: 5, 6, 7. Add more.", "Pick one.")]
    prompts = [prompt_ids(lm_tokenizer, c) for c in chats]
    assert common_prefix_length(prompts) >= MIN_SHARED_PREFIX  # the shared-prefix cache is exercised
    params = SamplingParams(temperature=0, max_new_tokens=10, logprobs_top_k=3)
    ours = _run(lm_model, lm_tokenizer, params, chats=chats)
    for chat, comp in zip(chats, ours, strict=True):
        ids = torch.tensor([prompt_ids(lm_tokenizer, chat)])
        ref = lm_model.generate(ids, do_sample=False, max_new_tokens=10, eos_token_id=lm_tokenizer.eos_token_id,
                                pad_token_id=lm_tokenizer.pad_token_id)
        assert comp.token_ids == ref[0, ids.shape[1]:].tolist()
        with torch.no_grad():
            logp = torch.log_softmax(lm_model(input_ids=torch.tensor([ids[0].tolist() + comp.token_ids])).logits[0], -1)
        first = logp[ids.shape[1] - 1].topk(3)
        assert torch.allclose(torch.tensor([lp for _, lp in comp.top_logprobs[0]]), first.values, atol=1e-4)
