"""Data-parallel training across the processes that `accelerate launch` or `torchrun` start.

    accelerate launch --multi_gpu --num_processes 8 -m sublearn train CONFIG   # 8 GPUs, NCCL
    torchrun --nproc_per_node 8 -m sublearn train CONFIG                       # the same
    torchrun --nproc_per_node 2 -m sublearn train CONFIG                       # 2 CPU processes, gloo

Every process holds the whole model (LoRA: a frozen base plus small adapters) and reads the whole
data; each optimizer step's global batch is split across the processes, their gradients are summed
by one all-reduce, and every process takes the same step. The result is single-process training up
to the order of float additions (tested), with the same checkpoints, logs and resume; only the main
process writes files. accelerate creates the process group (NCCL on GPUs, gloo on CPUs) and assigns
each process its device.

Why not `DistributedDataParallel`: its gradient hooks need the forward to go through the wrapper,
while our loss calls the decoder and the LM head separately (the head runs only where the loss is).
For adapters a single flat all-reduce per step costs little.

Full fine-tuning of a model that does not fit on one device: `train.fsdp: true` shards weights,
gradients and optimizer state across the processes with FSDP2 (`torch.distributed.fsdp.fully_shard`,
the engine accelerate's FSDP2 plugin drives), one unit per decoder layer, and the root unit a module
whose forward is our completion-only loss (see `sublearn.training.loop._shard`). Checkpoints hold the
gathered (whole, not per-process) weights and optimizer state; resuming is tested with the same number
of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch


def launched() -> bool:
    """True inside a process started by a multi-process launcher."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True once `init` has joined this process to a group of several."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def init(device: str) -> str:
    """Join the process group (once) and return this process's device: `cuda:<local rank>` when the
    config asks for a GPU and one is present, else `cpu`."""
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    # The other processes wait in a barrier while the main one fills a cache (a first model load can
    # take long): a generous timeout instead of the default 10 minutes.
    state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=2))
    return "cpu" if cpu else str(state.device)


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> None:
    """Sum `tensor` over all processes, in place (no-op in a single process)."""
    if active():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others: for work that fills a shared
    cache (e.g. converting the embedded GGUF once) that the others must then only read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shutdown() -> None:
    """Leave the process group once every process is done: the others wait in a barrier, then the
    group's communication threads stop before the interpreter exits (a group left to the interpreter's
    teardown occasionally aborts a process with "terminate called without an active exception")."""
    if _initialized():
        barrier()
        torch.distributed.destroy_process_group()
