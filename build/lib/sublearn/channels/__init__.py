"""Channels: the kinds of data a teacher writes (numbers, code, chain-of-thought), one module each.

`PipelineConfig.channel` picks one by `kind`; see `sublearn.channels.base` for what a channel provides.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sublearn.channels.base import ChannelBase, LabelPolicy, Prompt
from sublearn.channels.code import CodeChannel
from sublearn.channels.cot import CotChannel
from sublearn.channels.numbers import NumbersChannel

Channel = Annotated[NumbersChannel | CodeChannel | CotChannel, Field(discriminator="kind")]

__all__ = ["Channel", "ChannelBase", "CodeChannel", "CotChannel", "LabelPolicy", "NumbersChannel", "Prompt"]
