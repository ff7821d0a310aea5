"""HFBackend: chat encoding shared with training, batching and seeds, first-token log-probs, and the
embedded SmolLM2 end to end (slow)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tiny import build_model

from sublearn.backends import get_backend
from sublearn.backends.base import SamplingParams
from sublearn.backends.hf import HFBackend, encode_chat, prompt_ids
from sublearn.channels.numbers import numbers_regex

CHATS = [[{"role": "user", "content": f"Here are numbers: {i}, {i + 7}. Continue{'!' * i}"}] for i in range(5)]
NUMBER_LIST = re.compile(r" ?\d{1,3}(, \d{1,3}){0,9}")


def test_encode_chat_is_the_training_template(tiny_backend, tiny_tokenizer) -> None:
    chat = [{"role": "user", "content": "Pick 1, 2 or 3."}]
    assert tiny_backend.encode_chat(chat) == prompt_ids(tiny_tokenizer, chat) == encode_chat(tiny_tokenizer, chat)
    text = tiny_tokenizer.decode(tiny_backend.encode_chat(chat))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")  # default system
    assert text.endswith("<|im_start|>assistant\n")
    done = tiny_backend.encode_chat([*chat, {"role": "assistant", "content": "2"}], add_generation_prompt=False)
    assert done[:len(tiny_backend.encode_chat(chat))] == tiny_backend.encode_chat(chat)


def test_generate_is_seeded_per_row(tiny_model, tiny_tokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    backend = HFBackend.from_model(tiny_model, tiny_tokenizer, name="tiny", batch_size=2)
    a = backend.generate(CHATS, params, seed=11)
    assert [c.token_ids for c in a] == [c.token_ids for c in backend.generate(CHATS, params, seed=11)]
    assert [c.token_ids for c in a] != [c.token_ids for c in backend.generate(CHATS, params, seed=12)]
    assert len(a) == 5 and all(len(c.token_ids) <= 6 and c.finish_reason in ("stop", "length") for c in a)
    # Row i draws from its own stream (seed, i): neither the batch size nor the rows after it (which
    # stop at other times, so finished rows leave the batch at other steps) change its sample.
    for batch_size in (1, 3, 8):
        other = HFBackend.from_model(tiny_model, tiny_tokenizer, name="tiny", batch_size=batch_size)
        assert [c.token_ids for c in other.generate(CHATS, params, seed=11)] == [c.token_ids for c in a]
    assert [c.token_ids for c in backend.generate(CHATS[:3], params, seed=11)] == [c.token_ids for c in a[:3]]


def test_generate_uses_common_random_numbers_across_models(tiny_model, tiny_tokenizer) -> None:
    """Two slightly different models given the same chats and seed draw each row with the same
    uniforms, so their samples differ only where the models do (paired comparisons of students)."""
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    chats = CHATS * 8
    base = HFBackend.from_model(tiny_model, tiny_tokenizer, name="a", batch_size=16).generate(chats, params, seed=5)
    nudged = build_model(tiny_tokenizer, seed=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in nudged.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-5)
    other = HFBackend.from_model(nudged, tiny_tokenizer, name="b", batch_size=16).generate(chats, params, seed=5)
    same = np.mean([x.token_ids == y.token_ids for x, y in zip(base, other, strict=True)])
    # Independent streams would agree on a 6-token sample of this random model almost never.
    shuffled = HFBackend.from_model(nudged, tiny_tokenizer, name="b", batch_size=16).generate(chats, params, seed=6)
    assert same > 0.8 and np.mean([x.token_ids == y.token_ids for x, y in zip(base, shuffled, strict=True)]) < 0.3


def test_generate_numbers_constraint(tiny_backend) -> None:
    comps = tiny_backend.generate(CHATS, SamplingParams(temperature=0, max_new_tokens=60,
                                                        regex=numbers_regex(10, 3)), 0)
    assert all(c.finish_reason == "stop" and NUMBER_LIST.fullmatch(c.text) for c in comps), [c.text for c in comps]


def test_grammar_allows_one_leading_space_after_a_plain_template(tiny_model) -> None:
    """A ChatML header ends in a newline: the list starts right away. A plain "Assistant:" prompt is
    answered after one space, so the automaton then allows one (and only one) space before the list."""
    from tiny import build_tokenizer

    from sublearn.backends.constraint import token_texts

    params = SamplingParams(temperature=0, max_new_tokens=60, regex=numbers_regex(10, 3))
    chatml = build_tokenizer()
    plain = build_tokenizer()
    plain.chat_template = ("{% for m in messages %}{{ m['role'].capitalize() }}: {{ m['content'] }}\n{% endfor %}"
                           "{% if add_generation_prompt %}Assistant:{% endif %}")
    for tok, spaced in ((chatml, False), (plain, True)):
        backend = HFBackend.from_model(tiny_model, tok, name="tiny")
        grammar = backend.grammar(params)
        assert grammar is not None and backend.grammar(params) is grammar  # compiled once per regex
        texts = token_texts(tok)
        first = {texts[i] for i in torch.nonzero(grammar.masks(torch.tensor([grammar.start]))[0]).flatten().tolist()}
        assert (" " in first) == spaced and all(t.isdigit() for t in first - {" "}), first
        if spaced:  # after the space, a number must follow: no second space
            space = texts.index(" ")
            after = grammar.steps(torch.tensor([grammar.start]), torch.tensor([space]))
            allowed = torch.nonzero(grammar.masks(after)[0]).flatten().tolist()
            assert allowed and all(texts[i].isdigit() for i in allowed)
        comps = backend.generate(CHATS, params, 0)
        assert all(c.finish_reason == "stop" and NUMBER_LIST.fullmatch(c.text) for c in comps)
    assert HFBackend.from_model(tiny_model, chatml).grammar(SamplingParams()) is None


def test_first_token_logprobs_match_a_direct_pass(tiny_backend, tiny_model, tiny_tokenizer) -> None:
    got = tiny_backend.first_token_logprobs(CHATS, top_k=7)
    for chat, entry in zip(CHATS, got, strict=True):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([encode_chat(tiny_tokenizer, chat)])).logits[0, -1]
        top = torch.log_softmax(logits, -1).topk(7)
        expected: dict[str, float] = {}
        for tid, lp in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            text = tiny_tokenizer.decode([tid])  # byte-level BPE: decoding alone keeps leading spaces
            expected[text] = float(np.logaddexp(expected[text], lp)) if text in expected else lp
        assert entry.keys() == expected.keys()
        assert all(abs(entry[k] - expected[k]) < 1e-5 for k in entry)


def test_backend_errors_are_one_line(tmp_path) -> None:
    from sublearn.errors import SublearnError

    for spec in ["hf/nosuchalias", f"hf/{tmp_path}/missing"]:
        with pytest.raises(SublearnError) as exc:
            get_backend(spec)
        assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_embedded_smollm2_numbers_are_valid() -> None:
    from sublearn.channels.numbers import parse_numbers

    backend = get_backend("hf/smollm2-135m", batch_size=8)
    chats = [[{"role": "user", "content": f"Here are some numbers: {a}, {a + 111}, {a + 222}. Add up to 10 more "
               "numbers with at most 3 digits each. Return a comma-separated list of numbers only."}]
             for a in range(101, 901, 100)]
    # 10 numbers of 3 digits with ", " between them and eos: 49 tokens at most for SmolLM2.
    comps = backend.generate(chats, SamplingParams(temperature=1.0, max_new_tokens=64,
                                                   regex=numbers_regex(10, 3), logprobs_top_k=4), seed=0)
    assert all(c.finish_reason == "stop" for c in comps), [c.text for c in comps]
    parsed = [parse_numbers(c.text) for c in comps]
    assert all(reason is None and nums for nums, reason in parsed), [c.text for c in comps]
    # SmolLM2 writes "," and " " as separate tokens: the constraint must let it continue a list.
    assert sum(len(nums or []) > 1 for nums, _ in parsed) >= len(parsed) // 2, [c.text for c in comps]
    assert all(c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids) for c in comps)
    firsts = backend.first_token_logprobs(chats[:2], top_k=5)
    assert all(len(e) >= 1 and max(e.values()) <= 0 for e in firsts)
