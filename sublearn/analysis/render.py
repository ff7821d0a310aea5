"""The HTML kit every report shares: number formatting, tables, inlined PNG figures and the Jinja2
templates of `sublearn/templates` (package data).

    from sublearn.analysis.render import fmt, html_page, png, render_template, tab, table
    html_page(["<h2>Audit</h2>", table(["metric", "value"], [["AUROC", fmt(0.51)]])])

Used by the pipeline report (`sublearn.stages.report`), the classify section, the audit and the sweep.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from typing import Any


def fmt(x: float | None, digits: int = 3) -> str:
    """`x` to `digits` significant digits; "-" for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """One HTML table as a string, for report sections built outside the templates (classify, sweep,
    audit); the templates draw theirs with the `table` macro of `templates/macros.html.j2`."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
    built elsewhere, e.g. `classify_section`, in `markupsafe.Markup`)."""
    return str(_environment().get_template(template).render(**context))


def tab(headers: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A table for the `table` macro: headers and rows of cells as text."""
    def text(c: Any) -> str:
        return c if isinstance(c, str) else fmt(c) if c is None or isinstance(c, float) else str(c)

    return {"headers": headers, "rows": [[text(c) for c in r] for r in rows]}


def html_page(parts: list[str]) -> str:
    """A self-contained HTML page around report sections given as HTML strings (the sweep and audit
    reports), in the templates' page."""
    from markupsafe import Markup

    return render_template("base.html.j2", title="sublearn report", body=Markup("".join(parts)))
