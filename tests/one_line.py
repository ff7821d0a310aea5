"""The check every bad-input test makes of the CLI's output: exactly one `error:` line, no traceback."""

from __future__ import annotations

from typing import Any


def one_line_error(capsys: Any) -> str:
    """The single `error: ...` line the last command printed to stderr (asserted), with no traceback
    anywhere in its output."""
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in captured.out + captured.err
    return err[0]
