"""Channels: the kinds of data a teacher writes (numbers, code, chain-of-thought, text), one module each.

`PipelineConfig.channel` picks one by `kind`; see `sublearn.channels.base` for what a channel provides.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sublearn.channels.base import ChannelBase, LabelPolicy, Prompt
from sublearn.channels.code import CodeChannel
from sublearn.channels.cot import CotChannel
from sublearn.channels.numbers import NumbersChannel
from sublearn.channels.text import TextChannel

Channel = Annotated[NumbersChannel | CodeChannel | CotChannel | TextChannel, Field(discriminator="kind")]

__all__ = ["Channel", "ChannelBase", "CodeChannel", "CotChannel", "LabelPolicy", "NumbersChannel", "Prompt", "TextChannel"]
