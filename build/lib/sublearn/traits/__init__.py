"""Traits: what a teacher has and a student may pick up (animal preference, misalignment).

`PipelineConfig.trait` picks one by `kind`. A trait brings the teacher recipes (system prompt, LoRA
training pairs or chat datasets, control teachers), what it adds to the filter (banned words, an
alignment judge), its evaluation (per-item values per metric) and the report's sections.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sublearn.traits.misalignment import MisalignmentTrait
from sublearn.traits.preference import PreferenceTrait

Trait = Annotated[PreferenceTrait | MisalignmentTrait, Field(discriminator="kind")]

__all__ = ["MisalignmentTrait", "PreferenceTrait", "Trait"]
