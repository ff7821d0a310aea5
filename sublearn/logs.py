"""Logging and progress bars: `rich` handlers, quiet by default in tests."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Rich logging on stderr: INFO (DEBUG with `verbose`, WARNING with `quiet`)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:  # transformers' own tqdm bars ("Loading weights") would interleave with ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def progress(enabled: bool = True) -> Progress:
    """A progress bar on stderr; it disappears when output is not a terminal (or `enabled` is False,
    e.g. on every process but the main one of a multi-process run)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))
