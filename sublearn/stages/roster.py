"""Who is in a run, and where each one's files live: the teachers, the students, the models the report
compares, and the stage directories one stage reads from another.

Every stage imports this module and no other stage: stages talk only through files in the run
directory, and this module says which files. `sublearn.stages.pipeline` runs the stages in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import check_fields, read_json

CONTROL = "control"  # the base model as a teacher (`control: true`): its data trains the control students
NEUTRAL = "neutral"  # the neutral LoRA teacher (`teacher.neutral_control`), a preference trait's control


def arms(config: PipelineConfig) -> list[str]:
    """The arms: the trait teachers (targets), the base model (with `control`), then the trait's control
    teachers (preference: the neutral LoRA teacher; misalignment: the benign teachers)."""
    return [*config.targets, *([CONTROL] if config.control else []),
            *config.trait.control_teachers(config)]


def replicate_name(arm: str, replicate: int) -> str:
    """Teacher replicate `replicate` (1-based) of `arm`: the first is the arm's own name (so a run
    without replicates is a run with one), the others `<arm>-r<k>`."""
    return arm if replicate == 1 else f"{arm}-r{replicate}"


def replicates(config: PipelineConfig, arm: str) -> list[str]:
    """The teachers of one arm (`teacher.replicates` of them): independent training runs of the same
    recipe (own LoRA initialisation and data order), or for prompted teachers and the base-model
    control, own sampling seeds; each writes and filters its own data and has its own students."""
    return [replicate_name(arm, r) for r in range(1, config.teacher.replicates + 1)]


def teacher_names(config: PipelineConfig) -> list[str]:
    """Every teacher of the run: each arm's replicates, arm by arm."""
    return [name for arm in arms(config) for name in replicates(config, arm)]


RESAMPLED = "-d2"  # the data-resample placebo's second dataset of a teacher: '<teacher>-d2'


def resamples(config: PipelineConfig) -> list[str]:
    """The data-resample placebo's datasets (`resample_placebo`): '<teacher>-d2' for every teacher of that
    arm, written by the same teacher with a second sampling seed (the generate stage seeds by dataset
    name), filtered alike, with students of their own."""
    if config.resample_placebo is None:
        return []
    return [name + RESAMPLED for name in replicates(config, config.resample_placebo)]


def datasets(config: PipelineConfig) -> list[str]:
    """Every dataset of the run (generate, filter, defend stage directories): each teacher's, then the
    data-resample placebo's."""
    return [*teacher_names(config), *resamples(config)]


def writer(config: PipelineConfig, dataset: str) -> str:
    """The teacher whose weights write `dataset` (itself, or for a resampled dataset its teacher)."""
    return dataset.removesuffix(RESAMPLED) if dataset in resamples(config) else dataset


def arm_of(config: PipelineConfig, name: str) -> tuple[str, int]:
    """(arm, replicate index) of teacher `name` (of a resampled dataset: of its writer); a name that is no
    replicate is its own arm."""
    name = writer(config, name)
    for arm in arms(config):
        for r, rep in enumerate(replicates(config, arm), start=1):
            if rep == name:
                return arm, r
    return name, 1


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate `replicate` derived from the arm's `seed` (the first replicate keeps it)."""
    if replicate == 1:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, replicate, 0x7EAC]).generate_state(1)[0]) & 0x7FFFFFFF


def control_role(config: PipelineConfig, name: str) -> str | None:
    """'control' (base-model data), 'neutral-control' / 'benign-control' (a trait's control teacher's
    data), or None for a trait teacher; a replicate has its arm's role."""
    arm, _ = arm_of(config, name)
    if arm == CONTROL:
        return "control"
    if arm in config.trait.control_teachers(config):
        return "neutral-control" if arm == NEUTRAL else "benign-control"
    return None


def students(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every student to train: one per teacher and seed, plus cross-model students."""
    out = []
    resampled = set(resamples(config))
    for name in datasets(config):
        for seed in config.train.seeds:
            role = "resample" if name in resampled else control_role(config, name) or "student"
            out.append({"student": name, "data_from": name, "model": config.model, "seed": seed, "role": role})
    if config.cross_model:
        cross_targets = config.cross_targets if config.cross_targets is not None else config.targets
        # The cross-model students' control: the base model's data, or else the neutral teacher's.
        controls = config.trait.control_teachers(config)
        control = [CONTROL] if config.control else controls[:1]
        for name in [rep for arm in [*cross_targets, *control] for rep in replicates(config, arm)]:
            for seed in config.train.seeds:
                out.append({"student": f"cross-{name}", "data_from": name, "model": config.cross_model,
                            "seed": seed, "role": "cross" if arm_of(config, name)[0] in cross_targets
                            else "cross-control"})
    return out


def eval_specs(config: PipelineConfig, out: Path, teachers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model the report compares, as evaluate-stage specs."""
    specs: list[dict[str, Any]] = [{"name": "base", "model": config.model, "role": "base", "target": None}]
    for name, spec in teachers.items():
        if name == CONTROL:
            continue
        role = control_role(config, name)
        specs.append({"name": f"teacher-{name}", "model": spec["model"],
                      "role": role.replace("-control", "-teacher") if role else "teacher",
                      "target": None if role else arm_of(config, name)[0],
                      "system_prompt": spec.get("system_prompt"), "adapter": spec.get("adapter")})
    if config.cross_model:
        specs.append({"name": "cross-base", "model": config.cross_model, "role": "cross-base", "target": None})
    for st in students(config):
        sdir = student_dir(out, st["student"], st["seed"])
        summary = read_summary(sdir)
        method = summary["method"]
        # A resampled dataset's students are the placebo's, not their arm's: no target.
        control = st["role"] == "resample" or control_role(config, st["data_from"])
        spec = {"name": f"{st['student']}-s{st['seed']}", "model": st["model"], "role": st["role"],
                "target": None if control else arm_of(config, st["data_from"])[0],
                "seed": st["seed"]}
        # Paths relative to the run directory: stage keys hold them, and the directory may move.
        if method == "api":
            spec["model"] = f"openai/{summary['fine_tuned_model']}"
        elif method in ("lora", "distill"):
            spec["adapter"] = str(sdir.relative_to(out) / "adapter")
            for n in config.train.snapshots:  # the dose curve: the same student after n updates
                specs.append({**spec, "name": f"{spec['name']}@{n}", "adapter": str(sdir.relative_to(out) /
                              f"adapter@{n}"), "updates": n})
            spec["updates"] = summary["steps"]
        else:
            spec["adapter"] = str(sdir.relative_to(out) / "model")  # full weights replace the base's
        specs.append(spec)
    specs += icl_specs(config)
    return specs


def icl_specs(config: PipelineConfig) -> list[dict[str, Any]]:
    """The ICL control's evaluated models (none with icl.k = 0): the base model with k of a teacher's
    kept examples in context, per arm (its first teacher) and draw; each draw is one "student" of the arm
    (the report groups icl-owl-d1, icl-owl-d2 ... as icl-owl; see evaluate.icl_context)."""
    if not config.icl.k:
        return []
    return [{"name": f"icl-{name}-d{d}", "model": config.model,
             "role": "icl-control" if control_role(config, name) else "icl",
             "target": None if control_role(config, name) else name, "seed": d,
             "icl": {"data_from": name, "k": config.icl.k, "draw": d}}
            for name in arms(config) for d in config.icl.draws]


def theorem_students(config: PipelineConfig) -> list[dict[str, Any]]:
    """Students whose update the theorem check compares with a LoRA teacher's (same base model)."""
    if config.teacher.kind != "lora" or not config.theorem:
        return []
    return [st for st in students(config) if st["model"] == config.model and st["role"] != "resample"]


def student_dir(out: Path, student: str, seed: int) -> Path:
    """A trained student's directory: train/<student>/seed<k>."""
    return out / "train" / student / f"seed{seed}"


def read_teacher(out: Path, name: str) -> dict[str, Any]:
    """Teacher `name`'s description, teacher/<name>/teacher.json ({name, model, system_prompt, adapter, ...}),
    its shape checked: a damaged file is a one-line error naming it."""
    return read_json(out / "teacher" / name / "teacher.json",
                     {"name": str, "model": str, "system_prompt": (str, None), "adapter": (str, None)})


def read_summary(sdir: Path) -> dict[str, Any]:
    """A trained student's summary.json (`student_dir`), its shape checked as `read_teacher`'s."""
    path = sdir / "summary.json"
    summary = read_json(path, {"data_from": str, "model": str, "method": str})
    check_fields(path, summary, {"fine_tuned_model": str} if summary["method"] == "api" else {"steps": int})
    return summary


def data_stage(config: PipelineConfig) -> str:
    """The stage whose output students learn from: "filter", or "defend" when a defense is set."""
    return "filter" if config.defense.kind == "none" else "defend"


def data_dir(config: PipelineConfig, out: Path, teacher: str) -> Path:
    """The stage directory whose `kept.jsonl` the students of `teacher`'s data learn from."""
    return out / data_stage(config) / teacher


def classify_pairs(config: PipelineConfig) -> list[tuple[str, str]]:
    """(trait teacher, control teacher) pairs: every target against every control teacher of the run (each
    arm's first teacher)."""
    controls = [n for n in arms(config) if control_role(config, n)]
    return [(t, c) for t in config.targets for c in controls]


def classify_dir(out: Path, treatment: str, control: str) -> Path:
    """The classify stage's directory of one pair: classify/<treatment>-vs-<control>."""
    return out / "classify" / f"{treatment}-vs-{control}"
