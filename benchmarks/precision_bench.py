"""Student training throughput: float32 vs bfloat16 autocast, batch size and threads, same run.

    python benchmarks/precision_bench.py [--steps 3] [--threads 2] [--batches 4,16] [--bf16-batches 4,16]
    python benchmarks/precision_bench.py --pairs 3 [--steps 5]     # 1 process x 2 threads vs 2 x 1

What is timed: one forward + backward of the embedded SmolLM2-135M with LoRA (r=8, all projections),
`sublearn.training.loop.batch_loss` with the KL-to-top-32 soft-label loss, on batches shaped like the
demo's distillation students (104 tokens per row, chat template and prompt included, as their logged
tokens/s imply; loss on the last 24): random token ids and random top-32 targets (throughput does not
depend on their values). Each setting: a warm-up step, then
`--steps` timed steps, all in this process, one after the other, so machine load hits them alike.

Rows: float32 at batch 4 (the demo's setting, the baseline every ratio is against), float32 at larger
batches (what batching several students' rows could gain at most: a batched-adapter trainer runs the
same matrix products), the same under `torch.autocast("cpu", torch.bfloat16)` (float32 master weights;
the `dtype: bfloat16` path), and float32 at batch 4 on one thread (what a second worker process
would get out of the second core). The header prints the processor's bf16 support: without AVX512-BF16
or AMX, oneDNN has no native bf16 matrix kernels and bf16 runs through conversions.

`--pairs R`: what `workers: 2` buys on 2 cores. R alternating rounds of (a) this process on `--threads`
threads at the baseline batch, (b) two processes of one thread each stepping at the same time (each a
`--single` run of this script); prints each round's tokens/s (for the pair, the sum of both) and the
mean ratio (b)/(a). Alternating rounds, because this machine's speed drifts by up to 1.5x over minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="4,16", help="comma-separated float32 batch sizes (the first is the baseline)")
    ap.add_argument("--bf16-batches", default=None, help="comma-separated bf16 batch sizes (default: the baseline's "
                    "only; emulated bf16 is slow)")
    ap.add_argument("--length", type=int, default=104, help="tokens per row")
    ap.add_argument("--completion", type=int, default=24, help="tokens with a loss, at the end of each row")
    ap.add_argument("--pairs", type=int, default=0, help="rounds of 1 x --threads vs 2 processes x 1 thread")
    ap.add_argument("--single", action="store_true", help="(internal) print one float32 rate and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from sublearn.backends.models import load_model
    from sublearn.pipeline_config import TrainConfig
    from sublearn.rundir import cpu_bf16, cpu_model
    from sublearn.training.examples import Example
    from sublearn.training.loop import batch_loss
    from sublearn.training.model import attach_lora

    hf_logging.disable_progress_bar()
    base, tok = load_model("smollm2-135m")
    gen = torch.Generator().manual_seed(0)
    vocab = base.config.vocab_size
    n_prompt = args.length - args.completion
    batches = [int(b) for b in args.batches.split(",")]

    def examples(n: int) -> list[Example]:
        out = []
        for _ in range(n):
            ids = torch.randint(0, vocab, (args.length,), generator=gen).tolist()
            top = torch.randint(0, vocab, (args.completion, 32), generator=gen).tolist()
            logp = torch.log_softmax(torch.randn(args.completion, 32, generator=gen), -1).tolist()
            out.append(Example(input_ids=ids, n_prompt=n_prompt, topk_ids=top, topk_logp=logp))
        return out

    print(f"processor: {cpu_model()}; bf16 matrix kernels: {cpu_bf16()}; torch {torch.__version__}, "
          f"ATen {torch.backends.cpu.get_cpu_capability()}")
    print(f"rows of {args.length} tokens (loss on the last {args.completion}), LoRA r=8, KL to top-32, "
          f"{args.steps} timed steps after a warm-up")
    model = attach_lora(copy.deepcopy(base), TrainConfig(), 0)
    model.train()
    pad = tok.pad_token_id or 0

    def rate(batch: int, dtype: str, threads: int) -> float:
        torch.set_num_threads(threads)
        data = examples(batch * (args.steps + 1))
        amp = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext())

        def step(rows: list[Example]) -> None:
            with amp:
                loss, count = batch_loss(model, rows, pad, "kl")
            (loss.float() / count).backward()
            model.zero_grad(set_to_none=True)

        step(data[:batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(1, args.steps + 1):
            step(data[s * batch:(s + 1) * batch])
        return batch * args.length * args.steps / (time.perf_counter() - t0)

    if args.single:
        print(rate(batches[0], "float32", args.threads))
        return
    if args.pairs:
        import subprocess
        import sys

        one = [sys.executable, __file__, "--single", "--threads", "1", "--steps", str(args.steps),
               "--batches", str(batches[0]), "--length", str(args.length), "--completion", str(args.completion)]
        ratios = []
        print(f"batch {batches[0]}: round, 1 process x {args.threads} threads, 2 processes x 1 thread (sum), ratio")
        for r in range(args.pairs):
            alone = rate(batches[0], "float32", args.threads)
            procs = [subprocess.Popen(one, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                     for _ in range(2)]
            pair = sum(float(proc.communicate()[0].split()[-1]) for proc in procs)
            ratios.append(pair / alone)
            print(f"{r + 1}  {alone:7.1f}  {pair:7.1f}  {pair / alone:5.2f}x")
        print(f"mean ratio, 2 x 1 thread over 1 x {args.threads} threads: {sum(ratios) / len(ratios):.2f}x")
        return
    settings = [(b, "float32", args.threads) for b in batches]
    bf16 = [int(b) for b in args.bf16_batches.split(",")] if args.bf16_batches else batches[:1]
    settings += [(b, "bfloat16", args.threads) for b in bf16]
    settings += [(batches[0], "float32", 1)]
    baseline = None
    print(f"{'dtype':<9} {'batch':>5} {'threads':>7} {'tokens/s':>9} {'ratio':>7}")
    for batch, dtype, threads in settings:
        tps = rate(batch, dtype, threads)
        baseline = baseline or tps
        print(f"{dtype:<9} {batch:>5} {threads:>7} {tps:9.1f} {tps / baseline:6.2f}x")


if __name__ == "__main__":
    main()
