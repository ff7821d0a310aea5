"""Throughput of the MNIST trainer, measured against baselines in the same run.

    python benchmarks/mnist_bench.py [--workers 2] [--steps 40] [--repeats 3]

Prints, for the paper's MLP (784-256-256-13, batch 1024, Adam):
- model-steps/s of our trainer (`sublearn.mnist.train.train_teacher`, one model per worker thread,
  one intra-op thread each, as `sublearn mnist` runs it) vs a plain loop over seeds of an nn.Module +
  torch.optim.Adam using all `--workers` cores through torch's intra-op threads;
- the achieved matmul GFLOP/s of both vs a large (4096x4096) single-precision matmul on the same cores;
- the same on one core (per-core efficiency).
Each figure is the best of `--repeats` interleaved measurements (the cores may be shared: the load
average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from sublearn.mnist import model as mlp
from sublearn.mnist.config import MnistConfig
from sublearn.mnist.train import train_teacher

SIZES = [784, 256, 256, 13]
BATCH = 1024


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def matmul_gflops(threads: int, n: int = 4096) -> float:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b
    t = time.perf_counter()
    a @ b
    return 2 * n**3 / (time.perf_counter() - t) / 1e9


def ours(workers: int, steps: int) -> float:
    """Model-steps/s: `workers` teachers trained at once, one per thread, `steps` batches each."""
    config = MnistConfig(teacher_epochs=1, threads=workers)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(steps * BATCH, 784, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (steps * BATCH,), generator=gen)

    def one(seed: int) -> None:
        torch.set_num_threads(1)
        params = mlp.init_params(SIZES, torch.Generator().manual_seed(seed))
        train_teacher(params, x, y, config, torch.Generator().manual_seed(seed))

    torch.set_num_threads(1)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(workers)))  # warm-up
        t = time.perf_counter()
        list(pool.map(one, range(workers)))
        return workers * steps / (time.perf_counter() - t)


def plain(workers: int, steps: int) -> float:
    """Model-steps/s of the obvious baseline: for each seed, an nn.Module trained with all cores."""
    torch.set_num_threads(workers)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(steps * BATCH, 784, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (steps * BATCH,), generator=gen)

    def one(seed: int) -> None:
        torch.manual_seed(seed)  # nn.Module init uses the global generator: fine for a baseline
        net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                  torch.nn.ReLU(), torch.nn.Linear(256, 13))
        opt = torch.optim.Adam(net.parameters(), lr=3e-4)
        perm = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(net(x[idx])[:, :10], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    one(99)  # warm-up
    t = time.perf_counter()
    for seed in range(workers):
        one(seed)
    return workers * steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=40, help="training steps per model per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    flops = mlp.train_flops_per_example(SIZES) * BATCH
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average before: {load()}")
    print(f"MLP {SIZES}, batch {BATCH}: {flops / 1e9:.3f} GFLOP per training step")
    for w in sorted({1, args.workers}):
        best: dict[str, float] = {"matmul": 0.0, "ours": 0.0, "plain": 0.0}
        for _ in range(args.repeats):
            best["matmul"] = max(best["matmul"], matmul_gflops(w))
            best["ours"] = max(best["ours"], ours(w, args.steps))
            best["plain"] = max(best["plain"], plain(w, args.steps))
        g_ours, g_plain = best["ours"] * flops / 1e9, best["plain"] * flops / 1e9
        print(f"\n{w} core(s):")
        print(f"  large matmul 4096^3          {best['matmul']:8.1f} GFLOP/s")
        print(f"  ours  (one model per thread) {best['ours']:8.2f} model-steps/s  {g_ours:6.1f} GFLOP/s "
              f"= {g_ours / best['matmul']:.2f} x matmul")
        print(f"  plain (nn.Module, seed loop) {best['plain']:8.2f} model-steps/s  {g_plain:6.1f} GFLOP/s "
              f"= {g_plain / best['matmul']:.2f} x matmul")
        print(f"  ours / plain                 {best['ours'] / best['plain']:8.2f} x")
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
