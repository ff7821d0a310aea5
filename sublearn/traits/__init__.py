"""Traits: what a teacher has and a student may pick up (animal preference; misalignment to come).

`PipelineConfig.trait` picks one by `kind`. A trait brings the teacher recipes (system prompt, LoRA
training pairs, controls), what it adds to the filter (banned words), its evaluation (per-question
values per metric) and the report's sections.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sublearn.traits.preference import PreferenceTrait

# One member today; the misalignment trait joins the union (discriminated by `kind`).
Trait = Annotated[PreferenceTrait, Field(discriminator="kind")]

__all__ = ["PreferenceTrait", "Trait"]
