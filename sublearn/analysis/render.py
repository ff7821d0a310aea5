"""The HTML kit every report shares: number formatting, tables, inlined PNG figures and the Jinja2
templates of `sublearn/templates` (package data). Every page is a template: Python passes text, tables
(`tab`) and base64 PNGs (`png`); autoescape escapes the text.

    from sublearn.analysis.render import fmt, render_template, tab
    render_template("classify.html.j2", classify=tab(["metric", "value"], [["AUROC", fmt(0.51)]]))

Used by the pipeline report (`sublearn.stages.report`: report.html.j2, misalignment.html.j2,
classify.html.j2), the audit (audit.html.j2) and the sweep (sweep.html.j2).
"""

from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any


def fmt(x: float | None, digits: int = 3) -> str:
    """`x` to `digits` significant digits; "-" for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def png(fig: Any) -> str:
    """A matplotlib figure as base64 PNG for an inline <img> (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


@functools.cache
def _environment() -> Any:
    """The Jinja2 environment of the report templates (package data under sublearn/templates)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("sublearn", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_template(template: str, **context: Any) -> str:
    """Render one template of sublearn/templates (autoescaped: pass text, not HTML; wrap an HTML string
    rendered by another template, e.g. `classify_section`'s, in `markupsafe.Markup`)."""
    return str(_environment().get_template(template).render(**context))


def tab(headers: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A table for the `table` macro: headers and rows of cells as text."""
    def text(c: Any) -> str:
        return c if isinstance(c, str) else fmt(c) if c is None or isinstance(c, float) else str(c)

    return {"headers": headers, "rows": [[text(c) for c in r] for r in rows]}
