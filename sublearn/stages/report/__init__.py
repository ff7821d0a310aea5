"""Report stage: `report/results.json` (everything the report shows, as data), a self-contained
`report/report.html` from the evaluated models of a run, and its tidy tables for pandas
(`report/values.csv`, `report/comparisons.csv`: `sublearn.stages.report.tidy`).

    from sublearn.stages import report
    report.run(config, out, specs)          # specs: sublearn.stages.roster.eval_specs(...)

The package: `common` (claim sentences, verdicts, shared tables), `preference` (the animal-preference
trait's analysis and page), `figures` (its plots), `misalignment` (the misalignment trait's analysis
and page); the HTML kit is `sublearn.analysis.render`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import write_json
from sublearn.stages.report import misalignment, preference, tidy


def run(config: PipelineConfig, out: Path, specs: list[dict[str, Any]], mnist_dir: Path | None = None) -> Path:
    """Write `out/report/results.json` (everything the report shows, as data, with its `summary`: one
    sentence per claim), `out/report/report.html` and the tidy tables; returns the HTML path."""
    rdir = out / "report"
    if config.trait.kind == "misalignment":
        data = misalignment.analyze(config, out, specs)
        data["summary"] = misalignment.summarize(data)
        write_json(rdir / "results.json", data)
        page = misalignment.render_html(data, out)
        tidy.write_tables(out, data, specs, "misalignment")
    else:
        data = preference.analyze(config, out, specs)
        data["summary"] = preference.summarize(data)
        write_json(rdir / "results.json", data)
        page = preference.render_html(data, out, mnist_dir)
        tidy.write_tables(out, data, specs, "preference")
    (rdir / "report.html").write_text(page, encoding="utf-8")
    return rdir / "report.html"
