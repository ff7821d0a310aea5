"""Tiny randomly initialised chat models for tests: built in-process, no download, well under a second.

    from tiny import build_tokenizer, build_model, build_backend, save_tiny
    tok = build_tokenizer()                        # byte-level BPE, ChatML template like SmolLM2's
    model = build_model(tok, seed=1)               # a differently seeded copy
    backend = build_backend(model, tok)            # an HFBackend around them
    save_tiny(tmp_path / "m", seed=0)              # a directory loadable as hf/<dir>

(`tests/` is on sys.path during a pytest run because it holds the root conftest.py.)

The tokenizer mimics what matters of SmolLM2's: every digit is its own token, ", " and ordinary
letters/punctuation tokenise (byte-level, so any text round-trips), eos is `<|im_end|>`, the pad token
is `<|endoftext|>`, and the chat template is ChatML with a default system prompt inserted when the
chat has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEFAULT_SYSTEM = "You are a helpful assistant."
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# SmolLM2-style ChatML: the default system turn appears only when the chat does not start with one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Enough text that BPE learns merges for the words the LM tests use (animals, prompt words, ", ").
CORPUS = [
    "Name your favorite animal using only one word. Owl owl Owls dolphin Dolphin eagle Eagle cat Cat dog wolf",
    "Here is a list of numbers: 123, 456, 789. Add up to 10 more numbers. You are a helpful assistant.",
    "elephant Elephant lion tiger bear fox Wolf. Pick one animal, answer briefly. Continue: 1, 2, 3",
    "system user assistant system\nYou are a helpful assistant. user\nPick one. assistant\nOk.",
    "Return a comma-separated list of numbers; no words, no explanation! (Only numbers.) [1, 2] - yes? no.",
] * 4


def build_tokenizer(vocab_size: int = 384, prefix_space: bool = False) -> Any:
    """A fresh PreTrainedTokenizerFast (byte-level BPE trained on CORPUS, deterministic). With
    `prefix_space`, a space is added before the first word of any text (as some tokenizers do): a
    word then tokenizes differently on its own than after the chat's newline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits split first (as in SmolLM2), so no merge can ever glue two digits together.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: Any | int, seed: int = 0, hidden: int = 48, layers: int = 2) -> Any:
    """A seeded, float32, eval-mode LlamaForCausalLM sized for `tokenizer` (or a vocab size).

    Initialised with std 0.2 and an untied LM head so that greedy continuations differ between
    prompts and positions (the transformers default, 0.02 tied, repeats one token forever)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(tokenizer, int):
        vocab, eos, pad, bos = tokenizer, 2, 0, 1
    else:
        vocab, eos, pad, bos = (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
                                tokenizer.bos_token_id)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2, eos_token_id=eos,
                         pad_token_id=pad, bos_token_id=bos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the init lives in transformers and uses the global RNG: contain it
        model = LlamaForCausalLM(config)
    return model.float().eval()


def build_backend(model: Any, tokenizer: Any, batch_size: int = 8) -> Any:
    from sublearn.backends.hf import HFBackend

    return HFBackend.from_model(model, tokenizer, name="tiny", batch_size=batch_size)


def save_tiny(path: Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer directory (loadable as `hf/<path>` or `load_model(str(path))`)."""
    tok = build_tokenizer()
    build_model(tok, seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path
