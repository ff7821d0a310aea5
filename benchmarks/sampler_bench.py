"""Sampler throughput: our KV-cache sampler vs plain `model.generate`, same prompts, same run.

    python benchmarks/sampler_bench.py [--n 64] [--max-new-tokens 48] [--threads 2]

Prints generated tokens/s (real tokens up to and including end-of-answer) for plain `generate`
(sampling, T=1, batched, left-padded) and for our sampler, unconstrained and with the number grammar,
and the ratio to `generate` measured in this same run.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from sublearn.backends.base import SamplingParams
    from sublearn.backends.models import load_model
    from sublearn.backends.sampler import NumberGrammar, sample
    from sublearn.lm.chat import prompt_ids
    from sublearn.lm.filter import parse_numbers
    from sublearn.lm.prompts import number_prompt, prompt_rng

    hf_logging.disable_progress_bar()
    model, tok = load_model("smollm2-135m")
    prompts = [prompt_ids(tok, [{"role": "user", "content": number_prompt(prompt_rng(0, i))}]) for i in range(args.n)]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    print(f"{args.n} number prompts, mean prompt length {sum(map(len, prompts)) / len(prompts):.1f} tokens, "
          f"max_new_tokens {args.max_new_tokens}, threads {torch.get_num_threads()}")

    def count(rows: list[list[int]]) -> int:
        total = 0
        for row in rows:
            total += row.index(eos) + 1 if eos in row else len(row)
        return total

    # Plain generate: left-padded batch, sampling at T=1.
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    att = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        att[r, width - len(p):] = 1
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    base_s = time.perf_counter() - t0
    base_tok = count(out[:, width:].tolist())
    base_rate = base_tok / base_s
    print(f"plain generate      : {base_tok:6d} tokens in {base_s:6.1f} s = {base_rate:7.1f} tok/s   (1.00x)")

    grammar = NumberGrammar.for_tokenizer(tok)
    for label, params, g in [
        ("sublearn sampler    ", SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens), None),
        ("sublearn + numbers  ", SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens,
                                                constraint="numbers"), grammar),
        ("  + top-32 logprobs ", SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens,
                                                constraint="numbers", logprobs_top_k=32), grammar),
    ]:
        t0 = time.perf_counter()
        comps = sample(model, prompts, params, torch.Generator().manual_seed(0), eos_id=eos, pad_id=pad, grammar=g,
                       decode=lambda x: tok.decode(x, skip_special_tokens=True))
        secs = time.perf_counter() - t0
        n_tok = sum(len(c.token_ids) for c in comps)
        valid = sum(parse_numbers(c.text)[1] is None for c in comps) / len(comps)
        print(f"{label}: {n_tok:6d} tokens in {secs:6.1f} s = {n_tok / secs:7.1f} tok/s   "
              f"({n_tok / secs / base_rate:.2f}x)  valid number lists {valid:.0%}")


if __name__ == "__main__":
    main()
