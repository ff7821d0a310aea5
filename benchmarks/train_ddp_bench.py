"""Data-parallel training vs one process, same machine, same run: `sublearn.training.loop.fit` on the embedded
SmolLM2-135M (LoRA r=8) over the same examples.

    python benchmarks/train_ddp_bench.py [--procs 2] [--examples 32] [--batch 16] [--epochs 1]

Baseline: one process with `--procs` threads. Data parallel: `torchrun --nproc_per_node <procs>`,
one thread each (gloo on CPU; on a multi-GPU machine pass --device cuda and it is NCCL, one GPU per
process). Prints tokens/s of each, their ratio, and the largest difference between the two runs'
trained LoRA weights (they should agree up to float summation order).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def worker(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    from sublearn.backends.models import load_model
    from sublearn.channels.base import prompt_rng
    from sublearn.channels.numbers import number_prompt
    from sublearn.pipeline_config import TrainConfig
    from sublearn.training import distributed
    from sublearn.training.examples import sft_examples
    from sublearn.training.loop import fit
    from sublearn.training.model import attach_lora

    hf_logging.disable_progress_bar()
    device = distributed.init(args.device) if distributed.launched() else args.device
    with distributed.main_first():
        model, tok = load_model("smollm2-135m", device=device)
    gen = torch.Generator().manual_seed(0)
    records = [{"prompt": number_prompt(prompt_rng(0, i)),
                "completion": ", ".join(str(int(x)) for x in torch.randint(0, 1000, (8,), generator=gen))}
               for i in range(args.examples)]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, micro_batch_size=args.batch, lr=1e-3,
                      checkpoint_every=10**6)
    model = attach_lora(model, cfg, init_seed=0)
    summary = fit(model, sft_examples(tok, records, 500), cfg, Path(args.out), seed=0, pad_id=tok.pad_token_id)
    if distributed.is_main():
        params = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(params, Path(args.out) / "params.pt")
        (Path(args.out) / "summary.json").write_text(json.dumps(summary))


def launch(args: argparse.Namespace, out: Path, procs: int) -> dict:
    out.mkdir(parents=True)
    common = ["--worker", "--out", str(out), "--examples", str(args.examples), "--batch", str(args.batch),
              "--epochs", str(args.epochs), "--device", args.device]
    if procs == 1:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.procs)}
        cmd = [sys.executable, __file__, *common]
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               __file__, *common]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(args, Path(tmp) / "one", 1)
        many = launch(args, Path(tmp) / "many", args.procs)
        a = torch.load(Path(tmp) / "one" / "params.pt")
        b = torch.load(Path(tmp) / "many" / "params.pt")
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    scale = max(float(a[n].abs().max()) for n in a)
    print(f"{args.examples} examples, batch {args.batch}, {one['steps']} steps, device {args.device}")
    print(f"1 process x {args.procs} threads: {one['tokens_per_second']:.0f} tok/s, "
          f"loss {one['loss_first']:.4f} -> {one['loss_last']:.4f}")
    print(f"{args.procs} processes x 1 thread: {many['tokens_per_second']:.0f} tok/s, "
          f"loss {many['loss_first']:.4f} -> {many['loss_last']:.4f}")
    print(f"ratio (data parallel / one process): {many['tokens_per_second'] / one['tokens_per_second']:.2f}x")
    print(f"max |LoRA weight difference|: {diff:.2e} (largest weight {scale:.2e})")


if __name__ == "__main__":
    main()
