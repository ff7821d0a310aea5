"""Our training loop (`fit`): supervised fine-tuning or top-k KL distillation on `Example`s, with the LM
head computed only at completion positions (`CompletionLM`, `batch_loss`), a seeded data order,
exact checkpoints and resume, gradient accumulation, data parallelism (one all-reduce per step) and
FSDP2 sharding for full fine-tuning.

Our own short loop rather than TRL's SFTTrainer or `transformers.Trainer`: on the same batches a Trainer
gives bit-identical weights and is no faster (BENCHMARKS.md "Training loop"), while matching our run
needs overriding its optimizer, schedule, sampler, batch counting and final checkpoint.

    fit(model, examples, cfg, out_dir, seed)       # cfg: a TrainConfig
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sublearn.errors import SublearnError
from sublearn.logs import progress
from sublearn.pipeline_config import TrainConfig
from sublearn.rundir import JsonlAppender, read_jsonl
from sublearn.training import distributed
from sublearn.training.examples import Example
from sublearn.training.optim import make_optimizer

log = logging.getLogger(__name__)


class CompletionLM(torch.nn.Module):
    """A causal LM whose forward gives logits only at `positions` (see `_completion_logits`): the root
    module FSDP shards, so that its forward (which gathers the embedding, final norm and head) runs."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return _completion_logits(self.model, input_ids, attention_mask, positions)


def _completion_logits(model: Any, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits only at `positions` (row, col) pairs: the LM head is a big matmul, skip it elsewhere."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
    h = hidden[positions[:, 0], positions[:, 1]]
    logits: torch.Tensor = base.get_output_embeddings()(h)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _has_loss(ex: Example, k: int, kind: str) -> bool:
    """Whether completion position `k` of `ex` carries a loss: not masked (a defense's loss mask), and
    for distillation ('kl') a position with a teacher distribution left after the label policy."""
    if ex.loss_mask is not None and k < len(ex.loss_mask) and not ex.loss_mask[k]:
        return False
    if kind == "kl":
        return ex.topk_ids is not None and k < len(ex.topk_ids) and bool(ex.topk_ids[k])
    return True


def loss_positions(batch: Sequence[Example], kind: str) -> int:
    """How many positions of `batch` carry a loss (what the summed loss is divided by)."""
    return sum(_has_loss(ex, k, kind) for ex in batch for k in range(len(ex.input_ids) - ex.n_prompt))


def batch_loss(model: Any, batch: Sequence[Example], pad_id: int, kind: str) -> tuple[torch.Tensor, int]:
    """Summed loss over the completion tokens of `batch` that carry one (`loss_positions`) and their count."""
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    pos, targets = [], []
    t_ids: list[list[int]] = []
    t_lp: list[list[float]] = []
    for r, ex in enumerate(batch):
        ids[r, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        att[r, : len(ex.input_ids)] = 1
        for j in range(ex.n_prompt, len(ex.input_ids)):
            k = j - ex.n_prompt
            if not _has_loss(ex, k, kind):
                continue
            if kind == "kl":
                assert ex.topk_ids is not None and ex.topk_logp is not None
                t_ids.append(ex.topk_ids[k])
                t_lp.append(ex.topk_logp[k])
            pos.append((r, j - 1))
            targets.append(ex.input_ids[j])
    device = next(model.parameters()).device
    if not pos:
        return torch.zeros((), requires_grad=True, device=device), 0
    where = torch.tensor(pos, device=device)
    logits = (model(ids.to(device), att.to(device), where) if isinstance(model, CompletionLM)
              else _completion_logits(model, ids.to(device), att.to(device), where))
    if kind == "ce":
        return F.cross_entropy(logits.float(), torch.tensor(targets, device=device), reduction="sum"), len(pos)
    k_max = max(len(row) for row in t_ids)
    tid = torch.zeros((len(pos), k_max), dtype=torch.long)
    tlp = torch.full((len(pos), k_max), -math.inf)
    for i, (row_ids, row_lp) in enumerate(zip(t_ids, t_lp, strict=True)):
        tid[i, : len(row_ids)] = torch.tensor(row_ids)
        tlp[i, : len(row_lp)] = torch.tensor(row_lp)
    return topk_kl(logits, tid.to(device), tlp.to(device)).sum(), len(pos)


def topk_kl(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Forward KL(p_teacher || q_student) per position, with the teacher's distribution given on its
    top-k ids (renormalised over them; -inf entries are padding).

    student_logits: (N, V); teacher_ids, teacher_logp: (N, K). Returns (N,)."""
    p_logp = teacher_logp - torch.logsumexp(teacher_logp, dim=-1, keepdim=True)
    q_logp = torch.log_softmax(student_logits.float(), dim=-1).gather(-1, teacher_ids)
    p = p_logp.exp()
    terms = torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p))
    return terms.sum(-1)


def _linear_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def fit(model: Any, examples: Sequence[Example], cfg: TrainConfig, out_dir: Path, seed: int, *,
        kind: str = "ce", pad_id: int = 0, label: str = "train",
        snapshot: Callable[[int], None] | None = None, autocast: str | None = None) -> dict[str, Any]:
    """Train the trainable parameters of `model` on `examples` (kind 'ce' or 'kl'), checkpointing to
    `out_dir/ckpt.pt` every `cfg.checkpoint_every` steps and resuming from it. Returns a summary.
    `snapshot(n)` is called (main process only) after update n for every n in `cfg.snapshots`.
    `autocast` ('bfloat16'/'float16'): run the forward in that dtype under torch.autocast (the
    trainable weights, gradients and optimizer stay float32).

    Under a multi-process launcher (see `sublearn.training.distributed`) each process takes its share of every
    global batch and gradients are summed across processes before the step; only the main process
    writes the log and checkpoints, and its summary is the one to keep. With `cfg.fsdp` (full
    fine-tuning) the model is sharded across the processes instead of replicated (`_shard`); the
    summary of the main process then carries the gathered weights under "state_dict"."""
    if not examples:
        raise SublearnError(f"{out_dir}: no training examples (all empty or longer than max_length)")
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    sharded = cfg.fsdp and world > 1
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else steps_per_epoch * cfg.epochs
    late = [n for n in cfg.snapshots if n >= total]
    if late:
        raise SublearnError(f"train.snapshots: {late[0]} is not below the {total} updates of this run "
                            f"({len(examples)} examples); use smaller snapshots or set train.steps")
    if cfg.snapshots and cfg.schedule == "linear":
        log.warning("%s: snapshots under a linear learning-rate decay are points along this run, not what "
                    "a shorter run would give; schedule: constant makes them so", label)
    net: Any = _shard(model) if sharded else model
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    if cfg.schedule == "constant":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: _linear_schedule(s, cfg.warmup_steps, total))
    ckpt = out_dir / "ckpt.pt"
    log_path = out_dir / "train_log.jsonl"
    start = 0
    if ckpt.is_file():
        start = _load_checkpoint(ckpt, net, optimizer, scheduler, sharded)
        log.info("%s: resuming at step %d of %d", label, start, total)
    losses: list[float] = []
    logger = None
    if main:
        history = [r for r in read_jsonl(log_path, repair_tail=True) if r["step"] < start]
        log_path.unlink(missing_ok=True)
        logger = JsonlAppender(log_path)
        for rec in history:
            logger.write(rec)
        losses = [r["loss"] for r in history]
    device = params[0].device
    mixed = autocast if autocast != "float32" else None
    amp = torch.autocast(device.type, dtype=getattr(torch, mixed)) if mixed else contextlib.nullcontext()
    net.train()
    t0, tokens = time.perf_counter(), 0
    with progress(enabled=main) as bar:
        task = bar.add_task(label, total=total, completed=start)
        for step in range(start, total):
            epoch, k = divmod(step, steps_per_epoch)
            order = np.random.default_rng([seed, epoch, 11]).permutation(len(examples))
            batch = [examples[i] for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]]
            # Normalised by the global batch's count of positions that carry a loss (masked and dropped
            # positions excluded, so masking does not shrink the gradient), so summed shards give the
            # full gradient.
            n_tok = loss_positions(batch, kind)
            shard = batch[rank::world]
            micro = [shard[m:m + cfg.micro_batch_size] for m in range(0, len(shard), cfg.micro_batch_size)]
            # FSDP gathers each layer's weights inside the forward: every process must run as many
            # forwards and backwards as the others (a short shard runs a weightless one).
            rounds = math.ceil(math.ceil(len(batch) / world) / cfg.micro_batch_size) if sharded else len(micro)
            # FSDP averages gradients over processes; the loss is scaled so that they are summed.
            scale = world / max(n_tok, 1) if sharded else 1 / max(n_tok, 1)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for m in range(rounds):
                part = micro[m] if m < len(micro) else batch[:1]
                with amp:
                    loss, _ = batch_loss(net, part, pad_id, kind)
                (loss * (scale if m < len(micro) else 0.0)).backward()
                loss_sum += float(loss.detach()) if m < len(micro) else 0.0
            if sharded:
                loss_sum = _sum_scalar(loss_sum, device)
            elif world > 1:
                loss_sum = _sum_gradients(params, loss_sum)
            norm: Any = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor under FSDP
            optimizer.step()
            scheduler.step()
            tokens += sum(len(ex.input_ids) for ex in batch)
            losses.append(float(loss_sum) / max(n_tok, 1))
            if logger is not None:
                logger.write({"step": step, "epoch": epoch, "loss": losses[-1], "grad_norm": grad_norm,
                              "lr": scheduler.get_last_lr()[0]})
                logger.flush()
            bar.advance(task)
            if main and snapshot is not None and step + 1 in cfg.snapshots:
                snapshot(step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                _save_checkpoint(ckpt, net, optimizer, scheduler, step + 1, sharded)
    if logger is not None:
        logger.close()
    net.eval()
    elapsed = time.perf_counter() - t0
    first = float(np.mean(losses[: max(1, steps_per_epoch // 4)])) if main else math.nan
    last = float(np.mean(losses[-max(1, steps_per_epoch // 4):])) if main else math.nan
    summary: dict[str, Any] = {
        "steps": total, "examples": len(examples), "loss_first": first, "loss_last": last, "seconds": elapsed,
        "tokens_per_second": tokens / elapsed if elapsed > 0 else None, "processes": world,
        "autocast": mixed, "fsdp": sharded}
    if sharded:
        summary["state_dict"] = _full_state(net)
    return summary


def _shard(model: Any) -> CompletionLM:
    """`model` sharded across the processes with FSDP2 (`torch.distributed.fsdp.fully_shard`): one unit
    per decoder layer (the classes the model names in `_no_split_modules`), the rest (embedding, final
    norm, head) in the root, which is a `CompletionLM` so that its forward gathers them."""
    from torch.distributed.fsdp import fully_shard

    layer_types = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not units:
        raise SublearnError(f"train.fsdp: {type(model).__name__} names no decoder-layer classes "
                            "(_no_split_modules) to shard by; train without fsdp")
    for unit in units:
        fully_shard(unit)
    root = CompletionLM(model)
    fully_shard(root)
    return root


def _state_options(full: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _full_state(net: CompletionLM) -> dict[str, torch.Tensor]:
    """The sharded model's weights gathered (main process; the others get {}), named as in the
    unwrapped model. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(net, options=_state_options(True))
    return {name.removeprefix("model."): value for name, value in state.items() if isinstance(value, torch.Tensor)}


def _save_checkpoint(ckpt: Path, net: Any, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                     sharded: bool) -> None:
    """Trainable weights, optimizer and schedule after `step` updates, written by the main process
    (aside and renamed). Sharded: every process takes part in gathering them."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        params = _full_state(net)
        optim = get_optimizer_state_dict(net, optimizer, options=_state_options(True))
        state = {"params": params, "fsdp_optimizer": optim}
    elif distributed.is_main():
        state = {"params": {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad},
                 "optimizer": optimizer.state_dict()}
    if not distributed.is_main():
        return
    state.update(scheduler=scheduler.state_dict(), step=step)
    tmp = ckpt.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(ckpt)


def _load_checkpoint(ckpt: Path, net: Any, optimizer: torch.optim.Optimizer, scheduler: Any, sharded: bool) -> int:
    """Restore what `_save_checkpoint` wrote; returns the step to resume at. A checkpoint that cannot be
    loaded (refused, damaged, or not one for this model) is a one-line error naming it."""
    from sublearn.backends.models import weights_errors

    fix = "delete it and rerun: training starts again from the first update"
    with weights_errors(ckpt, fix):
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict) or not {"scheduler", "step"} <= set(state):
        raise SublearnError(f"{ckpt}: not a training checkpoint written by sublearn; {fix}")
    try:
        return _restore(state, net, optimizer, scheduler, sharded, ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # names, shapes or types of another model
        raise SublearnError(f"{ckpt}: does not fit this model and optimizer ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:120]}); {fix}") from None


def _restore(state: dict[str, Any], net: Any, optimizer: torch.optim.Optimizer, scheduler: Any, sharded: bool,
             ckpt: Path) -> int:
    if sharded != ("fsdp_optimizer" in state):
        raise SublearnError(f"{ckpt}: written with train.fsdp={not sharded}; resume with the same setting or "
                            "delete the checkpoint")
    if sharded:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(net, {f"model.{n}": v for n, v in state["params"].items()},
                             options=_state_options(True))
        set_optimizer_state_dict(net, optimizer, state["fsdp_optimizer"], options=_state_options(True))
    else:
        trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for name, value in state["params"].items():
                trainable[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _sum_scalar(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    flat = value.double().reshape(1).to(device)
    distributed.all_reduce_sum_(flat)
    return flat[0].cpu()


def _sum_gradients(params: Sequence[torch.nn.Parameter], loss_sum: torch.Tensor) -> torch.Tensor:
    """Sum every parameter's gradient and the loss over all processes with one all-reduce. A process
    whose shard was empty contributes zeros (it must still join the collective); a parameter that got
    no gradient on any process keeps none, as in one process (AdamW then leaves it alone)."""
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [has, loss_sum.float().reshape(1).to(device)])
    distributed.all_reduce_sum_(flat)
    offset = 0
    flags = flat[-1 - len(params):-1].tolist()
    for p, flag in zip(params, flags, strict=True):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype) if flag > 0 else None
        offset += n
    return flat[-1].double().cpu()
