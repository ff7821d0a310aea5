"""The report as a reader sees it: a real (tiny) pipeline run's report.html opened in headless
Chromium. Every figure loads, no table is empty, and the page opens on the summary of claims.

A script added to the test's copy of the page writes what it found into the DOM on window load;
`chromium --dump-dom` hands the DOM back (no browser-driver dependency). Skipped when no Chromium
binary is installed (CI installs Debian's `chromium`: see .ci/run)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tiny import save_tiny

from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import pipeline

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs on window load, after every inlined image has decoded (or failed to).
CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images).map(function (img) {
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight};
  });
  var tables = Array.from(document.querySelectorAll("table")).map(function (t) {
    var rows = Array.from(t.querySelectorAll("tbody tr")).filter(function (r) {
      return r.querySelector("td") !== null && r.textContent.trim().length > 0;
    });
    var th = t.querySelector("th");
    return {first_header: th ? th.textContent : null, body_rows: rows.length};
  });
  var summary = document.querySelector("section.summary");
  var firstTable = document.querySelector("table");
  var result = {
    images: images, tables: tables,
    summary_claims: summary ? summary.querySelectorAll("li").length : 0,
    summary_top: summary ? summary.getBoundingClientRect().top : null,
    summary_before_tables: !!(summary && firstTable &&
      (summary.compareDocumentPosition(firstTable) & Node.DOCUMENT_POSITION_FOLLOWING)),
  };
  var pre = document.createElement("pre");
  pre.id = "check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def inspect(page: Path, browser: str, tmp: Path) -> dict:
    """Open a copy of `page` with the CHECK script in headless Chromium; what the script found."""
    copy = tmp / "checked.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    proc = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,1600",
                           "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r'<pre id="check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no check result in the DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def browser() -> str:
    path = _browser()
    if path is None:
        pytest.skip("no Chromium binary found (looked for: " + ", ".join(BROWSERS) + "); Debian: apt-get "
                    "install chromium")
    return path


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> Path:
    """A whole pipeline run on tiny random models: one trait teacher, the base-model control and the
    neutral LoRA control, two students each (so seed-level tests exist); returns its report.html."""
    root = tmp_path_factory.mktemp("browser")
    model = save_tiny(root / "model", seed=0)
    cfg = build_config(PipelineConfig, {
        "name": "tiny <browser> & report", "model": f"hf/{model}", "threads": 2, "targets": ["owl"],
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 2, "batch_size": 4, "neutral_control": True},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 12, "batch_size": 6, "max_new_tokens": 16, "logprobs_top_k": 4},
        "filter": {"keep": 10},
        "train": {"method": "distill", "epochs": 1, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
                  "seeds": [0, 1], "lora_init_seed": "teacher", "lora_r": 4, "lora_alpha": 4},
        "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 3,
                     "n_bootstrap": 200, "n_permutations": 200}})
    return pipeline.run(cfg, root / "run")


def test_every_figure_loads_and_no_table_is_empty(tiny_report, browser, tmp_path) -> None:
    found = inspect(tiny_report, browser, tmp_path)
    # The figures of this run: trait rates, both specificity matrices, the filter.
    assert len(found["images"]) >= 4
    broken = [img for img in found["images"] if not (img["complete"] and img["width"] > 0 and img["height"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    assert len(found["tables"]) >= 6
    empty = [t for t in found["tables"] if t["body_rows"] == 0]
    assert not empty, f"tables without a row: {empty}"


def test_the_page_opens_on_the_summary(tiny_report, browser, tmp_path) -> None:
    found = inspect(tiny_report, browser, tmp_path)
    # Two students per arm: each comparison (owl vs control, owl vs neutral) is a claim with a sentence.
    assert found["summary_claims"] >= 2
    assert found["summary_before_tables"] and found["summary_top"] < 400  # in the first screen, not below it
    page = tiny_report.read_text(encoding="utf-8")
    assert "tiny &lt;browser&gt; &amp; report" in page  # text from the run is escaped, not markup


def test_sublearn_report_rerenders_the_run_and_prints_its_claims(tiny_report, tmp_path, capsys) -> None:
    """`sublearn report RUN_DIR` rebuilds report/ from the run directory's files alone: the same
    results, and the page's claims printed to the terminal."""
    from sublearn.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_report.parent.parent, run_dir)
    before = json.loads((run_dir / "report" / "results.json").read_text())
    shutil.rmtree(run_dir / "report")
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    after = json.loads((run_dir / "report" / "results.json").read_text())
    assert after["summary"] == before["summary"] and after["comparisons"] == before["comparisons"]
    assert out.startswith("What this run showed:") and out.rstrip().endswith(str(run_dir / "report" / "report.html"))
    assert all(claim["text"].split()[0] in out for claim in after["summary"]["claims"])
    assert (run_dir / "report" / "report.html").is_file()
