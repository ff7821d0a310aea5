"""Our training loop vs a transformers.Trainer doing the same work, same batches, same run.

    python benchmarks/trainer_bench.py [--threads 2] [--steps 2] [--full-steps 1] [--repeats 3]
                                       [--cases lora,kl,full] [--resume-steps 2]

Loop A is `sublearn.training.loop.fit`. Loop B is a `transformers.Trainer` subclass set up to do the
same work: a Dataset of our `Example`s, a sampler giving fit's order (np.random.default_rng([seed, epoch,
11]).permutation(n)), micro-batches through gradient_accumulation_steps, a collator that returns the
Examples, `compute_loss` calling our `batch_loss` (LM head only at completion positions) normalised by
the global batch's completion-token count (handed over as `num_items_in_batch` from `get_batch_samples`),
torch AdamW with our lr/betas/weight decay, our LambdaLR schedule, clipping, a JSONL log line per step,
checkpoints at our cadence (none at the last step, as fit). Both start from the same model (LoRA A
matrices from `attach_lora`'s seeded generator).

Cases, on the embedded SmolLM2-135M and chat-templated number-sequence examples: `lora` (LoRA r=8,
cross-entropy), `kl` (LoRA, top-k KL to synthetic teacher targets: the base model's own top-k at
temperature 2), `full` (full fine-tuning, cross-entropy), `lora-ckpt` (`lora` with a checkpoint every 2
steps). For each: equivalence (largest |difference| of the trained parameters and of the per-step
losses), seconds/step of each loop over interleaved repeats (A, B, A, B, ... after one warm-up pair),
and the cost of one checkpoint save. Then exact resume on the Trainer side: N steps straight vs N/2,
stop, then `resume_from_checkpoint` on a fresh model to N (fit's own resume is tested in
tests/stages/test_train.py). The cores may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CASES = ("lora", "kl", "full", "lora-ckpt")
KL_TOPK = 16
NEVER = 10**6  # checkpoint_every that never triggers


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- Loop B: transformers.Trainer doing fit's work ----------------------------------------------------

def make_trainer_cls() -> type:
    from transformers import Trainer, TrainerCallback

    from sublearn.training.loop import batch_loss

    class ExampleDataset(torch.utils.data.Dataset):
        def __init__(self, examples: list) -> None:
            self.examples = examples

        def __len__(self) -> int:
            return len(self.examples)

        def __getitem__(self, i: int) -> Any:
            return self.examples[i]

    class FitOrderSampler(torch.utils.data.Sampler):
        """Indices of each epoch in fit's order; the Trainer (through accelerate) calls set_epoch."""

        def __init__(self, n: int, seed: int) -> None:
            self.n, self.seed, self.epoch = n, seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return self.n

        def __iter__(self):
            return iter(np.random.default_rng([self.seed, self.epoch, 11]).permutation(self.n).tolist())

    class JsonlLog(TrainerCallback):
        """One line per logged step, flushed, as fit writes train_log.jsonl."""

        def __init__(self, path: Path) -> None:
            self.file = path.open("a")

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.file.write(json.dumps({"step": state.global_step - 1, **logs}) + "\n")
                self.file.flush()

        def on_train_end(self, args, state, control, **kw):
            self.file.close()

    class NoFinalSave(TrainerCallback):
        """fit checkpoints at multiples of checkpoint_every strictly below the last step; the Trainer's
        flow callback would also save at the last step."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    class StopAt(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= self.step:
                control.should_training_stop = True
            return control

    class FitTrainer(Trainer):
        loss_is_scaled_for_ga = True  # compute_loss divides by the global batch's token count

        def __init__(self, *a: Any, cfg: Any, kind: str, pad_id: int, order_seed: int, **kw: Any) -> None:
            self.cfg, self.kind, self.pad_id, self.order_seed = cfg, kind, pad_id, order_seed
            super().__init__(*a, **kw)

        def _get_train_sampler(self, train_dataset=None):
            return FitOrderSampler(len(train_dataset or self.train_dataset), self.order_seed)

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                params = [p for p in (model or self.model).parameters() if p.requires_grad]
                self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, betas=self.cfg.adam_betas,
                                                   weight_decay=self.cfg.weight_decay)
            return self.optimizer

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                w = self.cfg.warmup_steps
                assert self.cfg.schedule == "constant"
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda s: min(1.0, (s + 1) / (w + 1)))
            return self.lr_scheduler

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            # The micro-batches of one optimizer step, and fit's normaliser: the completion tokens of the
            # whole global batch (one process here; under DDP this count would have to be all-reduced).
            batch_samples = []
            for _ in range(num_batches):
                try:
                    batch_samples.append(next(epoch_iterator))
                except StopIteration:
                    break
            n_tok = sum(max(0, len(ex.input_ids) - ex.n_prompt) for mb in batch_samples for ex in mb)
            return batch_samples, n_tok

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _ = batch_loss(model, inputs, self.pad_id, self.kind)
            loss = loss / max(int(num_items_in_batch), 1)
            return (loss, None) if return_outputs else loss

    def collate(batch: list) -> list:
        return list(batch)

    FitTrainer.dataset_cls = ExampleDataset
    FitTrainer.collate = staticmethod(collate)
    FitTrainer.callbacks = {"log": JsonlLog, "no_final_save": NoFinalSave, "stop_at": StopAt}
    return FitTrainer


def build_trainer(cls: type, model: Any, examples: list, cfg: Any, out: Path, seed: int, kind: str,
                  pad_id: int, *, save_every: int | None = None, stop_at: int | None = None) -> Any:
    from transformers import PrinterCallback, TrainingArguments

    save = save_every if save_every is not None else cfg.checkpoint_every
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size, max_steps=cfg.steps,
        learning_rate=cfg.lr, adam_beta1=cfg.adam_betas[0], adam_beta2=cfg.adam_betas[1],
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, warmup_steps=0,
        logging_strategy="steps", logging_steps=1, save_strategy="steps" if save < cfg.steps else "no",
        save_steps=save, save_total_limit=1, eval_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=seed, remove_unused_columns=False,
        disable_tqdm=True)
    trainer = cls(model=model, args=args, train_dataset=cls.dataset_cls(examples), data_collator=cls.collate,
                  cfg=cfg, kind=kind, pad_id=pad_id, order_seed=seed)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(cls.callbacks["log"](out / "train_log.jsonl"))
    trainer.add_callback(cls.callbacks["no_final_save"]())
    if stop_at is not None:
        trainer.add_callback(cls.callbacks["stop_at"](stop_at))
    return trainer


# ---- the work ---------------------------------------------------------------------------------------

def build_examples(tok: Any, base: Any, n: int) -> tuple[list, list]:
    """(SFT examples, KL examples with the base model's top-k at temperature 2 as the teacher)."""
    from sublearn.channels.base import prompt_rng
    from sublearn.channels.numbers import number_prompt
    from sublearn.training.examples import Example, sft_examples

    gen = torch.Generator().manual_seed(0)
    records = [{"prompt": number_prompt(prompt_rng(0, i)),
                "completion": ", ".join(str(int(x)) for x in torch.randint(0, 1000, (8,), generator=gen))}
               for i in range(n)]
    sft = sft_examples(tok, records, 500)
    kl = []
    with torch.no_grad():
        for ex in sft:
            logits = base(input_ids=torch.tensor([ex.input_ids])).logits[0].float()
            rows = logits[ex.n_prompt - 1: len(ex.input_ids) - 1] / 2.0
            top = torch.log_softmax(rows, -1).topk(KL_TOPK, dim=-1)
            kl.append(Example(ex.input_ids, ex.n_prompt, top.indices.tolist(), top.values.tolist()))
    return sft, kl


def case_setup(case: str, args: argparse.Namespace) -> tuple[Any, str, str]:
    """(TrainConfig, kind, method) of a case."""
    from sublearn.pipeline_config import TrainConfig

    method = {"lora": "lora", "kl": "distill", "full": "full", "lora-ckpt": "lora"}[case]
    steps = args.full_steps if case == "full" else args.steps
    cfg = TrainConfig(method=method, schedule="constant", warmup_steps=2, steps=steps, batch_size=args.batch,
                      micro_batch_size=args.micro, lr=1e-5 if case == "full" else 2e-4,
                      checkpoint_every=2 if case == "lora-ckpt" else NEVER)
    return cfg, ("kl" if case == "kl" else "ce"), method


def fresh_model(base: Any, cfg: Any, method: str) -> Any:
    from sublearn.training.model import attach_lora

    model = copy.deepcopy(base)
    if method in ("lora", "distill"):
        model = attach_lora(model, cfg, init_seed=0)
    return model


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, bool]:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    return worst, all(torch.equal(a[n], b[n]) for n in a)


def read_losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines() if line.strip()]


def run_ours(base: Any, examples: list, cfg: Any, kind: str, method: str, seed: int, pad: int, tmp: Path
             ) -> tuple[float, dict, list[float]]:
    from sublearn.training.loop import fit

    model = fresh_model(base, cfg, method)
    out = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    fit(model, examples, cfg, out, seed, kind=kind, pad_id=pad, label="ours")
    secs = time.perf_counter() - t0
    return secs, trainable(model), read_losses(out / "train_log.jsonl")


def run_trainer(cls: type, base: Any, examples: list, cfg: Any, kind: str, method: str, seed: int, pad: int,
                tmp: Path, threads: int) -> tuple[float, float, dict, list[float], Any]:
    model = fresh_model(base, cfg, method)
    out = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    trainer = build_trainer(cls, model, examples, cfg, out, seed, kind, pad)
    setup = time.perf_counter() - t0
    if torch.get_num_threads() != threads:
        print(f"  (Trainer changed torch threads to {torch.get_num_threads()}; reset to {threads})")
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t0
    return secs, setup, trainable(model), read_losses(out / "train_log.jsonl"), trainer


def save_costs(trainer: Any, tmp: Path, repeats: int = 2) -> tuple[float, float]:
    """Seconds for one checkpoint in fit's format (trainable params + optimizer + scheduler, torch.save,
    renamed into place) and one Trainer._save_checkpoint, of the same trained state; min of `repeats`."""
    model, opt, sched = trainer.model, trainer.optimizer, trainer.lr_scheduler
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        ckpt = Path(tempfile.mkdtemp(dir=tmp)) / "ckpt.pt"
        torch.save({"params": params, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": trainer.state.global_step}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)
        ours.append(time.perf_counter() - t0)
        trainer.args.output_dir = tempfile.mkdtemp(dir=tmp)
        t0 = time.perf_counter()
        trainer._save_checkpoint(trainer.model_wrapped, trial=None)
        theirs.append(time.perf_counter() - t0)
    return min(ours), min(theirs)


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def bench_case(case: str, args: argparse.Namespace, cls: type, base: Any, sft: list, kl: list, pad: int,
               tmp: Path) -> dict[str, Any]:
    cfg, kind, method = case_setup(case, args)
    examples = kl if kind == "kl" else sft
    steps = cfg.steps
    print(f"\n== {case}: method {method}, loss {kind}, {len(examples)} examples, batch {cfg.batch_size} "
          f"(micro {cfg.micro_batch_size}), {steps} steps, lr {cfg.lr}, checkpoint_every "
          f"{cfg.checkpoint_every if cfg.checkpoint_every < NEVER else 'off'}")
    before = trainable(fresh_model(base, cfg, method))
    t_a, t_b, setups, diffs, loss_diffs = [], [], [], [], []
    moved = 0.0
    trainer = None
    for r in range(args.repeats + 1):
        sa, pa, la = run_ours(base, examples, cfg, kind, method, args.seed, pad, tmp)
        sb, setup, pb, lb, trainer = run_trainer(cls, base, examples, cfg, kind, method, args.seed, pad, tmp,
                                                 args.threads)
        d, equal = max_diff(pa, pb)
        ld = max(abs(x - y) for x, y in zip(la, lb, strict=True))
        moved = max_diff(before, pa)[0]
        tag = "warm-up" if r == 0 else f"repeat {r}"
        print(f"  {tag:<9} ours {sa / steps:6.2f} s/step  Trainer {sb / steps:6.2f} s/step (+{setup:.2f} s "
              f"setup)  max|dparam| {d:.2e} (bit-equal {equal})  max|dloss| {ld:.2e}  load {load()}")
        diffs.append(d)
        loss_diffs.append(ld)
        if r > 0:
            t_a.append(sa / steps)
            t_b.append(sb / steps)
            setups.append(setup)
        del pa, pb
    ratio = [b / a for a, b in zip(t_a, t_b, strict=True)]
    print(f"  ours    s/step median [min-max]: {spread(t_a)}")
    print(f"  Trainer s/step median [min-max]: {spread(t_b)}   (Trainer construction {spread(setups)} s)")
    print(f"  Trainer/ours per pair: {' '.join(f'{x:.3f}' for x in ratio)}  median {statistics.median(ratio):.3f}"
          f"  (ratio of medians {statistics.median(t_b) / statistics.median(t_a):.3f})")
    print(f"  equivalence: max|param_ours - param_Trainer| {max(diffs):.2e} (largest update "
          f"max|param - init| {moved:.2e}); per-step loss max diff {max(loss_diffs):.2e}")
    s_ours, s_trainer = save_costs(trainer, tmp)
    print(f"  one checkpoint save: ours {s_ours:.3f} s, Trainer {s_trainer:.3f} s  (per step at the default "
          f"cadence of 20: {s_ours / 20:.4f} vs {s_trainer / 20:.4f} s)")
    del trainer
    return {"ours": t_a, "trainer": t_b, "ratio": ratio, "diff": max(diffs)}


def resume_check(args: argparse.Namespace, cls: type, base: Any, sft: list, pad: int, tmp: Path) -> None:
    """Trainer: N steps straight vs N/2 (checkpoint, stop) + resume_from_checkpoint on a fresh model."""
    from sublearn.pipeline_config import TrainConfig

    n = args.resume_steps
    half = n // 2
    cfg = TrainConfig(method="lora", schedule="constant", warmup_steps=2, steps=n, batch_size=2,
                      micro_batch_size=1, lr=2e-4, checkpoint_every=NEVER)
    per_epoch = -(-len(sft) // cfg.batch_size)
    print(f"\n== Trainer exact resume (lora): {n} steps straight vs {half} + resume to {n} "
          f"({per_epoch} steps per epoch: the resume is {'mid-epoch' if half % per_epoch else 'at an epoch start'})")
    straight = fresh_model(base, cfg, "lora")
    build_trainer(cls, straight, sft, cfg, Path(tempfile.mkdtemp(dir=tmp)), args.seed, "ce", pad).train()
    out = Path(tempfile.mkdtemp(dir=tmp))
    first = fresh_model(base, cfg, "lora")
    build_trainer(cls, first, sft, cfg, out, args.seed, "ce", pad, save_every=half, stop_at=half).train()
    ckpt = out / f"checkpoint-{half}"
    print(f"  checkpoint {ckpt.name}: {sorted(p.name for p in ckpt.iterdir())}")
    resumed = fresh_model(base, cfg, "lora")  # a fresh process would start here
    t = build_trainer(cls, resumed, sft, cfg, out, args.seed, "ce", pad)
    t.train(resume_from_checkpoint=str(ckpt))
    d, equal = max_diff(trainable(straight), trainable(resumed))
    print(f"  resumed at step {half}, finished at {t.state.global_step}: bit-identical (torch.equal) {equal}, "
          f"max|diff| {d:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per run (lora, kl, lora-ckpt)")
    ap.add_argument("--full-steps", type=int, default=1, help="optimizer steps per run (full)")
    ap.add_argument("--repeats", type=int, default=3, help="timed A/B pairs per case, after one warm-up pair")
    ap.add_argument("--cases", default="lora,kl,full", help=f"some of {','.join(CASES)}")
    ap.add_argument("--resume-steps", type=int, default=2,
                    help="Trainer resume check: total steps (batch 2, micro 1); 0 skips it")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad or args.batch % args.micro:
        ap.error(f"unknown cases {bad}" if bad else "--batch must be a multiple of --micro")
    torch.set_num_threads(args.threads)
    import accelerate
    import peft
    import transformers
    from transformers.utils import logging as hf_logging

    from sublearn.backends.models import load_model

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    affinity = sorted(os.sched_getaffinity(0))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate "
          f"{accelerate.__version__}, peft {peft.__version__}; {os.cpu_count()} CPUs, affinity {affinity}, "
          f"torch threads {torch.get_num_threads()}; load average before: {load()}")
    base, tok = load_model("smollm2-135m")
    pad = tok.pad_token_id
    sft, kl = build_examples(tok, base, args.examples)
    lengths = [len(e.input_ids) for e in sft]
    comp = [len(e.input_ids) - e.n_prompt for e in sft]
    print(f"SmolLM2-135M fp32 CPU; {len(sft)} examples, {np.mean(lengths):.0f} tokens mean ({np.mean(comp):.0f} "
          f"completion); KL teacher: base top-{KL_TOPK} at temperature 2")
    cls = make_trainer_cls()
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for case in cases:
            results[case] = bench_case(case, args, cls, base, sft, kl, pad, tmp)
        if args.resume_steps:
            resume_check(args, cls, base, sft, pad, tmp)
    print("\nsummary (s/step, median over repeats; Trainer/ours = median of per-pair ratios):")
    for case, r in results.items():
        print(f"  {case:<10} ours {statistics.median(r['ours']):6.2f}  Trainer {statistics.median(r['trainer']):6.2f}"
              f"  Trainer/ours {statistics.median(r['ratio']):.3f} [{min(r['ratio']):.3f}-{max(r['ratio']):.3f}]"
              f"  max|dparam| {r['diff']:.1e}")
    print(f"\nload average after: {load()}; wall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
