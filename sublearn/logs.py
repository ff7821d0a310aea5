"""Logging and progress bars: `rich` handlers, quiet by default in tests.

A long call that works in batches (a backend's `generate`, `continuation_logprobs`) reports each
finished batch with `work_done(rows)`; the caller's bar counts it inside `tracking(bar, task)`:

    with progress() as bar:
        task = bar.add_task("eval owl (sampled)", total=len(chats))
        with tracking(bar, task):
            backend.generate(chats, params, seed)   # the bar moves batch by batch, with an ETA
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def quiet_third_party_warnings() -> None:
    """Warnings whose cause is inside a library we call, not in our code, filtered narrowly (by exact
    message and module) so that our own and every other warning still show. `setup_logging` applies
    it, so every process that logs (the CLI's, a pool's workers) filters the same."""
    import warnings

    # peft's PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5 deprecates
    # (FutureWarning from transformers.modeling_utils) on every LoRA model we build or load.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                            module=r"transformers\.modeling_utils")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Rich logging on stderr: INFO (DEBUG with `verbose`, WARNING with `quiet`)."""
    quiet_third_party_warnings()
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


_work_hook: ContextVar[Callable[[int], None] | None] = ContextVar("sublearn_work_hook", default=None)


@contextmanager
def tracking(bar: Progress, task: TaskID) -> Iterator[None]:
    """Within the block, `work_done(n)` advances `task` of `bar` by n; when the block ends the task is
    shown complete (a backend that reports nothing, e.g. an API, jumps to the end when it returns)."""
    token = _work_hook.set(lambda n: bar.advance(task, n))
    try:
        yield
    finally:
        _work_hook.reset(token)
    total = next((t.total for t in bar.tasks if t.id == task), None)
    if total is not None:
        bar.update(task, completed=total)


def work_done(n: int) -> None:
    """Report `n` finished units (rows of a batch) to the bar of the enclosing `tracking` block, if any."""
    hook = _work_hook.get()
    if hook is not None:
        hook(n)
