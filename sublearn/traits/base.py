"""What a trait reads of a run's config, as Protocols: traits sit below the pipeline's config
(`sublearn.pipeline_config.PipelineConfig` has every field named here), so they type their argument by
what they use instead of importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sublearn.backends import RunSettings


class ChannelSettings(Protocol):
    """The channel's `kind` (numbers, code, cot): a trait's prompts may depend on it."""

    @property
    def kind(self) -> str: ...


class TeacherSettings(Protocol):
    """Whether the neutral LoRA teacher is trained (the preference trait's control teacher)."""

    @property
    def neutral_control(self) -> bool: ...


class EvaluateSettings(Protocol):
    """The preference evaluation's settings (`evaluate:` in a config)."""

    @property
    def animals(self) -> Sequence[str]: ...
    @property
    def n_questions(self) -> int: ...
    @property
    def number_prefix(self) -> bool: ...
    @property
    def samples_per_question(self) -> int: ...
    @property
    def sampled_questions(self) -> int | None: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...


class TraitRun(RunSettings, Protocol):
    """A run's config as a trait reads it: the seed, the channel, the teacher and evaluation settings, and
    what `sublearn.backends.open_backend` needs to open a judge in the run's device and request cache."""

    @property
    def seed(self) -> int: ...
    @property
    def channel(self) -> ChannelSettings: ...
    @property
    def teacher(self) -> TeacherSettings: ...
    @property
    def evaluate(self) -> EvaluateSettings: ...
