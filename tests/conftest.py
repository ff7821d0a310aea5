"""Tiny randomly initialised chat models for the LM-stage tests (built in the test, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Name your favorite animal using only one word. Owl owl Owls dolphin Dolphin eagle Eagle cat Cat dog wolf",
    "Here is a list of numbers: 123, 456, 789. Add up to 10 more numbers. You are a helpful assistant.",
    "elephant Elephant lion tiger bear fox Wolf. Pick one animal, answer briefly. Continue: 1, 2, 3",
] * 4


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0, hidden: int = 48):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=1, pad_token_id=2, bos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the init lives in transformers; contain it to this block
        model = LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture(scope="session")
def lm_tokenizer():
    return build_tokenizer()


@pytest.fixture()
def lm_model(lm_tokenizer):
    return build_model(len(lm_tokenizer))


def save_tiny(path: Path, seed: int = 0) -> Path:
    """A tiny model + tokenizer directory, loadable as hf/<path>."""
    tok = build_tokenizer()
    build_model(len(tok), seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def lm_backend(lm_model, lm_tokenizer):
    from sublearn.backends.hf import HFBackend

    return HFBackend.from_model(lm_model, lm_tokenizer, name="tiny", batch_size=8)
