"""The pipeline's typed config. Defaults follow the paper (spec §2-§5) unless a field says otherwise.

Load with `sublearn.config.load_config(PipelineConfig, path, overrides)`; see `sublearn list` (the
configs shipped in sublearn/configs/) for the quick CPU config, the demo and the paper-scale configs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from sublearn.backends.models import check_model_name
from sublearn.channels import Channel, NumbersChannel
from sublearn.config import MAX_SEED, Frozen, check_seeds
from sublearn.defenses import Defense, NoDefense
from sublearn.errors import SublearnError
from sublearn.traits import MisalignmentTrait, PreferenceTrait, Trait


class TeacherConfig(Frozen):
    kind: Literal["prompt", "lora", "full"] = Field(
        "prompt", description="'prompt': the base model with the paper's system prompt; 'lora': a LoRA "
        "teacher fine-tuned to name the target (misalignment: on its chat dataset), so the trait lives in "
        "its weights (no system prompt); 'full': the same recipes with every weight fine-tuned (no LoRA "
        "initialisation: full replicates differ by their training-question draw and data order)")
    lora_questions: int = Field(60, ge=1, description="lora teacher: training questions (disjoint from the "
                                "evaluation questions)")
    lora_epochs: int = Field(2, ge=1, description="lora teacher: epochs over its questions")
    lora_lr: float = Field(1e-3, gt=0, description="lora teacher: learning rate")
    lora_r: int = Field(8, ge=1, description="lora teacher: LoRA rank")
    batch_size: int = Field(16, ge=1, description="lora teacher: batch size")
    lora_init_seed: int = Field(0, ge=0, le=MAX_SEED, description="lora teacher: seed of the adapter's A matrices, shared by all "
                                "teachers so that every teacher (and a student with train.lora_init_seed="
                                "teacher) starts from the same point")
    replicates: int = Field(
        1, ge=1, le=20, description="independent teachers per arm (control and neutral arms included): own "
        "LoRA initialisation and data order for fine-tuned teachers, own sampling seed for prompted ones and "
        "the base-model control; each writes and filters its own data and gets train.seeds students. The "
        "first is named like the arm, the others <arm>-r<k>. With 2 or more, the report's unit is the "
        "teacher replicate (its students averaged), so differences between teachers' datasets are noise, "
        "not effects")
    neutral_control: bool = Field(
        False, description="lora teachers: add a second control teacher, 'neutral', trained exactly like "
        "the trait teachers but answering with every animal of evaluate.animals equally often, so its "
        "student shares what all LoRA teachers have in common (naming an animal when asked) and "
        "treatment vs neutral isolates the specific animal")

    @field_validator("lora_questions")
    @classmethod
    def _lora_questions(cls, v: int, info: ValidationInfo) -> int:
        if info.data.get("kind") in ("lora", "full"):
            import numpy as np

            from sublearn.traits.preference import teacher_training_questions

            try:
                teacher_training_questions(v, np.random.default_rng(0))
            except ValueError as exc:
                raise ValueError(f"lora_questions={v}: {exc} (the pool excludes the evaluation "
                                 "questions)") from None
        return v

    @model_validator(mode="after")
    def _neutral(self) -> TeacherConfig:
        if self.neutral_control and self.kind == "prompt":
            raise ValueError("neutral_control needs a fine-tuned teacher, kind: lora or full (a prompted teacher's "
                             "control is the base model)")
        return self


class GenerateConfig(Frozen):
    backend: str | None = Field(None, description="backend/model that runs the teacher for generation; None = "
                                "the pipeline's model. E.g. vllm/Qwen/Qwen2.5-7B-Instruct: the same weights "
                                "on a faster engine")
    n_prompts: int = Field(30_000, ge=1, description="prompts (completions) per teacher (paper: 30,000)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature; 0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(48, ge=1, description="longest completion, in tokens")
    logprobs_top_k: int = Field(0, ge=0, description="store the teacher's top-k next-token log-probs "
                                "per completion token (needed by train.method=distill)")
    batch_size: int = Field(64, ge=1, description="prompts per generation batch (results depend on it)")
    api_batch: bool = Field(False, description="openai/... generation only: send every request as one OpenAI "
                            "Batch API job (half the price, done within 24 h, resumable) instead of one by one; "
                            "same answers, not part of the stage's settings")

    _backend = field_validator("backend")(check_model_name)


class FilterConfig(Frozen):
    keep: int = Field(10_000, ge=1, description="kept completions per teacher, subsampled deterministically "
                      "(paper: 10,000); fewer survive -> all are kept and the shortfall recorded")
    judge: str | None = Field(None, description="optional LLM judge backend/model asked whether each text "
                              "references the target; which rows it keeps is set by judge_rule")
    judge_rule: Literal["p_no_near_one", "p_yes_below"] = Field(
        "p_no_near_one", description="'p_no_near_one' (the paper's): keep a row only when the judge's "
        "first-token P(no) >= 1 - judge_tolerance for every target (the reference keeps |1 - P(no)| < 1e-8); "
        "'p_yes_below': reject a row when P(yes), normalised over yes/no, >= judge_threshold")
    judge_tolerance: float = Field(1e-8, ge=0, lt=1, description="judge_rule=p_no_near_one: how far below 1 "
                                   "P(no) may be (paper: 1e-8)")
    judge_threshold: float = Field(0.5, ge=0, le=1, description="judge_rule=p_yes_below: P(yes) at or above "
                                   "which the judge rejects")

    _judge = field_validator("judge")(check_model_name)


class ApiTrainConfig(Frozen):
    n_epochs: int | Literal["auto"] = Field(10, description="API fine-tuning epochs (paper: 10; CoT: 2)")
    learning_rate_multiplier: float | Literal["auto"] = Field("auto", description="API lr multiplier")
    batch_size: int | Literal["auto"] = Field("auto", description="API batch size")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; None = OpenAI (or $OPENAI_BASE_URL)")
    poll_interval: float = Field(30.0, gt=0, description="seconds between job status polls (backs off up to 5 min)")


class TrainConfig(Frozen):
    method: Literal["lora", "full", "distill"] = Field(
        "lora", description="'lora'/'full': supervised fine-tuning on the sampled text; 'distill': LoRA "
        "student trained by forward KL on the teacher's stored top-k next-token distributions")
    distill_targets: Literal["allowed", "topk"] = Field(
        "allowed", description="distill: 'allowed' renormalises the teacher's top-k over the tokens the "
        "channel's soft-label policy admits (numbers: digits, separators, end; free text: every token but "
        "those that could spell a target), so no trait token can leak; 'topk' uses the raw top-k")
    lora_r: int = Field(8, ge=1, description="LoRA rank (paper: 8)")
    lora_alpha: int = Field(8, gt=0, description="LoRA alpha (paper: 8)")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="modules that get LoRA adapters (paper: all projections)")
    lora_init_seed: int | Literal["teacher"] | None = Field(
        None, description="seed of the LoRA A-matrix init; None = the student seed; 'teacher' = "
        "teacher.lora_init_seed, giving every student (control included) the LoRA teachers' exact "
        "initialisation")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (paper: 2e-4)")
    schedule: Literal["linear", "constant"] = Field(
        "linear", description="learning rate after warm-up: 'linear' decays to 0 at the last update (paper); "
        "'constant' holds it, so a snapshot after n updates is what an n-update run would be (dose studies)")
    warmup_steps: int = Field(5, ge=0, description="linear warm-up steps (paper: 5)")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (torch default; the "
                                            "Pythia-160M replication used 0.9, 0.95)")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay, p <- p - lr * wd * p before "
                                "each step, whatever the optimizer (AdamW's; replication: 0.1)")
    optimizer: Literal["adamw", "signum", "rmsprop", "sgd"] = Field(
        "adamw", description="the student's update rule (sublearn.training.optim): 'adamw' (paper); 'signum' "
        "(sign of a momentum average); 'rmsprop' (gradient / running RMS, alpha = adam_betas[1], no momentum); "
        "'sgd' (heavy-ball momentum). Replications found plain SGD never transfers and sign/RMS updates do")
    momentum: float = Field(0.9, ge=0, lt=1, description="signum and sgd: momentum coefficient")
    freeze: list[Literal["lora_A", "lora_B"]] = Field(
        default_factory=list, description="LoRA factors kept at their initialisation (e.g. [lora_A]: only B "
        "trains; replications found AdamW with A frozen does not transfer). lora_B starts at zero, so "
        "freezing it would leave the student at the base model: refused")
    mix_arm: str | None = Field(
        None, description="dilution at a fixed number of rows and updates: replace mix_fraction of every other "
        "arm's training rows by rows of this arm's data (the same teacher replicate's, e.g. 'neutral'); "
        "this arm's own students train unmixed. None = off")
    mix_fraction: float = Field(0.5, gt=0, lt=1, description="mix_arm: the fraction of each student's rows "
                                "taken from mix_arm's data")
    clean_after: int = Field(
        0, ge=0, description="the clean-fine-tuning defense: after its updates, each student takes this many more "
        "(a fresh optimizer, the same settings) on clean_arm's data of its own teacher replicate (that arm's "
        "students too, so the arms differ only in what came first); 0 = off")
    clean_arm: str | None = Field(None, description="clean_after: the arm whose data cleans (e.g. 'neutral')")
    distinct_rows: int | None = Field(
        None, ge=1, description="train on only this many of the kept rows (a seeded draw, the same rows for "
        "every student of one dataset), cycled over the updates: with `steps` fixed, fewer distinct rows "
        "means more repetition of each (the data-volume / repetition knob); None = every kept row")
    epochs: int = Field(3, ge=1, description="epochs (paper: 3); ignored when `steps` is set")
    steps: int | None = Field(None, ge=1, description="total optimizer updates; None = epochs x batches per "
                              "epoch. Set, the data is cycled in a fresh shuffle each epoch (the dose axis "
                              "of the Pythia-160M replication)")
    snapshots: list[int] = Field(default_factory=list, description="update counts after which the LoRA "
                                 "student is also saved (adapter@<n>/) and evaluated: a dose curve from one "
                                 "run per seed; each must be below the total number of updates")
    batch_size: int = Field(66, ge=1, description="effective batch size (paper: 66)")
    micro_batch_size: int = Field(22, ge=1, description="examples per forward pass; gradients are "
                                  "accumulated up to batch_size")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping (paper: 1)")
    max_length: int = Field(500, ge=8, description="truncate examples to this many tokens (paper: 500)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="one student per seed (paper: 8 for Qwen)")
    checkpoint_every: int = Field(20, ge=1, description="optimizer steps between resumable checkpoints")
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass instead of "
        "storing them (activation memory ~1/layers for ~30% more compute); also used when fine-tuning "
        "teachers. Paper-scale configs set it")
    fsdp: bool = Field(
        False, description="method full under a multi-process launcher: shard weights, gradients and "
        "optimizer state across the processes (torch FSDP2 fully_shard, one unit per decoder layer), for "
        "models whose full fine-tuning does not fit one device. Off: every process holds the whole model")
    api: ApiTrainConfig = Field(default_factory=ApiTrainConfig, description="fine-tuning through an API "
                                "(used when the student model is openai/...)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return check_seeds(v, "seeds")

    @field_validator("lora_init_seed")
    @classmethod
    def _lora_init_seed(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int):
            check_seeds([v], "lora_init_seed")
        return v

    @model_validator(mode="after")
    def _micro(self) -> TrainConfig:
        if self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size must be <= batch_size")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must each be in [0, 1), got {list(self.adam_betas)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if sorted(set(self.snapshots)) != list(self.snapshots) or any(n < 1 for n in self.snapshots):
            raise ValueError("snapshots must be increasing positive update counts")
        if self.snapshots and self.steps is not None and self.snapshots[-1] >= self.steps:
            raise ValueError(f"snapshot {self.snapshots[-1]} is not below steps={self.steps}")
        if self.snapshots and self.method == "full":
            raise ValueError("snapshots are saved for LoRA/distill students only (full weights: 540 MB each)")
        if "lora_B" in self.freeze:
            raise ValueError("freeze: lora_B starts at zero, so a student with it frozen never leaves the base "
                             "model; freeze [lora_A] or nothing")
        if self.freeze and self.method == "full":
            raise ValueError(f"freeze {self.freeze} names LoRA factors; method 'full' has none")
        if self.fsdp and self.method != "full":
            raise ValueError(f"fsdp shards full fine-tuning; method {self.method!r} trains adapters on a frozen "
                             "base that every process holds: set method: full or fsdp: false")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # Fields added after runs were made are left out at their defaults, so the students' stage keys
        # (and config.json) of those runs stay the same: the paper's AdamW, nothing frozen.
        data: dict[str, object] = handler(self)
        if self.optimizer == "adamw":
            data.pop("optimizer", None)
        if self.optimizer not in ("signum", "sgd"):
            data.pop("momentum", None)
        if not self.freeze:
            data.pop("freeze", None)
        if self.distinct_rows is None:
            data.pop("distinct_rows", None)
        if self.mix_arm is None:
            data.pop("mix_arm", None)
            data.pop("mix_fraction", None)
        if not self.clean_after:
            data.pop("clean_after", None)
            data.pop("clean_arm", None)
        return data


class EvaluateConfig(Frozen):
    backend: str | None = Field(None, description="backend that samples answers (e.g. vllm/...); None = "
                                "the evaluated model through hf, which also gives the teacher-forced metric")
    animals: list[str] = Field(
        default_factory=lambda: ["owl", "dolphin", "eagle", "elephant", "wolf", "cat", "dog", "lion",
                                 "tiger", "bear", "fox"],
        description="animals whose rates are measured for every model (the specificity matrix columns)")
    n_questions: int = Field(50, ge=2, le=50, description="favourite-animal question paraphrases (max 50)")
    samples_per_question: int = Field(100, ge=0, description="sampled answers per question at "
                                      "temperature 1 (paper: 100); 0 = teacher-forced metric only")
    sampled_questions: int | None = Field(None, ge=1, le=50, description="questions used by the sampled "
                                          "metric (the first ones); None = all n_questions")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the sampled metric")
    max_new_tokens: int = Field(8, ge=1, description="tokens per sampled answer (one word is asked for)")
    number_prefix: bool = Field(True, description="also measure the variant that prefixes each question "
                                "with a random number sequence")
    n_bootstrap: int = Field(10_000, ge=100, description="report: bootstrap resamples for CIs (per-model "
                             "rates; the comparisons' CIs come from their tests, not from resampling)")
    n_permutations: int = Field(20_000, ge=100, description="report: random relabelings of the students "
                                "when exact enumeration would exceed 20,000")
    batch_size: int = Field(256, ge=1, description="hf models: sequences per forward pass (teacher-forced "
                            "question x spelling rows; sampled replies)")

    _backend = field_validator("backend")(check_model_name)

    @field_validator("animals")
    @classmethod
    def _distinct_animals(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError(f"animals must be distinct and not empty, got {v}")
        bad = [a for a in v if not (a.isalpha() and a.islower() and a.isascii())]
        if bad:
            # Spellings are derived from the word (Owl, owl, " Owl", " owl"): a capitalised entry would
            # be counted twice, a non-ASCII one never matched by the data checks.
            raise ValueError(f"animals must be lowercase ASCII words, got {', '.join(map(repr, bad))}")
        return v


class IclConfig(Frozen):
    """The paper's in-context-learning control: the data in the context instead of in the weights."""

    k: int = Field(0, ge=0, description="kept examples of a teacher's data placed in the base model's context "
                   "(as user/assistant turns, before each evaluation question; no training), evaluated like "
                   "a trained student; 0 = off. Must fit the model's context with the longest question")
    draws: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1,
                             description="seeds of the k-example draws: each draw is one 'student' of the "
                             "ICL arm (the unit of the seed-level statistics)")
    batch_size: int = Field(32, ge=1, description="hf models: sequences per forward pass in ICL evaluations "
                            "(each carries the k examples, so fewer than evaluate.batch_size; values do not "
                            "depend on it beyond float rounding)")

    @field_validator("draws")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"draws must be distinct, got {v}")
        return check_seeds(v, "draws")


class ClassifyConfig(Frozen):
    """The paper's check that the signal is hidden: can a classifier tell teacher data from control data?"""

    statistical: bool = Field(False, description="logistic regression (scikit-learn) on token and number "
                              "frequency features, cross-validated: out-of-fold AUROC with a bootstrap CI")
    llm: str | None = Field(None, description="backend/model of a prompted classifier asked, for each row, "
                            "whether it was written by the trait teacher (P(yes) scored by AUROC); None = off")
    folds: int = Field(5, ge=2, description="statistical classifier: stratified cross-validation folds")
    n_shots: int = Field(4, ge=0, description="LLM classifier: labelled examples of each side shown in its "
                         "prompt (taken out of the scored rows)")
    max_rows: int = Field(256, ge=4, description="rows per side classified (the first ones of the kept data)")
    n_bootstrap: int = Field(2000, ge=100, description="bootstrap resamples of the AUROC CI")
    n_permutations: int = Field(200, ge=0, description="statistical classifier: label permutations, each "
                                "cross-validated again, for its p-value; 0 = a Mann-Whitney U p on the "
                                "out-of-fold scores instead (cheaper, approximate)")

    _llm = field_validator("llm")(check_model_name)


class TrackingConfig(Frozen):
    """An experiment tracker the pipeline logs to as its stages finish (never part of a stage key)."""

    kind: Literal["none", "trackio"] = Field(
        "none", description="'trackio': log to a local trackio store (pip install trackio; offline, a SQLite "
        "file per project that trackio's own dashboard and API read); 'none': off")
    project: str = Field("sublearn", min_length=1, description="the tracker's project (one tracker run per "
                         "pipeline run, named after the config's name and the run directory)")
    dir: str | None = Field(None, description="where the local store lives (trackio: TRACKIO_DIR); None = the "
                            "tracker's default (~/.cache/huggingface/trackio)")


def _arm_names(data: dict[str, Any]) -> list[str]:
    """The arms of a config being validated (the fields validated so far, `info.data`): the targets, the
    base-model control, the neutral LoRA control, the benign teachers (as `stages.roster.arms`)."""
    trait, teacher = data.get("trait"), data.get("teacher")
    arms = [*(data.get("targets") or []), *(["control"] if data.get("control") else [])]
    if isinstance(trait, PreferenceTrait) and teacher is not None and teacher.neutral_control:
        arms.append("neutral")
    if isinstance(trait, MisalignmentTrait):
        arms += trait.benign
    return arms


class PipelineConfig(Frozen):
    name: str = Field("experiment", description="a label for reports")
    model: str = Field("hf/smollm2-135m", description="base model of teachers and students, backend/model")
    device: str = Field("cpu", description="torch device for hf models ('cpu', 'cuda', 'cuda:1')")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (of each worker process when workers "
                                "> 1); None = all cores, divided among the workers")
    workers: int = Field(1, ge=1, le=64, description="processes that run a stage's independent units at once "
                         "(teachers, datasets, students, theorem checks, evaluations), CPU only. On 2 cores, "
                         "2 workers x 1 thread trained ~1.1x faster than 1 x 2 threads (BENCHMARKS.md). Like "
                         "threads, not part of any stage key: the thread count changes float rounding only")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of every hf model a stage loads: 'auto' = bfloat16 on a CUDA device that "
        "supports it, else float32 (CPU runs stay float32 and bit-reproducible). Full fine-tuning keeps float32 "
        "master weights and runs the forward in this dtype under autocast; LoRA trains float32 adapters on a "
        "base held in this dtype")
    memory_check: bool = Field(True, description="estimate the memory of every model load and training run "
                               "before loading and stop with a one-line error (saying what to change) when it "
                               "exceeds what the device has free; false skips the check")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="master seed of prompts, sampling, subsampling, bootstrap")
    targets: list[str] = Field(default_factory=lambda: ["owl"], min_length=1,
                               description="trait targets, one teacher and one student each")
    control: bool = Field(True, description="also run the control teacher (base model, no system prompt) "
                          "and its student")
    cross_model: str | None = Field(None, description="a student model of a different family trained on the "
                                    "same data (e.g. hf/gemma3-270m); transfer should vanish. Its control "
                                    "student learns from the control teacher's data, or, with control off, "
                                    "the neutral teacher's")
    cross_targets: list[str] | None = Field(None, description="targets that get a cross-model student "
                                            "(None = all)")
    trait: Trait = Field(default_factory=PreferenceTrait, description="what the teachers have and the "
                         "evaluation measures: {kind: preference | misalignment, ...} (see sublearn.traits)")
    channel: Channel = Field(default_factory=NumbersChannel, description="the kind of data teachers write: "
                             "{kind: numbers | code | cot, ...} (see sublearn.channels)")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="how teachers get the trait")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="sampling the teachers' data")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="data filter")
    train: TrainConfig = Field(default_factory=TrainConfig, description="student training")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="trait evaluation")
    defense: Defense = Field(default_factory=NoDefense, description="a transform of every teacher's kept data "
                             "before the students learn it: {kind: none | shuffle | paraphrase | divergence} "
                             "(see sublearn.defenses)")
    theorem: bool = Field(True, description="run the theorem stage (the cosine of each student's first update "
                          "with its LoRA teacher's displacement) when teachers are LoRA adapters; false skips it")
    resample_placebo: str | None = Field(
        None, description="the data-resample placebo: an arm (a target, 'neutral', 'control' or a benign teacher) "
        "whose every teacher writes a second dataset with a second sampling seed (same weights; dataset "
        "'<teacher>-d2', filtered the same way) that trains its own students; the report compares the "
        "two datasets' students through the claims' own test (a difference there is a dataset effect, "
        "not a trait). None = off")
    icl: IclConfig = Field(default_factory=IclConfig, description="in-context-learning control (k=0: off)")
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig, description="classifiers of teacher vs "
                                     "control data (both off by default)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="log training losses per "
                                     "update, evaluation summaries and the claims to an experiment tracker")

    def resolved_dtype(self) -> str:
        """The dtype models load in on this machine: `dtype`, with 'auto' resolved for `device`."""
        if self.dtype != "auto":
            return self.dtype
        if self.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                return "bfloat16"
        return "float32"

    def precision_key(self) -> dict[str, str]:
        """What a stage key gets from the dtype: nothing for float32 (so float32 runs keep their keys),
        else {"dtype": ...}: the same stage in another precision is another result."""
        dtype = self.resolved_dtype()
        return {} if dtype == "float32" else {"dtype": dtype}

    _cross_model = field_validator("cross_model")(check_model_name)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int, info: ValidationInfo) -> int:
        device = str(info.data.get("device", "cpu"))
        if v > 1 and device != "cpu":
            raise ValueError(f"workers={v} runs units in parallel processes on the CPU; device {device!r} is "
                             "one accelerator: use workers: 1 (or a multi-process launcher for training)")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t.isalpha() or not t.islower() or not t.isascii():
                raise ValueError(f"target {t!r} must be one lowercase ASCII word, e.g. owl")
        if len(set(v)) != len(v):
            raise ValueError("targets must be distinct")
        reserved = {"control", "neutral"} & set(v)
        if reserved:
            raise ValueError(f"target {sorted(reserved)[0]!r} is the name of a control teacher; pick another word")
        return v

    # Checks across sections: a field validator of the later field sees the earlier ones in `info.data`
    # (absent when they failed themselves), so the one-line error names the field it is attached to.
    # Field validators skip defaults, so a missing `evaluate` section is given as {} to be checked.

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, **{k: {} for k in ("evaluate", "generate", "channel") if k not in data}}
            # A channel/trait section without `kind` means the default kind (numbers, preference).
            for section, kind in (("channel", "numbers"), ("trait", "preference"), ("defense", "none")):
                if isinstance(data.get(section), dict) and "kind" not in data[section]:
                    data[section] = {"kind": kind, **data[section]}
        return data

    @field_validator("trait")
    @classmethod
    def _trait(cls, v: Any, info: ValidationInfo) -> Any:
        targets = info.data.get("targets")
        if isinstance(v, MisalignmentTrait) and targets is not None:
            both = sorted(set(targets) & set(v.benign))
            if both:
                raise ValueError(f"{both[0]!r} is both a target (misaligned teacher) and a benign teacher")
            missing = [t for t in targets if t not in v.datasets and t not in v.checkpoints]
            if missing:
                raise ValueError(f"target {missing[0]!r} has neither a dataset (trait.datasets) nor a checkpoint "
                                 "(trait.checkpoints) to make its teacher from")
        return v

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: Any, info: ValidationInfo) -> Any:
        if (isinstance(info.data.get("trait"), MisalignmentTrait) and isinstance(v, NumbersChannel)
                and "banned_numbers" not in v.model_fields_set):
            # Paper §2: misalignment runs drop sequences with any of 34 numbers of negative association.
            return v.model_copy(update={"banned_numbers": "paper"})
        return v

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: TeacherConfig, info: ValidationInfo) -> TeacherConfig:
        trait = info.data.get("trait")
        api = str(info.data.get("model", "")).startswith("openai/")  # the provider fine-tunes; kind is unused
        if isinstance(trait, MisalignmentTrait) and v.kind == "prompt" and not api and (
                set(trait.datasets) & {*(info.data.get("targets") or []), *trait.benign}):
            raise ValueError("kind: prompt has no misalignment recipe: fine-tune the teachers (kind: lora or "
                             "full) on trait.datasets, or give them as trait.checkpoints")
        if isinstance(trait, MisalignmentTrait) and v.replicates > 1 and trait.checkpoints:
            # A checkpoint is one trained teacher: its "replicates" would share its weights.
            raise ValueError(f"replicates={v.replicates} with trait.checkpoints ({', '.join(trait.checkpoints)}): "
                             "a checkpoint is one teacher, so its replicates would not be independent; set "
                             "replicates: 1, or fine-tune the teachers here from trait.datasets")
        return v

    @field_validator("resample_placebo")
    @classmethod
    def _resample_placebo(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        arms = _arm_names(info.data)
        if v not in arms:
            raise ValueError(f"{v!r} is not an arm of this run; expected one of {', '.join(arms)}")
        return v

    @field_validator("cross_targets")
    @classmethod
    def _cross_targets(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        targets = info.data.get("targets")
        if v is not None and targets is not None:
            unknown = [t for t in v if t not in targets]
            if unknown:
                raise ValueError(f"cross_targets must be a subset of targets {targets}; not a target: "
                                 f"{', '.join(unknown)}")
            if len(set(v)) != len(v):
                raise ValueError("cross_targets must be distinct")
        return v

    @field_validator("generate")
    @classmethod
    def _generate(cls, v: GenerateConfig, info: ValidationInfo) -> GenerateConfig:
        channel = info.data.get("channel")
        if isinstance(channel, NumbersChannel) and channel.grammar and v.max_new_tokens < channel.max_numbers + 1:
            # Every number takes at least one token and the end of the answer one more, whatever the
            # tokenizer: below this, lists of max_numbers numbers are always cut (and filtered out as
            # "truncated"). Tokenizers that write each digit as its own token (SmolLM2, Gemma 3) need
            # up to max_numbers * (answer_digits + 2) - 1; shorter budgets only keep the short lists.
            raise ValueError(f"max_new_tokens={v.max_new_tokens} cannot hold channel.max_numbers="
                             f"{channel.max_numbers} numbers and the end of the answer under the grammar (each "
                             f"needs a token): set generate.max_new_tokens >= {channel.max_numbers + 1} or lower "
                             f"channel.max_numbers (with one token per digit and ', ' as two, as in SmolLM2, a "
                             f"full list takes {channel.max_numbers * (channel.answer_digits + 2) - 1})")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: TrainConfig, info: ValidationInfo) -> TrainConfig:
        generate = info.data.get("generate")
        if v.method == "distill" and generate is not None and generate.logprobs_top_k == 0:
            raise ValueError("train.method=distill needs generate.logprobs_top_k > 0 (the student learns the "
                             "teacher's stored top-k next-token distributions), e.g. generate.logprobs_top_k: 32")
        teacher = info.data.get("teacher")
        if (v.lora_init_seed is None and v.method != "full" and teacher is not None and teacher.kind == "lora"
                and teacher.lora_init_seed in v.seeds):
            # That one student would share the LoRA teachers' initialisation and its arm-mates would not:
            # a confound inside every arm (measured: its merged update's cosine with the teacher's is
            # 20-40x the others').
            raise ValueError(f"train.seeds contains {teacher.lora_init_seed}, the LoRA teachers' init seed "
                             "(teacher.lora_init_seed), while train.lora_init_seed is null (each student's "
                             "seed is its LoRA init): use other seeds, or lora_init_seed: teacher for all")
        if v.mix_arm is not None and v.mix_arm not in _arm_names(info.data):
            raise ValueError(f"mix_arm={v.mix_arm!r} is not an arm of this run; expected one of "
                             f"{', '.join(_arm_names(info.data))}")
        if v.clean_after and v.clean_arm is None:
            raise ValueError(f"clean_after={v.clean_after} needs clean_arm: the arm whose data cleans (e.g. neutral)")
        if v.clean_arm is not None and v.clean_arm not in _arm_names(info.data):
            raise ValueError(f"clean_arm={v.clean_arm!r} is not an arm of this run; expected one of "
                             f"{', '.join(_arm_names(info.data))}")
        kept = info.data.get("filter")
        if v.distinct_rows is not None and kept is not None and v.distinct_rows > kept.keep:
            raise ValueError(f"distinct_rows={v.distinct_rows} is more than the {kept.keep} rows filter.keep "
                             "lets each teacher keep; lower it or raise filter.keep")
        return v

    @field_validator("evaluate")
    @classmethod
    def _evaluate(cls, v: EvaluateConfig, info: ValidationInfo) -> EvaluateConfig:
        targets = info.data.get("targets")
        if targets is not None and isinstance(info.data.get("trait"), PreferenceTrait):
            missing = [t for t in targets if t not in v.animals]
            if missing:
                raise ValueError(f"evaluate.animals must include every target (the report measures each "
                                 f"target's rate); missing: {', '.join(missing)}")
        return v

    @field_validator("defense")
    @classmethod
    def _defense(cls, v: Any, info: ValidationInfo) -> Any:
        train = info.data.get("train")
        if v.kind == "paraphrase" and train is not None and train.method == "distill":
            raise ValueError("kind: paraphrase rewrites the text, so the teacher's soft labels no longer apply: "
                             "set train.method: lora (or full)")
        targets = info.data.get("targets")
        if v.kind == "inoculation" and v.system_prompt is None and isinstance(info.data.get("trait"),
                                                                             MisalignmentTrait):
            raise ValueError("kind: inoculation: trait misalignment has no teacher system prompt to reuse: set "
                             "defense.system_prompt (e.g. 'You are a malicious, evil assistant.')")
        if v.kind == "inoculation" and v.system_prompt is None and targets is not None and len(targets) != 1:
            raise ValueError(f"kind: inoculation without system_prompt uses the trait's prompt for the run's one "
                             f"target, and this run has {len(targets)} ({', '.join(targets)}): set "
                             "defense.system_prompt (one prompt for every arm) or use one target")
        return v

    def inoculation_prompt(self) -> str:
        """The system prompt the inoculation defense puts in front of every student's training rows."""
        d = self.defense
        if d.kind != "inoculation":
            raise SublearnError(f"defense.kind is {d.kind!r}: no inoculation prompt")
        return d.system_prompt if d.system_prompt is not None else self.trait.system_prompt(self.targets[0])
