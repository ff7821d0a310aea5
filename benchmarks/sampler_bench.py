"""Our KV-cache sampler vs plain `model.generate` on the embedded SmolLM2-135M, same prompts.

    python benchmarks/sampler_bench.py                      # 64 prompts, batch 64, 64 new tokens
    python benchmarks/sampler_bench.py --n 32 --batch 32 --threads 1   # under load: 1 thread (spec §9)

Both decode at temperature 1 (no top-k/top-p) with the same max_new_tokens and batch size, in the
same process, alternating, so machine load hits both alike. Tokens/s counts only real generated
tokens (up to and including each row's end-of-answer), not padding after a row has stopped. The
"numbers" rows constrain both to the same number-list regex (`numbers_regex(10, 3)`, compiled to a
`TokenAutomaton`; for `generate` through a LogitsProcessor that replays the automaton over each row's
tokens).

    python benchmarks/sampler_bench.py --demo [--profile]

`--demo`: the demo's generation instead (sublearn/configs/demo.yaml: its channel's prompts and number
grammar, batch 96, 28 new tokens, and the top-32 log-probs the soft labels need; `generate` returns its
raw logits, `output_logits=True`, and takes the same top-32 of each step's log-softmax afterwards).
`--profile`: then also run ours once under torch.profiler and print the operators that take the most
CPU time.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import torch

from sublearn.backends.base import SamplingParams
from sublearn.backends.constraint import TokenAutomaton
from sublearn.backends.hf import HFBackend
from sublearn.channels.numbers import numbers_regex, parse_numbers

log = logging.getLogger("sampler_bench")


def number_prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    chats = []
    for _ in range(n):
        shown = ", ".join(str(x) for x in rng.integers(100, 1000, size=int(rng.integers(3, 9))))
        chats.append([{"role": "user", "content": f"Here are some numbers: {shown}. Add up to 10 more numbers "
                       "(at most 3 digits each) to continue the sequence. Return a comma-separated list of "
                       "numbers only."}])
    return chats


class GrammarProcessor:
    """transformers LogitsProcessor: mask everything the token automaton forbids, per row. Stateful
    (one automaton step per call, vectorized) so that `generate` pays no more for the constraint than ours."""

    def __init__(self, grammar: TokenAutomaton, prompt_len: int):
        self.grammar, self.prompt_len = grammar, prompt_len
        self.states: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.prompt_len or self.states is None:
            self.states = torch.full((input_ids.shape[0],), self.grammar.start, dtype=torch.long)
        else:
            self.states = self.grammar.steps(self.states, input_ids[:, -1])
        return scores.masked_fill(~self.grammar.masks(self.states), float("-inf"))


def demo_prompts(n: int) -> tuple[list[list[dict[str, str]]], SamplingParams, int]:
    """The demo's first `n` generation chats, its sampling parameters and batch size."""
    from sublearn.config import load_config
    from sublearn.configs import resolve
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages.generate import prompts, sampling_params

    config = load_config(PipelineConfig, resolve("demo"))
    chats = [[{"role": "user", "content": u.user}] for u in prompts(config, 0, n)]
    return chats, sampling_params(config), config.generate.batch_size


def plain_generate(backend: HFBackend, chats: list, params: SamplingParams, batch: int, seed: int,
                   grammar: TokenAutomaton | None) -> tuple[int, float]:
    from transformers import LogitsProcessorList

    tok, model = backend.tokenizer, backend.model
    eos, pad = tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(seed)  # generate() samples from the global RNG; the benchmark owns this process
    real, start = 0, time.perf_counter()
    for b in range(0, len(chats), batch):
        prompts = [backend.encode_chat(c) for c in chats[b:b + batch]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        procs = LogitsProcessorList([GrammarProcessor(grammar, width)] if grammar else [])
        k = params.logprobs_top_k
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=params.max_new_tokens, eos_token_id=eos,
                                 pad_token_id=pad, logits_processor=procs, output_logits=bool(k),
                                 return_dict_in_generate=True)
            if k:  # the soft labels: top-k of the raw distribution at every step
                [torch.log_softmax(step.float(), -1).topk(k, dim=-1) for step in out.logits]
        for row in out.sequences[:, width:].tolist():
            real += row.index(eos) + 1 if eos in row else len(row)
    return real, time.perf_counter() - start


def ours(backend: HFBackend, chats: list, params: SamplingParams, seed: int) -> tuple[int, float, list]:
    start = time.perf_counter()
    comps = backend.generate(chats, params, seed=seed)
    return sum(len(c.token_ids) for c in comps), time.perf_counter() - start, comps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=["none", "numbers"], default=None)
    ap.add_argument("--demo", action="store_true", help="the demo's prompts and generation settings")
    ap.add_argument("--profile", action="store_true", help="also profile ours once (torch.profiler)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    demo = None
    if args.demo:
        demo = demo_prompts(args.n if args.n != 64 else 96)
        args.n, args.batch, args.max_new_tokens = len(demo[0]), demo[2], demo[1].max_new_tokens
        args.only = "numbers"
    backend = HFBackend(args.model, batch_size=args.batch, threads=args.threads)
    chats = demo[0] if demo else number_prompts(args.n)
    print(f"model={args.model} n={args.n} batch={args.batch} max_new_tokens={args.max_new_tokens} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'constraint':<11}{'generate tok/s':>16}{'ours tok/s':>12}{'ratio':>8}{'valid (ours)':>14}")
    for constraint in ["none", "numbers"] if args.only is None else [args.only]:
        params = demo[1] if demo else SamplingParams(
            temperature=1.0, max_new_tokens=args.max_new_tokens,
            regex=numbers_regex(10, 3) if constraint == "numbers" else None)
        grammar = backend.grammar(params)
        ours(backend, chats[:2], params, seed=0)  # warm-up (grammar masks, allocator)
        g_tok = g_s = o_tok = o_s = 0.0
        comps: list[Any] = []
        for r in range(args.repeats):
            n, s = plain_generate(backend, chats, params, args.batch, seed=r, grammar=grammar)
            g_tok, g_s = g_tok + n, g_s + s
            n, s, comps = ours(backend, chats, params, seed=r)
            o_tok, o_s = o_tok + n, o_s + s
        valid = sum(parse_numbers(c.text)[1] is None for c in comps) / len(comps)
        print(f"{constraint:<11}{g_tok / g_s:>16.1f}{o_tok / o_s:>12.1f}{(o_tok / o_s) / (g_tok / g_s):>7.2f}x"
              f"{valid:>13.0%}   (generate {g_tok:.0f} tok in {g_s:.1f}s; ours {o_tok:.0f} tok in {o_s:.1f}s)")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                ours(backend, chats, params, seed=0)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
