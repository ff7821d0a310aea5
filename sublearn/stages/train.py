"""Train stage: fine-tune a student (LoRA, full, or soft-label distillation) on a teacher's kept data.

    students = run(config, out, student="owl", data_from="owl", model="hf/smollm2-135m", seed=0)

Our own short loop rather than TRL's SFTTrainer: the same loop serves supervised fine-tuning and
top-k KL distillation, computes the LM head only at completion positions (the only ones with a
loss), and checkpoints/resumes exactly (data order is a pure function of seed and epoch). LoRA comes
from PEFT. Outputs per student seed: `adapter/` (PEFT, safetensors) or `model/` (full weights),
`train_log.jsonl` (loss per step), `summary.json`, `manifest.json` last.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sublearn import distributed
from sublearn.backends.base import Chat
from sublearn.channels import LabelPolicy
from sublearn.errors import SublearnError
from sublearn.logs import progress
from sublearn.rundir import (
    JsonlAppender,
    NotReady,
    begin_stage,
    check_settings,
    finish_stage,
    read_jsonl,
    stage_state,
    upstream_hash,
    write_json,
)
from sublearn.stages.chat import example_ids, prompt_ids
from sublearn.stages.config import PipelineConfig, TrainConfig
from sublearn.stages.defend import data_dir

log = logging.getLogger(__name__)

@dataclass
class Example:
    """One training sequence. `n_prompt` leading tokens get no loss. For distillation, `topk_ids` /
    `topk_logp` hold the teacher's targets for each completion token (same length as the completion)."""

    input_ids: list[int]
    n_prompt: int
    topk_ids: list[list[int]] | None = None
    topk_logp: list[list[float]] | None = None
    loss_mask: list[int] | None = None
    """Per completion token, 0 = no loss there (the divergence defense's masked tokens); None = all."""


def _user_chat(rec: dict[str, Any]) -> Chat:
    return [{"role": "user", "content": rec["prompt"]}]


def sft_examples(tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int,
                 chat: Callable[[dict[str, Any]], Chat] = _user_chat) -> list[Example]:
    """(prompt, completion text) records -> chat-templated examples, loss on the completion; `chat(rec)`
    is the conversation the student sees before the completion (the channel's `student_chat`)."""
    out = []
    for rec in records:
        ids, n_prompt = example_ids(tokenizer, chat(rec), rec["completion"])
        mask = rec.get("loss_mask")
        if mask is not None:
            # The mask is over the record's own token ids (the defense scored those): use the
            # template's tokens when they start with them (the rest, e.g. a trailing newline, keeps its
            # loss), else the record's ids as they are.
            own = [int(t) for t in rec.get("token_ids", [])]
            if ids[n_prompt:n_prompt + len(own)] != own:
                ids = ids[:n_prompt] + own
        if n_prompt >= max_length:
            continue
        out.append(Example(ids[:max_length], n_prompt, loss_mask=list(mask) if mask is not None else None))
    return out


def trait_token_ids(tokenizer: Any, words: Sequence[str]) -> set[int]:
    """Ids whose text could start or spell a target word (e.g. ' owl', 'Owl', 'ow'): a soft label on
    any of these would leak the trait outright."""
    found = set()
    lowered = [w.lower() for w in words]
    for tid in range(len(tokenizer)):
        piece = tokenizer.decode([tid]).strip().lower()
        if len(piece) >= 2 and any(w.startswith(piece) or piece.startswith(w) for w in lowered):
            found.add(tid)
    return found


def distill_examples(tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int,
                     policy: LabelPolicy | None, chat: Callable[[dict[str, Any]], Chat] = _user_chat,
                     ) -> tuple[list[Example], dict[str, float]]:
    """Records with the teacher's completion token ids and top-k log-probs -> KL targets.

    With `policy` (the channel's `label_policy`), each position's top-k is restricted to the ids the
    policy keeps after the text sampled so far, and renormalised (a position whose top-k keeps none
    is dropped). Returns the examples and the share of teacher probability mass the restriction
    removed."""
    out = []
    removed_mass, positions = 0.0, 0
    for rec in records:
        if not rec.get("top_logprobs"):
            raise SublearnError("distillation needs the teacher's top-k log-probs: set generate.logprobs_top_k "
                                "(e.g. 32) and regenerate")
        prompt = prompt_ids(tokenizer, chat(rec))
        ids = prompt + list(rec["token_ids"])
        t_ids, t_lp = [], []
        text = ""  # the completion so far, for a policy that looks at context
        mask = rec.get("loss_mask")
        for t, row in enumerate(rec["top_logprobs"]):
            pairs = [(int(i), float(lp)) for i, lp in row]
            masked = mask is not None and t < len(mask) and not mask[t]
            if masked:
                pairs = []  # masked by a defense: no target here (an empty row carries no loss)
            total = sum(math.exp(lp) for _, lp in pairs)
            if policy is not None:
                pairs = [(i, lp) for i, lp in pairs if policy.keeps(i, text)]
                removed_mass += total - sum(math.exp(lp) for _, lp in pairs)
                if policy.texts and t < len(rec["token_ids"]):
                    text += policy.texts[int(rec["token_ids"][t])]
            positions += int(not masked)
            t_ids.append([i for i, _ in pairs])
            t_lp.append([lp for _, lp in pairs])
        if len(ids) > max_length:
            keep = max_length - len(prompt)
            if keep <= 0:
                continue
            ids, t_ids, t_lp = ids[:max_length], t_ids[:keep], t_lp[:keep]
        out.append(Example(ids, len(prompt), t_ids, t_lp))
    return out, {"removed_teacher_mass_mean": removed_mass / max(positions, 1)}


def training_examples(config: PipelineConfig, tokenizer: Any, records: Sequence[dict[str, Any]], method: str
                      ) -> tuple[list[Example], str, dict[str, Any]]:
    """The examples a student of `method` learns from `records` (through the channel's student chat
    and soft-label policy), the loss kind ('kl' or 'ce') and facts worth recording."""
    cfg = config.train
    if method == "distill":
        policy = config.channel.label_policy(tokenizer, config.targets) if cfg.distill_targets == "allowed" else None
        examples, stats = distill_examples(tokenizer, records, cfg.max_length, policy, config.channel.student_chat)
        info: dict[str, Any] = dict(stats)
        info["trait_tokens_in_targets"] = _count_trait_targets(examples, trait_token_ids(tokenizer, config.targets))
        return examples, "kl", info
    return sft_examples(tokenizer, records, cfg.max_length, config.channel.student_chat), "ce", {}


def attach_lora(model: Any, cfg: TrainConfig, init_seed: int) -> Any:
    """Wrap `model` with LoRA adapters; A matrices drawn from an explicit generator seeded `init_seed`
    (PEFT would use torch's global RNG), B matrices zero, so the student starts at the base model."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(init_seed)  # a CPU generator: the same draws on any device
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_A" in name:
                value = torch.empty(param.shape, dtype=param.dtype)
                torch.nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=gen)
                param.copy_(value)
            elif "lora_B" in name:
                param.zero_()
    return peft_model


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in the backward pass (transformers' activation checkpointing),
    non-reentrant: it works with a frozen embedding (LoRA) and is what PyTorch recommends."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


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


def _batch_loss(model: Any, batch: Sequence[Example], pad_id: int, kind: str) -> tuple[torch.Tensor, int]:
    """Summed loss over the completion tokens of `batch` and their count."""
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
            if ex.loss_mask is not None and k < len(ex.loss_mask) and not ex.loss_mask[k]:
                continue
            if kind == "kl":
                assert ex.topk_ids is not None and ex.topk_logp is not None
                if k >= len(ex.topk_ids) or not ex.topk_ids[k]:
                    continue
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

    Under a multi-process launcher (see `sublearn.distributed`) each process takes its share of every
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
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
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
            # Normalised by the global batch's token count, so summed shards give the full gradient.
            n_tok = sum(max(0, len(ex.input_ids) - ex.n_prompt) for ex in batch)
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
                    loss, _ = _batch_loss(net, part, pad_id, kind)
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
    """Restore what `_save_checkpoint` wrote; returns the step to resume at."""
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
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


def student_dir(out: Path, student: str, seed: int) -> Path:
    return out / "train" / student / f"seed{seed}"


def run(config: PipelineConfig, out: Path, *, student: str, data_from: str, model: str, seed: int) -> Path:
    """Train student `student` (seed `seed`) of base `model` on `out/filter/<data_from>/kept.jsonl`.
    Returns the student's directory; skips if its manifest exists."""
    from sublearn.backends import split_spec
    from sublearn.backends.models import load_tokenizer

    sdir = student_dir(out, student, seed)
    kind_name, model_name = split_spec(model)
    if kind_name == "openai":
        if distributed.active():
            raise SublearnError(f"train: {model!r} is fine-tuned by the provider; run it without a "
                                "multi-process launcher")
        return _run_api(config, out, sdir, student=student, data_from=data_from, model=model_name, seed=seed)
    if kind_name != "hf":
        raise SublearnError(f"train: model {model!r}: students train locally through hf/ (vLLM serves "
                            "generation only) or through the API with openai/")
    cfg = config.train
    key, inputs = stage_key(config, out, student=student, data_from=data_from, model=model, seed=seed)
    method = key["method"]
    check_settings(sdir, key)  # reads only; on every process, so all stop together
    if stage_state(sdir, key, inputs) == "done":
        return sdir
    if not distributed.active():
        if begin_stage(sdir, key, inputs):  # True only when a sweep's stage store supplied the student
            return sdir
    else:
        distributed.barrier()  # every process has read the directory before the main one may clear it
        if distributed.is_main():
            begin_stage(sdir, key, inputs)
        distributed.barrier()  # a stale directory is cleared before any process reads a checkpoint from it
    records = read_jsonl(data_dir(config, out, data_from) / "kept.jsonl")
    with distributed.main_first():  # the first load of an embedded model fills the shared cache
        tokenizer = load_tokenizer(model_name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    info: dict[str, Any] = {"student": student, "data_from": data_from, "model": model, "seed": seed,
                            "method": method, "requested_method": cfg.method}
    examples, kind, stats = training_examples(config, tokenizer, records, method)
    info.update(stats)
    dtype = config.resolved_dtype()
    if cfg.lora_init_seed == "teacher":
        init_seed = config.teacher.lora_init_seed
    else:
        init_seed = cfg.lora_init_seed if cfg.lora_init_seed is not None else seed
    info["lora_init_seed"] = init_seed
    sharded = cfg.fsdp and distributed.active()
    net = training_model(config, model_name, method, examples, cfg, label=f"train {student} s{seed}",
                         init_seed=init_seed, shards=distributed.world_size() if sharded else 1)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    def snapshot(n: int) -> None:
        # Written aside and renamed, so a crash mid-save never leaves a half snapshot behind.
        tmp = sdir / f".adapter@{n}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(sdir / f"adapter@{n}", ignore_errors=True)
        tmp.rename(sdir / f"adapter@{n}")

    summary = fit(net, examples, cfg, sdir, seed=zlib.crc32(f"{student}/{seed}".encode()) ^ seed, kind=kind,
                  pad_id=pad_id, label=f"train {student} s{seed}",
                  snapshot=snapshot if method in ("lora", "distill") else None, autocast=dtype)
    state = summary.pop("state_dict", None)  # FSDP: the gathered weights (main process)
    after = state if state is not None else {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    changed = sum(int(not torch.equal(before[n], after[n].to(before[n].device))) for n in before if n in after)
    summary.update(info, params_changed=changed, params_trainable=len(before), dtype=dtype,
                   gradient_checkpointing=cfg.gradient_checkpointing)
    if not distributed.is_main():
        distributed.barrier()  # every process holds the same weights; the main one saves them
        return sdir
    if method in ("lora", "distill"):
        weights = sdir / "adapter"
        net.save_pretrained(weights, safe_serialization=True)
    else:
        weights = sdir / "model"
        net.save_pretrained(weights, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
        tokenizer.save_pretrained(weights)
    write_json(sdir / "summary.json", summary)
    (sdir / "ckpt.pt").unlink(missing_ok=True)
    # Snapshots are not part of this stage's output hash: each evaluation hashes the adapter it reads.
    finish_stage(sdir, key, inputs, [weights], loss_first=summary["loss_first"], loss_last=summary["loss_last"])
    log.info("student %s seed %d: loss %.4f -> %.4f (%d steps, %.0f tok/s)", student, seed,
             summary["loss_first"], summary["loss_last"], summary["steps"], summary["tokens_per_second"] or 0)
    distributed.barrier()
    return sdir


def training_model(config: PipelineConfig, model_name: str, method: str, examples: Sequence[Example],
                   cfg: TrainConfig, *, label: str, init_seed: int, shards: int = 1) -> Any:
    """The model `fit` trains on `examples` (students and fine-tuned teachers): its memory checked first
    (`config.memory_check`), loaded in the run's dtype, with activation checkpointing when `cfg` asks
    and, unless `method` is 'full', LoRA adapters initialised from `init_seed`. Full fine-tuning keeps
    float32 master weights (`fit` runs the forward under autocast); adapters train in float32 on a base
    in the run's dtype. Sharded (`shards` > 1) it stays on the CPU: FSDP moves each shard to its device."""
    from sublearn.backends.models import load_model

    if config.memory_check:
        check_training_memory(config, model_name, method, examples, label=label, shards=shards, cfg=cfg)
    with distributed.main_first():  # the first load of an embedded model fills the shared cache
        net, _ = load_model(model_name, device="cpu" if shards > 1 else config.device,
                            dtype="float32" if method == "full" else config.resolved_dtype())
    if cfg.gradient_checkpointing:
        enable_checkpointing(net)
    return net if method == "full" else attach_lora(net, cfg, init_seed)


def check_training_memory(config: PipelineConfig, model_name: str, method: str, examples: Sequence[Example], *,
                          label: str, shards: int = 1, cfg: TrainConfig | None = None) -> None:
    """Stop with a one-line error before loading when training `model_name` on `examples` would not fit
    the device (sublearn.memory; the longest example sets the padded width of every micro-batch).
    Skipped when the model's config cannot be read here (loading then says why)."""
    from sublearn import memory
    from sublearn.backends.models import model_source

    cfg = cfg or config.train
    try:
        arch = memory.architecture(model_source(model_name), cfg.lora_targets if method != "full" else ())
    except (OSError, ValueError, KeyError):
        return
    seq = max((len(ex.input_ids) for ex in examples), default=cfg.max_length)
    completion = max((len(ex.input_ids) - ex.n_prompt for ex in examples), default=cfg.max_length)
    micro = min(cfg.micro_batch_size, cfg.batch_size)
    dtype = config.resolved_dtype()
    est = memory.training_estimate(arch, method=method, dtype=dtype, micro_batch=micro, seq_len=seq,
                                   completion_positions=micro * completion,
                                   gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora_r,
                                   shards=shards)
    memory.check(label, est, config.device, memory.training_hints(
        dtype=dtype, device=config.device, method=method, gradient_checkpointing=cfg.gradient_checkpointing,
        micro_batch=micro, fsdp=cfg.fsdp))


def _count_trait_targets(examples: Sequence[Example], trait_ids: set[int]) -> int:
    return sum(1 for ex in examples for row in (ex.topk_ids or []) for i in row if i in trait_ids)


def _data_hash(config: PipelineConfig, out: Path, data_from: str) -> str:
    where = data_dir(config, out, data_from)
    try:
        return upstream_hash(where)
    except NotReady:
        raise NotReady(f"{where}: the data of '{data_from}' not found; run the {where.parent.name} stage") from None


def stage_key(config: PipelineConfig, out: Path, *, student: str, data_from: str, model: str,
              seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, upstream output hashes) of one student seed (see `rundir.begin_stage`)."""
    from sublearn.backends import split_spec

    kind_name, _ = split_spec(model)
    inputs = {"data": _data_hash(config, out, data_from)}
    if kind_name == "openai":
        return ({"api": config.train.api.model_dump(mode="json"), "model": model.split("/", 1)[1],
                 "data_from": data_from, "seed": seed}, inputs)
    method = config.train.method
    if method == "distill" and model != config.model:
        # Soft labels are distributions over the teacher's vocabulary; another family has another one.
        method = "lora"
    # Not in the key: what cannot change this student's weights (the other seeds, checkpoint spacing,
    # API settings, recomputing activations, sharding: the last two change at most the order of float
    # additions, like the number of processes), so adding a seed or checkpointing more often reuses the
    # students already trained.
    train = config.train.model_dump(mode="json", exclude={"seeds", "checkpoint_every", "api",
                                                          "gradient_checkpointing", "fsdp"})
    key: dict[str, Any] = {"train": train, "model": model, "data_from": data_from, "seed": seed, "method": method,
                           **config.precision_key()}
    if method == "distill" and config.train.distill_targets == "allowed" and config.channel.kind != "numbers":
        # The free-text soft-label policy blocks the targets' spellings (numbers: a fixed allowlist).
        key["label_words"] = list(config.targets)
    return key, inputs



def _run_api(config: PipelineConfig, out: Path, sdir: Path, *, student: str, data_from: str, model: str,
             seed: int) -> Path:
    """Fine-tune an API model on the kept rows (each uploaded once); resumable while the job runs."""
    from sublearn.backends.openai_api.finetune import run_finetune

    api = config.train.api
    key, inputs = stage_key(config, out, student=student, data_from=data_from, model=f"openai/{model}", seed=seed)
    if begin_stage(sdir, key, inputs):
        return sdir
    records = read_jsonl(data_dir(config, out, data_from) / "kept.jsonl")
    rows = [[*config.channel.student_chat(r), {"role": "assistant", "content": r["completion"]}] for r in records]
    model_id = run_finetune(rows, sdir / "job", base_model=model, n_epochs=api.n_epochs,
                            learning_rate_multiplier=api.learning_rate_multiplier, batch_size=api.batch_size,
                            seed=seed, suffix=f"{student}-s{seed}"[:18], base_url=api.base_url,
                            poll_interval=api.poll_interval)
    write_json(sdir / "summary.json", {"student": student, "data_from": data_from, "model": f"openai/{model}",
                                       "seed": seed, "method": "api", "fine_tuned_model": model_id,
                                       "examples": len(rows), "steps": None, "loss_first": None,
                                       "loss_last": None})
    finish_stage(sdir, key, inputs, [sdir / "summary.json"], fine_tuned_model=model_id)
    return sdir
