"""The paper's theorem at language-model scale: does a student's update point toward the teacher?

With the trait in a LoRA teacher's weights, the teacher's displacement from the base model is
ΔW_T = scale * B_T A_T for every adapted weight matrix. For a student we report

- `cosine_first_step`: cos(-∇_W L_student(θ0), ΔW_T) over all adapted matrices, where L_student is
  the student's loss on the teacher's data (cross-entropy on the sampled tokens, or the KL to the
  teacher's stored top-k) and θ0 the shared base. This is the quantity the theorem signs:
  non-negative when the student starts where the teacher started.
- `cosine_first_step_perturbed`: the same gradient taken at a perturbed base θ0 + ε (ε ~ N(0, σ²)
  on the adapted matrices): a student that does not share the teacher's initialisation.
- `cosine_final`: cos(ΔW_S, ΔW_T) between the trained LoRA student's merged update and the teacher's.

Each student's numbers go to `out/theorem/<student>-s<seed>/result.json`; the report tabulates them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import begin_stage, finish_stage, read_json, read_jsonl, upstream_hash, write_json
from sublearn.stages.roster import data_dir, read_summary, read_teacher, student_dir

log = logging.getLogger(__name__)


def lora_deltas(peft_model: Any) -> dict[str, torch.Tensor]:
    """Merged update scale * B @ A of every LoRA-adapted Linear, keyed by its base weight's name (all of
    them materialised; `LoraDisplacement` builds each on access)."""
    return dict(LoraDisplacement(peft_model))


def weight_displacement(model: Any, base: Any, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """`model`'s weights minus `base`'s for the plain parameter `names` (e.g. the keys of a LoRA student's
    `lora_deltas`), float32: the displacement of a fully fine-tuned teacher, comparable with a LoRA
    student's update on the same matrices. Names either model lacks (or with other shapes) are left out."""
    mine, theirs = dict(model.named_parameters()), dict(base.named_parameters())
    return {n: (mine[n].detach().float() - theirs[n].detach().float()) for n in names
            if n in mine and n in theirs and mine[n].shape == theirs[n].shape}


def cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Cosine between two parameter-space vectors given as same-keyed dicts of tensors."""
    keys = sorted(set(a) & set(b))
    dot = sum(float((a[k].float() * b[k].float()).sum()) for k in keys)
    na = sum(float(a[k].float().pow(2).sum()) for k in keys) ** 0.5
    nb = sum(float(b[k].float().pow(2).sum()) for k in keys) ** 0.5
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def first_step_gradient(model: Any, examples: Sequence[Any], kind: str, names: Sequence[str], pad_id: int,
                        micro_batch: int = 8) -> dict[str, torch.Tensor]:
    """-∇ of the mean per-token student loss w.r.t. the weight matrices `names` of a plain model."""
    from sublearn.training.loop import batch_loss

    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
        params[n].grad = None
    total = 0
    for i in range(0, len(examples), micro_batch):
        loss, count = batch_loss(model, examples[i:i + micro_batch], pad_id, kind)
        loss.backward()
        total += count
    grads = {n: -params[n].grad.detach() / max(total, 1) for n in names}
    for n in names:
        params[n].grad = None
        params[n].requires_grad_(False)
    return grads


def first_step_cosine(model: Any, examples: Sequence[Any], kind: str, displacement: Mapping[str, torch.Tensor],
                      pad_id: int, groups: Sequence[Sequence[str]] | None = None, micro_batch: int = 8) -> float:
    """cos(-∇L, displacement) over the matrices of `displacement` (e.g. `lora_deltas(teacher)`), equal to
    `cosine(first_step_gradient(...), displacement)` but holding the gradients of one group of matrices
    at a time (`groups`: contiguous runs of the sorted names; None = all at once): each group costs a
    forward and backward pass, and peak memory holds only its gradients. The sums run over the sorted
    names whatever the grouping, so the result does not depend on it."""
    names = sorted(displacement)
    groups = [names] if groups is None else groups
    if [n for g in groups for n in g] != names:
        raise ValueError("groups must split the sorted matrix names into contiguous runs")
    dot = na = nb = 0.0
    for group in groups:
        grad = first_step_gradient(model, examples, kind, group, pad_id, micro_batch)
        for n in group:
            g, d = grad.pop(n).float(), displacement[n].float()
            dot += float((g * d).sum())
            na += float(g.pow(2).sum())
            nb += float(d.pow(2).sum())
    na, nb = na ** 0.5, nb ** 0.5
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def gradient_groups(names: Sequence[str], sizes: dict[str, int], budget: int | None) -> list[list[str]]:
    """Contiguous runs of the sorted `names` whose float32 gradients fit `budget` bytes (None: one
    group). A matrix larger than the budget is a group of its own."""
    ordered = sorted(names)
    if budget is None:
        return [ordered]
    groups: list[list[str]] = []
    used = budget + 1
    for n in ordered:
        need = sizes[n] * 4
        if used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(n)
        used += need
    return groups


def theorem_plan(arch: Any, sizes: dict[str, int], *, seq_len: int, completion: int, free: int | None,
                 micro_batches: Sequence[int] = (8, 4, 2, 1)) -> tuple[int, list[list[str]] | None]:
    """(micro-batch, gradient groups) for the theorem check of a model `arch` (sublearn.backends.memory)
    whose adapted matrices have `sizes` (elements), on a device with `free` bytes (None: unknown, no
    check): the float32 base and one micro-batch's activations (no checkpointing) must fit with the
    gradients of at least one matrix; the largest micro-batch that leaves room is taken (the summed loss,
    and so the result, does not depend on it beyond float rounding), and the gradients are split into
    groups (`gradient_groups`) only when all of them do not fit. Raises a one-line SublearnError when
    not even micro-batch 1 and one matrix fit. The teacher's displacement is materialised one matrix at a
    time from its LoRA factors, so it takes no room here."""
    from sublearn.backends import memory

    if free is None:
        return micro_batches[0], None
    whole, largest = 4 * sum(sizes.values()), 4 * max(sizes.values(), default=0)
    est = None
    for micro in micro_batches:
        est = memory.training_estimate(arch, method="lora", dtype="float32", micro_batch=micro, seq_len=seq_len,
                                       completion_positions=micro * completion, gradient_checkpointing=False,
                                       lora_r=0)
        if est.total + whole * 1.1 <= free:
            return micro, None
        if est.total + largest * 1.1 <= free:
            return micro, gradient_groups(list(sizes), sizes, int((free - est.total) / 1.1))
    assert est is not None
    memory.check("theorem check", memory.Estimate(weights=est.weights, optimizer=largest, activations=est.activations,
                                                  logits=est.logits), "the device",
                 ["use a device with more memory", "set theorem: false to skip the check"], free=free)
    raise AssertionError("unreachable: memory.check raises when the estimate exceeds free memory")


def _memory_plan(config: PipelineConfig, model_name: str, sizes: dict[str, int],
                 examples: Sequence[Any]) -> tuple[int, list[list[str]] | None]:
    """`theorem_plan` for this run's model and device, before any weight is loaded; (8, None) when the
    model's config cannot be read here or `memory_check` is off."""
    from sublearn.backends import memory
    from sublearn.backends.models import model_source

    if not config.memory_check:
        return 8, None
    try:
        arch = memory.architecture(model_source(model_name))
    except (OSError, ValueError, KeyError):
        return 8, None
    seq = max((len(ex.input_ids) for ex in examples), default=config.train.max_length)
    completion = max((len(ex.input_ids) - ex.n_prompt for ex in examples), default=config.train.max_length)
    return theorem_plan(arch, sizes, seq_len=seq, completion=completion, free=memory.available(config.device))


class LoraDisplacement(Mapping[str, torch.Tensor]):
    """A LoRA model's merged update scale * B @ A per adapted matrix (the keys of `lora_deltas`), built
    on access from its factors: only the low-rank factors are held (a 7B model's full-size
    displacements would take ~26 GB in float32)."""

    def __init__(self, peft_model: Any) -> None:
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "lora_B") and "default" in getattr(module, "lora_A", {}):
                key = name.replace("base_model.model.", "", 1) + ".weight"
                self._factors[key] = (module.lora_A["default"].weight.detach().float().clone(),
                                      module.lora_B["default"].weight.detach().float().clone(),
                                      float(module.scaling["default"]))

    def __getitem__(self, key: str) -> torch.Tensor:
        a, b, scale = self._factors[key]
        return scale * (b @ a)

    def __iter__(self) -> Iterator[str]:
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)

    def sizes(self) -> dict[str, int]:
        """Elements of each full-size displacement matrix."""
        return {k: int(b.shape[0] * a.shape[1]) for k, (a, b, _) in self._factors.items()}


def _reference(config: PipelineConfig, out: Path, teacher_name: str) -> str:
    # The displacement we compare against is always that of a LoRA teacher: the student's own teacher
    # (trait or neutral), or, for the base-model control, the first target's teacher (it should show
    # no alignment).
    own = read_teacher(out, teacher_name)
    return teacher_name if own.get("adapter") else config.targets[0]


def stage_key(config: PipelineConfig, out: Path, *, student: str, seed: int, n_examples: int = 16,
              perturb_std: float = 0.02) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, input hashes: the trained student, the reference teacher, the student's data)."""

    sdir = student_dir(out, student, seed)
    student_hash = upstream_hash(sdir)  # NotReady until the student is trained
    teacher_name = read_summary(sdir)["data_from"]
    reference = _reference(config, out, teacher_name)
    key = {"student": student, "seed": seed, "reference": reference, "n_examples": n_examples,
           "perturb_std": perturb_std, "distill_targets": config.train.distill_targets,
           "max_length": config.train.max_length}
    return key, {"student": student_hash, "teacher": upstream_hash(out / "teacher" / reference),
                 "data": upstream_hash(data_dir(config, out, teacher_name))}


class TheoremCache:
    """What the theorem checks of one process share (pass one to every `run` of a run's students):
    the loaded float32 base model, restored exactly after each perturbation from copies of its adapted
    matrices, and the unperturbed first-step cosine per (reference teacher, data, loss), which does not
    depend on the student (every student of one teacher's data gets the same number). Bases whose
    adapted matrices exceed `max_copy_bytes` are not kept (reloaded per student, as without a cache)."""

    def __init__(self, max_copy_bytes: int = 8 * 2**30) -> None:
        self.max_copy_bytes = max_copy_bytes
        self.model: tuple[str, str] | None = None  # (model, device) of the loaded base
        self.base: Any = None
        self.tokenizer: Any = None
        self.pristine: dict[str, torch.Tensor] = {}
        self.first_step: dict[tuple[str, ...], float] = {}
        self.loads = 0  # base models loaded (the benchmark and the tests read it)
        self.first_steps = 0  # unperturbed first-step gradients computed

    def load(self, model_name: str, config: PipelineConfig) -> tuple[Any, Any]:
        """(base, tokenizer): the kept base when it is this model on this device, else a fresh load."""
        from sublearn.backends.models import load_model

        if self.model == (model_name, config.device) and self.base is not None:
            return self.base, self.tokenizer
        self.base = self.tokenizer = None
        self.pristine = {}
        # float32 whatever the run's dtype: the measurement is a cosine of small first-step gradients.
        base, tokenizer = load_model(model_name, device=config.device, check_memory=config.memory_check)
        self.loads += 1
        self.model = (model_name, config.device)
        self.base, self.tokenizer = base, tokenizer
        return base, tokenizer

    def keep(self, params: Mapping[str, torch.Tensor], names: Sequence[str]) -> bool:
        """Copy the matrices `names` (before they are perturbed) so `restore` can undo it exactly; False
        (and the base is dropped after this student) when they exceed `max_copy_bytes`."""
        missing = [n for n in names if n not in self.pristine]
        if sum(params[n].numel() * params[n].element_size() for n in missing) > self.max_copy_bytes:
            return False
        for n in missing:
            self.pristine[n] = params[n].detach().to("cpu", copy=True)
        return True

    def restore(self, params: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
        with torch.no_grad():
            for n in names:
                params[n].copy_(self.pristine[n].to(params[n].device))

    def drop(self) -> None:
        self.model = self.base = self.tokenizer = None
        self.pristine = {}


def run(config: PipelineConfig, out: Path, *, student: str, seed: int, n_examples: int = 16,
        perturb_std: float = 0.02, cache: TheoremCache | None = None) -> dict[str, Any] | None:
    """Write `out/theorem/<student>-s<seed>/result.json` (a stage: manifest, key on the student's, the
    teacher's and the data's hashes) for a student of a LoRA teacher; None if the student's data came
    from a teacher without weight displacement (prompted or control) or the student is another family.
    `cache`: share the loaded base and the per-dataset first-step cosine with the other students of
    this process (`TheoremCache`; the results are the same bits as without)."""
    from sublearn.backends import split_spec
    from sublearn.backends.models import REWEIGHT, weights_errors
    from sublearn.training.examples import training_examples

    tdir = out / "theorem" / f"{student}-s{seed}"
    path = tdir / "result.json"
    sdir = student_dir(out, student, seed)
    summary = read_summary(sdir)
    teacher_name = summary["data_from"]
    key, inputs = stage_key(config, out, student=student, seed=seed, n_examples=n_examples,
                            perturb_std=perturb_std)
    reference = key["reference"]
    tspec = read_teacher(out, reference)
    if not tspec.get("adapter") or summary["model"] != config.model:
        return None
    if begin_stage(tdir, key, inputs):
        cached: dict[str, Any] = read_json(path)
        return cached
    from peft import PeftModel

    _, model_name = split_spec(config.model)
    cache = cache if cache is not None else TheoremCache(max_copy_bytes=0)
    base, tokenizer = cache.load(model_name, config)
    with weights_errors(out / tspec["adapter"], REWEIGHT):
        teacher = PeftModel.from_pretrained(base, str(out / tspec["adapter"]))
    delta_t = LoraDisplacement(teacher)
    teacher = teacher.unload()  # back to the plain base model, adapters removed (not merged)
    records = read_jsonl(data_dir(config, out, teacher_name) / "kept.jsonl")[:n_examples]
    examples, kind, _ = training_examples(config, tokenizer, records, summary["method"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    names = sorted(delta_t)
    micro, groups = _memory_plan(config, model_name, delta_t.sizes(), examples)
    # Everything the unperturbed cosine depends on: the teacher's and the data's content, the loss.
    shared = (inputs["teacher"], inputs["data"], str(n_examples), kind, summary["method"],
              config.train.distill_targets, str(config.train.max_length))
    if shared not in cache.first_step:
        cache.first_step[shared] = first_step_cosine(teacher, examples, kind, delta_t, pad, groups, micro)
        cache.first_steps += 1
    result: dict[str, Any] = {"student": student, "seed": seed, "teacher": reference, "data_from": teacher_name,
                              "method": summary["method"], "n_examples": len(examples),
                              "cosine_first_step": cache.first_step[shared]}
    params = dict(teacher.named_parameters())
    kept = cache.keep(params, names)
    gen = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for n in names:
            params[n].add_(torch.randn(params[n].shape, generator=gen).to(params[n].device) * perturb_std)
    result["cosine_first_step_perturbed"] = first_step_cosine(teacher, examples, kind, delta_t, pad, groups, micro)
    result["perturb_std"] = perturb_std
    if (sdir / "adapter").is_dir():
        # The student's LoRA factors on the model already loaded (its update does not depend on the base
        # weights): no second copy of the base.
        with weights_errors(sdir / "adapter", REWEIGHT):
            with_student = PeftModel.from_pretrained(teacher, str(sdir / "adapter"))
        delta_s = LoraDisplacement(with_student)
        with_student.unload()  # the plain base again, for the next student
        result["cosine_final"] = cosine(delta_s, delta_t)
    if kept:
        cache.restore(params, names)
    else:
        cache.drop()  # perturbed and not restorable: the next student loads a fresh base
    result["cosine"] = result["cosine_first_step"]
    write_json(path, result)
    finish_stage(tdir, key, inputs, [path])
    log.info("theorem %s s%d: first-step cos %.4f (perturbed init %.4f), final %s", student, seed,
             result["cosine_first_step"], result["cosine_first_step_perturbed"], result.get("cosine_final"))
    return result
