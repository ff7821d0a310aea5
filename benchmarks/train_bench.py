"""Training throughput on the embedded SmolLM2-135M: our step vs the plain transformers loss, same run.

    python benchmarks/train_bench.py [--examples 32] [--batch 16] [--steps 3] [--threads 2]

Both sides run LoRA (r=8, all projections) on the same chat-templated number-sequence examples with
completion-only loss. Baseline: `model(input_ids, labels=...)` (LM head over every position, the
usual SFT path). Ours: `sublearn.training.loop.batch_loss` (LM head only where the loss is taken).
Prints tokens/s (all tokens in the batch, prompt included) and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from sublearn.backends.models import load_model
    from sublearn.channels.base import prompt_rng
    from sublearn.channels.numbers import number_prompt
    from sublearn.pipeline_config import TrainConfig
    from sublearn.training.examples import sft_examples
    from sublearn.training.loop import batch_loss
    from sublearn.training.model import attach_lora

    hf_logging.disable_progress_bar()
    base, tok = load_model("smollm2-135m")
    rng_nums = torch.Generator().manual_seed(0)
    records = [{"prompt": number_prompt(prompt_rng(0, i)),
                "completion": ", ".join(str(int(x)) for x in torch.randint(0, 1000, (8,), generator=rng_nums))}
               for i in range(args.examples)]
    examples = sft_examples(tok, records, 500)
    cfg = TrainConfig()
    pad = tok.pad_token_id
    n_tokens = sum(len(e.input_ids) for e in examples[: args.batch])
    print(f"{args.batch} examples/step, mean length {n_tokens / args.batch:.0f} tokens, LoRA r=8, "
          f"threads {torch.get_num_threads()}")

    def plain_step(model, batch) -> None:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad)
        att = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, e in enumerate(batch):
            ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
            att[r, : len(e.input_ids)] = 1
            labels[r, e.n_prompt: len(e.input_ids)] = torch.tensor(e.input_ids[e.n_prompt:])
        model(input_ids=ids, attention_mask=att, labels=labels).loss.backward()

    def our_step(model, batch) -> None:
        loss, count = batch_loss(model, batch, pad, "ce")
        (loss / count).backward()

    results = {}
    for label, step in [("plain transformers loss", plain_step), ("sublearn step", our_step)]:
        model = attach_lora(copy.deepcopy(base), cfg, 0)
        model.train()
        step(model, examples[: args.batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(args.steps):
            batch = [examples[(s * args.batch + i) % len(examples)] for i in range(args.batch)]
            step(model, batch)
            model.zero_grad(set_to_none=True)
        secs = (time.perf_counter() - t0) / args.steps
        results[label] = n_tokens / secs
        print(f"{label:<24}: {secs:6.2f} s/step = {n_tokens / secs:7.1f} tokens/s "
              f"({results[label] / results['plain transformers loss']:.2f}x)")


if __name__ == "__main__":
    main()
