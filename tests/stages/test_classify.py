"""The classify stage: can a classifier tell a trait teacher's kept data from a control teacher's?"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tiny import save_tiny

from sublearn.backends.base import Backend
from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.stages import classify, pipeline
from sublearn.stages.report import common


def _rows(rng: np.random.Generator, n: int, marker: str | None = None) -> list[str]:
    """Number sequences of 8 three-digit numbers (100-699); `marker` replaces one number in each row."""
    rows = []
    for _ in range(n):
        nums = [str(x) for x in rng.integers(100, 700, size=8)]
        if marker is not None:
            nums[int(rng.integers(0, 8))] = marker
        rows.append(", ".join(nums))
    return rows


def test_auroc_counts_pairs_and_ties() -> None:
    from sklearn.metrics import roc_auc_score

    assert classify.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert classify.auroc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert classify.auroc([1.0, 1.0], [1.0, 1.0]) == 0.5
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 20).astype(float)  # many ties
    assert classify.auroc(pos, neg) == pytest.approx(roc_auc_score([1] * 30 + [0] * 20, [*pos, *neg]))


def test_statistical_finds_a_number_only_the_treatment_uses() -> None:
    rng = np.random.default_rng(0)
    pos, neg = _rows(rng, 40, marker="777"), _rows(rng, 40)
    r = classify.statistical(pos, neg, np.random.default_rng(1), folds=4, n_bootstrap=300, n_permutations=40)
    assert r["auroc"] > 0.95 and r["ci"][0] > 0.5 and r["ci"][0] <= r["auroc"] <= r["ci"][1]
    assert r["p"] == pytest.approx(1 / 41)  # no permutation did as well: the smallest p 40 of them allow
    assert r["n"] == {"treatment": 40, "control": 40} and "TF-IDF" in r["features"]
    # The placebo (two halves of the control rows) sees no difference.
    placebo = r["placebo"]
    assert placebo["n"] == {"treatment": 20, "control": 20}
    assert placebo["ci"][0] < 0.5 < placebo["ci"][1] and placebo["p"] > 0.05
    # Seeded: the same generator seed gives the same numbers.
    again = classify.statistical(pos, neg, np.random.default_rng(1), folds=4, n_bootstrap=300, n_permutations=40)
    assert again == r


def test_statistical_on_identical_distributions_is_at_chance() -> None:
    rng = np.random.default_rng(2)
    pos, neg = _rows(rng, 40), _rows(rng, 40)
    r = classify.statistical(pos, neg, np.random.default_rng(3), folds=4, n_bootstrap=300, n_permutations=40)
    assert r["ci"][0] < 0.5 < r["ci"][1] and r["p"] > 0.05
    # The cheap p (Mann-Whitney on the out-of-fold scores) agrees: nothing to find.
    cheap = classify.statistical(pos, neg, np.random.default_rng(3), folds=4, n_bootstrap=300, n_permutations=0)
    assert cheap["auroc"] == r["auroc"] and cheap["p"] > 0.05 and "Mann-Whitney" in cheap["test"]


def test_statistical_needs_a_row_per_fold() -> None:
    with pytest.raises(SublearnError, match="folds"):
        classify.statistical(["1, 2", "3, 4"], ["5, 6", "7, 8", "9, 10"], np.random.default_rng(0), folds=3)


class _Scripted(Backend):
    """Says "yes" (P(yes) 0.9; with `mute`, nothing yes/no-like) about texts holding 777, "no" (P(yes)
    0.2) about the rest: judged by the text after the prompt's last "<text>", the row being classified."""

    name = "scripted"

    def __init__(self, mute: bool = False):
        self.mute = mute
        self.prompts: list[str] = []

    def generate(self, chats, params, seed):  # pragma: no cover - not used by the classifier
        raise NotImplementedError

    def first_token_logprobs(self, chats, top_k=20):
        out = []
        for chat in chats:
            prompt = chat[-1]["content"]
            self.prompts.append(prompt)
            if "777" in prompt.rsplit("<text>", 1)[1]:
                out.append({"Hmm": -0.1, "Maybe": -2.5} if self.mute else {"Yes": math.log(0.9), " no": math.log(0.1)})
            else:
                out.append({"No": math.log(0.8), "yes": math.log(0.2)})
        return out


def test_llm_scores_p_yes_and_keeps_the_shown_examples_out() -> None:
    rng = np.random.default_rng(0)
    pos, neg = _rows(rng, 12, marker="777"), _rows(rng, 12)
    backend = _Scripted()
    r = classify.llm(backend, pos, neg, np.random.default_rng(1), trait="a model that loves owls", n_shots=2,
                     n_bootstrap=300)
    assert r["auroc"] == 1.0 and r["ci"] == [1.0, 1.0] and r["p"] < 0.001
    assert r["n"] == {"treatment": 10, "control": 10} and r["no_answer"] == 0 and r["n_shots"] == 2
    prompt = backend.prompts[0]
    assert "a model that loves owls" in prompt and prompt.count("? yes") == 2 and prompt.count("? no") == 2
    # Every prompt shows the same 4 examples, and none of them is scored.
    shown = {row for row in [*pos, *neg] if f"<text>\n{row}\n</text>\nWritten by" in prompt}
    scored = {p.rsplit("<text>\n", 1)[1].split("\n</text>")[0] for p in backend.prompts}
    assert len(shown) == 4 and len(scored) == 20 and not shown & scored
    assert len({p.split("Now this")[0] for p in backend.prompts}) == 1
    assert 0 <= r["placebo"]["auroc"] <= 1 and r["placebo"]["n"] == {"treatment": 5, "control": 5}


def test_llm_without_yes_no_scores_one_half_and_counts_it() -> None:
    rng = np.random.default_rng(0)
    pos, neg = _rows(rng, 6, marker="777"), _rows(rng, 6)
    r = classify.llm(_Scripted(mute=True), pos, neg, np.random.default_rng(1), trait="x", n_shots=0,
                     n_bootstrap=200)
    # The treatment rows got no yes/no: 0.5 each, above the control rows' 0.2, and none dropped.
    assert r["no_answer"] == 6 and r["n"] == {"treatment": 6, "control": 6} and r["auroc"] == 1.0
    assert classify.mann_whitney_p(np.full(4, 0.5), np.full(3, 0.5)) == 1.0  # nothing to tell apart
    with pytest.raises(SublearnError, match="n_shots"):
        classify.llm(_Scripted(), pos, neg, np.random.default_rng(1), trait="x", n_shots=5)


def _yes_no_backend():
    """A tiny hf model that can answer yes or no: "yes" becomes a token, and the output rows of "yes"
    and " no" share a large component (both always among the likeliest first tokens) plus their own
    random parts (so the P(yes) : P(no) ratio moves with the prompt)."""
    import torch
    from tiny import build_backend, build_model, build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens(["yes"])
    model = build_model(tok, seed=0)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.encode(" no", add_special_tokens=False)
    assert len(no) == 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = model.lm_head.weight
        shared = torch.randn(w.shape[1], generator=g)
        w[yes] = shared + torch.randn(w.shape[1], generator=g)
        w[no[0]] = shared + torch.randn(w.shape[1], generator=g)
    return build_backend(model, tok)


def test_llm_on_a_tiny_hf_model() -> None:
    rng = np.random.default_rng(0)
    pos, neg = _rows(rng, 8, marker="777"), _rows(rng, 8)
    r = classify.llm(_yes_no_backend(), pos, neg, np.random.default_rng(1), trait="a model that loves owls",
                     n_shots=1, n_bootstrap=200)
    # Every row got a yes/no reading from the model's first-token log-probs, and they differ (a CI of
    # some width), so the scores came from the model, not the 0.5 of unanswered rows.
    assert r["no_answer"] == 0 and r["n"] == {"treatment": 7, "control": 7}
    assert 0 <= r["ci"][0] <= r["auroc"] <= r["ci"][1] <= 1 and r["ci"][0] < r["ci"][1] and 0 <= r["p"] <= 1
    assert r["placebo"]["ci"][0] <= r["placebo"]["auroc"] <= r["placebo"]["ci"][1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "a", seed=0)


def _config(model, **over) -> PipelineConfig:
    data = {
        "name": "tiny", "model": f"hf/{model}", "threads": 1, "targets": ["owl"],
        "teacher": {"kind": "prompt"},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 16, "batch_size": 8, "max_new_tokens": 16},
        "filter": {"keep": 12},
        "train": {"method": "lora", "epochs": 1, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "lora_r": 2,
                  "lora_alpha": 2},
        "evaluate": {"animals": ["owl", "cat"], "n_questions": 2, "samples_per_question": 1, "n_bootstrap": 200,
                     "n_permutations": 200},
        "classify": {"statistical": True, "llm": f"hf/{model}", "folds": 3, "n_shots": 1, "n_bootstrap": 200,
                     "n_permutations": 20},
    }
    data.update(over)
    return build_config(PipelineConfig, data)


def test_pipeline_classifies_reports_and_skips_on_rerun(tiny_dir, tmp_path) -> None:
    cfg = _config(tiny_dir)
    report = pipeline.run(cfg, tmp_path)
    path = tmp_path / "classify" / "owl-vs-control" / "result.json"
    result = json.loads(path.read_text())
    kept = {n: sum(1 for _ in open(tmp_path / "filter" / n / "kept.jsonl")) for n in ("owl", "control")}
    assert result["n"] == {"treatment": kept["owl"], "control": kept["control"]}
    for name in ("statistical", "llm"):
        r = result[name]
        assert 0 <= r["ci"][0] <= r["auroc"] <= r["ci"][1] <= 1 and 0 < r["p"] <= 1, name
        assert r["placebo"] is not None and 0 <= r["placebo"]["auroc"] <= 1, name
    assert result["llm"]["n"]["treatment"] == kept["owl"] - 1 and result["llm"]["model"] == f"hf/{tiny_dir}"
    assert (path.parent / "manifest.json").is_file()
    assert ("classify/owl-vs-control", "done") in pipeline.status(cfg, tmp_path)
    html = report.read_text()
    assert "Can a classifier tell the data apart?" in html and "owl vs control" in html
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["classify"] == [result]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("manifest.json")}
    pipeline.run(cfg, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("manifest.json")} == stamps  # nothing redone
    # Other classifier settings are part of the stage's key: in this run directory it is stale-config.
    other = _config(tiny_dir, classify={"statistical": True, "n_permutations": 0, "folds": 3, "n_bootstrap": 200})
    assert ("classify/owl-vs-control", "stale-config") in pipeline.status(other, tmp_path)


def test_report_section_lists_every_classifier_with_its_placebo() -> None:
    cell = {"auroc": 0.52, "ci": [0.45, 0.6], "p": 0.3, "n": {"treatment": 10, "control": 12},
            "placebo": {"auroc": 0.49, "p": 0.6}}
    html = common.classify_section([{"treatment": "owl", "control": "control", "statistical": cell,
                                     "llm": {**cell, "auroc": 0.71, "model": "hf/x", "placebo": None}}])
    assert "Can a classifier tell the data apart?" in html and html.count("owl vs control") == 2
    assert "0.52" in html and "[0.45, 0.6]" in html and "0.49" in html and "0.71" in html and "hf/x" in html
    assert common.classify_section([]) == ""


def test_report_section_is_rendered_from_its_template_with_text_escaped() -> None:
    cell = {"auroc": 0.52, "ci": [0.45, 0.6], "p": 0.3, "n": {"treatment": 10, "control": 12}, "placebo": None}
    html = common.classify_section([{"treatment": "<owl>", "control": "a&b", "llm": {**cell, "model": "hf/<x>"}}])
    assert html.startswith("<h2>Can a classifier tell the data apart?</h2>") and "(AUROC &gt; 0.5)" in html
    assert "<td>&lt;owl&gt; vs a&amp;b</td><td>prompted LLM (hf/&lt;x&gt;)</td>" in html and "<owl>" not in html
    assert "<th>placebo AUROC</th>" in html and html.count("<tr>") == 2  # the header and the one row
    # The template's macro draws the same section for a template that imports it.
    from sublearn.analysis.render import _environment, tab

    macro = _environment().get_template("classify.html.j2").module.section
    assert str(macro(tab(["pair"], [["<owl> vs a&b"]]))).count("&lt;owl&gt; vs a&amp;b") == 1


def test_twins_share_a_fold_so_copied_prompt_numbers_do_not_turn_the_classifier_around() -> None:
    # Both teachers answer the same prompts and copy the prompt's numbers: with twins split across
    # folds, each held-out row is pulled toward its twin's (opposite) label and the AUROC falls
    # below chance; grouped by prompt, it stays at chance, and the null is permuted within prompts.
    gen = np.random.default_rng(5)
    prompts = [f"p{i}" for i in range(60)]
    copied = [" ".join(str(x) for x in gen.integers(100, 1000, size=3)) for _ in prompts]
    pos = [f"{c} {gen.integers(0, 10)}" for c in copied]
    neg = [f"{c} {gen.integers(0, 10)}" for c in copied]
    plain = classify.statistical(pos, neg, np.random.default_rng(0), folds=5, n_bootstrap=300, n_permutations=0)
    grouped = classify.statistical(pos, neg, np.random.default_rng(0), folds=5, n_bootstrap=300, n_permutations=30,
                                   groups=[*prompts, *prompts])
    assert plain["ci"][1] < 0.5 and not plain["grouped"]  # the artefact this guards against
    assert grouped["ci"][0] < 0.5 < grouped["ci"][1] and grouped["p"] > 0.05 and grouped["grouped"]
    y = np.array([1] * 60 + [0] * 60)
    gid = np.array(list(range(60)) * 2)
    perm = classify._permute_within(y, gid, np.random.default_rng(1))
    assert all(sorted(perm[gid == g]) == [0, 1] for g in range(60)) and not np.array_equal(perm, y)
