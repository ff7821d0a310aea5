"""Student training throughput: float32 vs bfloat16 autocast, batch size and threads, same run.

    python benchmarks/precision_bench.py [--steps 3] [--threads 2] [--batches 4,16] [--bf16-batches 4,16]

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
