"""Defenses against subliminal transfer: transforms on a teacher's kept data, composable with any channel.

    defense: {kind: shuffle, scope: within}        # permute the numbers inside each response
    defense: {kind: shuffle, scope: across}        # deal all numbers of the dataset out again at random
    defense: {kind: paraphrase, model: hf/gemma3-270m}   # another family rewrites every response
    defense: {kind: divergence, action: mask, fraction: 0.1}  # no loss on the highest log-ratio tokens
    defense: {kind: divergence, action: drop, fraction: 0.1}  # drop the highest-divergence responses

A defense is applied by the `defend` stage (`sublearn.stages.defend`) to every teacher's kept data
(trait teachers and controls alike, as a user would apply it to a whole dataset), between the
filter and the students, so the arms still differ only in their teacher. Its cost is recorded: rows
and completion tokens kept, and what was changed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sublearn.config import Frozen


class NoDefense(Frozen):
    """Students learn the filtered data as it is."""

    kind: Literal["none"] = Field("none", description="no defense: students learn the kept data as filtered")


class ShuffleDefense(Frozen):
    """Numbers moved between places: what a number says survives, where it stands does not."""

    kind: Literal["shuffle"] = Field("shuffle", description="shuffle the numbers of the data")
    scope: Literal["within", "across"] = Field(
        "within", description="'within': permute the numbers inside each response (everything else stays "
        "in place); 'across': pool the numbers of all responses of one teacher's data and deal them back "
        "at random into the same slots")
    seed: int = Field(0, description="seed of the permutations (with the run's seed and the teacher's name)")


class ParaphraseDefense(Frozen):
    """A model of another family rewrites every response; the teacher's own tokens are gone."""

    kind: Literal["paraphrase"] = Field("paraphrase", description="rewrite every response with another model")
    model: str = Field("hf/gemma3-270m", description="backend/model that rewrites (another family than the "
                       "teacher's, so it cannot carry its idiosyncrasies)")
    temperature: float = Field(0.0, ge=0, description="rewriting temperature (0 = greedy)")
    max_new_tokens: int = Field(64, ge=1, description="longest rewrite, in tokens")
    batch_size: int = Field(32, ge=1, description="responses rewritten per batch")


class DivergenceDefense(Frozen):
    """Remove what the teacher says that its base model would not: the highest log-ratio tokens."""

    kind: Literal["divergence"] = Field("divergence", description="act on the tokens with the highest "
                                        "log P_teacher - log P_base (the audit's per-token log-ratio)")
    action: Literal["mask", "drop"] = Field(
        "mask", description="'mask': the `fraction` of completion tokens with the highest log-ratio get no "
        "loss (soft labels: no target at those positions); 'drop': the `fraction` of responses with the "
        "highest summed log-ratio are removed")
    fraction: float = Field(0.1, gt=0, lt=1, description="share of tokens (mask) or responses (drop) removed")


Defense = Annotated[NoDefense | ShuffleDefense | ParaphraseDefense | DivergenceDefense, Field(discriminator="kind")]
