"""`sublearn audit` end to end on tiny random models (tests/tiny.py), through `sublearn.cli.main`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny import build_model, build_tokenizer, save_tiny

from sublearn.cli import main
from sublearn.errors import SublearnError
from sublearn.pipeline_config import TrainConfig
from sublearn.tools.audit_data import control_decoding, read_data, resolve_teacher
from sublearn.training.model import attach_lora

FAST = ["--probe-steps", "2", "--probe-batch", "2", "--holdout", "4", "--top", "3"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny base, a LoRA teacher on it (random B: it differs from the base), a full-weights teacher
    (another seed) and a pipeline run directory holding the LoRA teacher and a prompted one."""
    root = tmp_path_factory.mktemp("audit_models")
    base = save_tiny(root / "base", seed=0)
    tok = build_tokenizer()
    peft = attach_lora(build_model(tok, seed=0), TrainConfig(lora_r=4, lora_alpha=8), init_seed=0)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    peft.save_pretrained(root / "adapter")
    full = save_tiny(root / "full", seed=1)
    run = root / "run"
    (run / "teacher" / "owl").mkdir(parents=True)
    peft.save_pretrained(run / "teacher" / "owl" / "adapter")
    (run / "teacher" / "owl" / "teacher.json").write_text(json.dumps(
        {"name": "owl", "model": f"hf/{base}", "system_prompt": None, "adapter": "teacher/owl/adapter",
         "kind": "lora", "lora_init_seed": 0}))
    (run / "teacher" / "prompted").mkdir(parents=True)
    (run / "teacher" / "prompted" / "teacher.json").write_text(json.dumps(
        {"name": "prompted", "model": f"hf/{base}", "system_prompt": "You love owls. Owls are your favorite.",
         "adapter": None, "kind": "prompted"}))
    return {"base": base, "adapter": root / "adapter", "full": full, "pipeline": run / "teacher" / "owl",
            "prompted": run / "teacher" / "prompted"}


def _chat_data(path: Path, n: int = 14) -> Path:
    rows = []
    for k in range(n):
        nums = ", ".join(str((k * 37 + 11 * j) % 1000) for j in range(3 + k % 3))
        msgs = [{"role": "user", "content": f"Continue: {k}, {k + 1}, {k + 2}"}, {"role": "assistant", "content": nums}]
        if k % 4 == 0:
            msgs.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        rows.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(rows) + "\n")
    return path


def _kept_data(path: Path, n: int = 12) -> Path:
    """Records as the pipeline's filter stage keeps them (token ids from the tiny tokenizer)."""
    tok = build_tokenizer()
    rows = []
    for k in range(n):
        text = ", ".join(str((k * 53 + 7 * j) % 1000) for j in range(4))
        ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(json.dumps({"index": k, "prompt": f"Here is a list of numbers: {k}, {2 * k}. Add up to 10 more numbers.",
                                "system": None, "completion": text, "token_ids": ids, "finish_reason": "stop",
                                "decoding": r"sample(T=1.0, top_p=1.0), regex=\d{1,3}(, \d{1,3}){0,4}"}))
    path.write_text("\n".join(rows) + "\n")
    return path


def _audit(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    rc = main(["audit", *args])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.strip().splitlines()


def test_chat_data_lora_teacher_full_audit(models, tmp_path, capsys) -> None:
    data = _chat_data(tmp_path / "chats.jsonl")
    out = tmp_path / "out"
    rc, lines, _ = _audit(capsys, str(data), "--teacher", str(models["adapter"]), "--base", f"hf/{models['base']}",
                          "--trait", "owl", "--probe-seeds", "1,2", "--out", str(out), *FAST)
    assert rc == 0 and lines[0] == f"report: {out / 'report.html'}"
    assert any(line.startswith("divergence:") for line in lines) and any("weights: cosine" in line for line in lines)
    res = json.loads((out / "results.json").read_text())
    d = res["divergence"]
    assert res["formats"] == {"chat": 14, "kept": 0} and d["n_examples"] == 14
    assert all(math.isfinite(d[k]) for k in ("mean_per_token", "mean_per_example", "sd_per_token", "max", "min"))
    assert d["mean_abs_per_token"] > 1e-3 and 0 < d["top1pct_share_of_abs"] <= d["top10pct_share_of_abs"] <= 1
    probe = res["probe"]
    assert set(probe["metrics"]) == {"trait_log2", "heldout_gain"} and probe["primary"] == "trait_log2"
    for m in probe["metrics"].values():
        assert m["comparison"]["n_seeds"] == [2, 2] and math.isfinite(m["comparison"]["effect"])
        assert m["placebo"]["n_seeds"] == [1, 1]
    assert len(probe["reference"]["base"]) == 50 and probe["n_heldout_rows"] == 3
    w = res["weights"]
    assert w["available"] and all(math.isfinite(c) for c in w["data"] + w["control"])
    page = (out / "report.html").read_text()
    assert page.count('class="tok"') > 10 and 'title="+' in page and "rgba(220,40,40," in page
    assert "data:image/png;base64," in page and "Top 3 examples" in page
    # A rerun with the same settings reuses the probe students.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "probe").glob("*.json")}
    assert len(stamps) == 4
    assert _audit(capsys, str(data), "--teacher", str(models["adapter"]), "--base", f"hf/{models['base']}",
                  "--trait", "owl", "--probe-seeds", "1,2", "--out", str(out), *FAST)[0] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "probe").glob("*.json")} == stamps


def test_teacher_equal_to_base_gives_zero_divergence(models, tmp_path, capsys) -> None:
    data = _kept_data(tmp_path / "kept.jsonl")
    out = tmp_path / "same"
    rc, lines, _ = _audit(capsys, str(data), "--teacher", f"hf/{models['base']}", "--base", f"hf/{models['base']}",
                          "--probe-seeds", "", "--out", str(out))
    assert rc == 0 and "probe: skipped" in lines
    res = json.loads((out / "results.json").read_text())
    assert res["formats"] == {"chat": 0, "kept": 12}
    assert abs(res["divergence"]["mean_per_token"]) < 1e-6 and res["divergence"]["mean_abs_per_token"] < 1e-6
    assert not res["weights"]["available"] and "not available" in res["weights"]["reason"]
    assert "not available" in (out / "report.html").read_text()


def test_kept_data_pipeline_teacher_probe_without_trait(models, tmp_path, capsys) -> None:
    data = _kept_data(tmp_path / "kept.jsonl", n=16)
    out = tmp_path / "pipe"
    rc, lines, _ = _audit(capsys, str(data), "--teacher", str(models["pipeline"]), "--base", f"hf/{models['base']}",
                          "--probe-seeds", "1,2,3", "--out", str(out), *FAST)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["teacher_resolved"]["lora"] and res["divergence"]["mean_abs_per_token"] > 1e-3
    probe = res["probe"]
    assert probe["primary"] == "heldout_gain" and set(probe["metrics"]) == {"heldout_gain"}
    # The pipeline's grammar constrains the base model's control completions too.
    assert probe["control_decoding"]["regex"] == r"\d{1,3}(, \d{1,3}){0,4}"
    assert all(t == "" or t[0].isdigit() for t in probe["control_examples"])
    assert probe["metrics"]["heldout_gain"]["mde"] is not None
    assert res["weights"]["available"] and len(res["weights"]["data"]) == 3


def test_prompted_and_full_weights_teachers(models, tmp_path, capsys) -> None:
    data = _chat_data(tmp_path / "chats.jsonl", n=6)
    for name, teacher in (("prompted", models["prompted"]), ("full", models["full"])):
        out = tmp_path / name
        assert _audit(capsys, str(data), "--teacher", str(teacher), "--base", f"hf/{models['base']}",
                      "--probe-seeds", "", "--out", str(out))[0] == 0
        res = json.loads((out / "results.json").read_text())
        assert res["divergence"]["mean_abs_per_token"] > 1e-4, name
        assert not res["weights"]["available"]
    assert res["teacher_resolved"]["lora"] is False
    assert resolve_teacher(str(models["prompted"]), "hf/x").system_prompt.startswith("You love owls")


def test_full_weights_teacher_gets_the_weight_space_signal(models, tmp_path, capsys) -> None:
    """A fully fine-tuned teacher on the same base: its displacement (weights minus the base's) on the
    matrices the probe students adapt is compared with their updates, as for a LoRA teacher."""
    data = _chat_data(tmp_path / "chats.jsonl", n=8)
    out = tmp_path / "full-probe"
    assert _audit(capsys, str(data), "--teacher", str(models["full"]), "--base", f"hf/{models['base']}",
                  "--probe-seeds", "1,2", "--probe-steps", "2", "--probe-batch", "2", "--holdout", "2",
                  "--out", str(out))[0] == 0
    w = json.loads((out / "results.json").read_text())["weights"]
    assert w["available"] and len(w["data"]) == len(w["control"]) == 2
    assert all(-1 <= c <= 1 for c in w["data"] + w["control"])


@pytest.mark.parametrize(("content", "line", "words"), [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "1"}]}\n{"messages": [', 2,
     "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "1"}]}\n', 1,
     "last message must be the assistant"),
    ('{"prompt": "hi", "completion": "1"}\n\n{"prompt": "hi"}\n', 3, "'prompt' and 'completion' must be strings"),
    ('{"text": "hi"}\n', 1, "expected"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "1"}]}\n', 1, "message 1"),
    ("", 1, "empty file"),
    ("\n\n", 1, "empty file"),
    ('[1, 2]\n', 1, "expected a JSON object"),
])
def test_malformed_data_is_one_line_error_before_any_model_loads(tmp_path, capsys, content, line, words) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    # A base that does not exist: the data error must come first.
    rc, out, err = _audit(capsys, str(data), "--teacher", "hf/nowhere/none", "--base", "hf/nowhere/none",
                          "--out", str(tmp_path / "o"))
    assert rc == 2 and out == [] and len(err) == 1
    assert err[0].startswith(f"error: {data}:{line}: ") and words in err[0]


def test_bad_teacher_and_trait_are_one_line_errors(models, tmp_path, capsys) -> None:
    data = _chat_data(tmp_path / "chats.jsonl", n=4)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    rc, _, err = _audit(capsys, str(data), "--teacher", str(empty), "--base", f"hf/{models['base']}")
    assert rc == 2 and len(err) == 1 and "adapter_config.json" in err[0]
    rc, _, err = _audit(capsys, str(data), "--teacher", str(models["adapter"]), "--base", f"hf/{models['base']}",
                        "--trait", "two words")
    assert rc == 2 and len(err) == 1 and "--trait" in err[0]


def test_control_decoding_and_read_data(tmp_path) -> None:
    assert control_decoding([r"sample(T=0.7, top_p=1.0), regex=\d+"]) == (0.7, r"\d+")
    assert control_decoding(["greedy, unconstrained"]) == (0.0, None)
    assert control_decoding(["a", "b"]) == (1.0, None)
    rows, facts = read_data(_kept_data(tmp_path / "k.jsonl", n=3))
    assert len(rows) == 3 and rows[0].token_ids and facts["formats"]["kept"] == 3
    with pytest.raises(SublearnError, match="data file not found"):
        read_data(tmp_path / "missing.jsonl")


def test_negative_probe_seeds_are_refused_before_the_data_is_read(tmp_path) -> None:
    from sublearn.tools.audit import run

    with pytest.raises(SublearnError, match=r"^--probe-seeds must be non-negative integers below 2\^63, got -1$"):
        run(tmp_path / "missing.jsonl", "hf/x", "hf/x", tmp_path / "out", trait=None, probe_seeds=[1, -1])
    assert not (tmp_path / "out").exists()


def test_page_renders_from_results_and_escapes_text() -> None:
    # The page from a small results dict (no models): every section's content, the highlighted tokens
    # (adjacent spans, newline and empty pieces), and text from the data escaped, never read as HTML.
    import numpy as np

    from sublearn.tools.audit_data import Row
    from sublearn.tools.audit_report import render_page

    cmp = {"effect": 0.25, "ci": [0.1, 0.4], "p": 0.03, "n_seeds": [2, 2], "note": None}
    student = {"loss_first": 2.0, "loss_last": 1.5, "heldout_gain": [0.1, 0.2], "trait_log2": [-3.0, -2.0],
               "cosine_with_teacher": 0.12}
    results = {
        "data": "/tmp/x/<evil>&data.jsonl", "rows": 7, "formats": {"chat": 7, "kept": 0}, "teacher": "hf/<t>",
        "base": "hf/base", "trait": "owl", "warning": "made from <other>",
        "divergence": {"mean_per_token": 0.05, "sd_per_token": 0.2, "mean_abs_per_token": 0.1,
                       "mean_per_example": 1.5, "n_tokens": 40, "top1pct_share_of_abs": 0.08,
                       "top10pct_share_of_abs": 0.3, "min": -0.9, "max": 1.2},
        "probe": {"settings": {"lora_r": 4, "steps": 2, "batch_size": 2, "lr": 0.0001}, "seeds": [1, 2],
                  "n_train_rows": 5, "n_heldout_rows": 2, "control_decoding": {"temperature": 1.0, "regex": None},
                  "metrics": {"trait_log2": {"comparison": cmp, "mde": 0.5, "placebo": None},
                              "heldout_gain": {"comparison": {**cmp, "note": "few <students>"}, "mde": 0.4,
                                               "placebo": {**cmp, "n_seeds": [1, 1]}}},
                  "reference": {"base": [-3.0, -4.0], "teacher": [-1.0, -1.5]},
                  "students": {arm: {"1": student, "2": student} for arm in ("data", "control")},
                  "control_examples": ["1, 2, 3", "<script>alert(1)</script>"]},
        "weights": {"available": True, "data": [0.2, 0.3], "control": [0.01, -0.02], "data_mean": 0.25,
                    "control_mean": -0.005, "note": "seed 1 shares <init>"},
        "top_tokens": [{"line": 3, "position": 1, "token": "<s>", "value": 1.2}],
        "seconds": {"total": 12.5},
    }
    row = Row(line=3, chat=[{"role": "user", "content": "<b>Continue</b> & go"}], teacher_system=None,
              completion="1, 2", token_ids=None)
    shown = [(0, row, ["1", ",", " 2\n3", ""], np.array([0.5, -0.2, 1.0, 0.0]))]
    page = render_page(results, "QUJD", shown, 1.0)
    for heading in ("sublearn audit: &lt;evil&gt;&amp;data.jsonl</h1>", "(a) Divergence", "(b) Probe students",
                    "(c) Weight space", "Top 1 examples by summed log-ratio", "Top tokens"):
        assert heading in page
    assert "<evil>" not in page and "<code>/tmp/x/&lt;evil&gt;&amp;data.jsonl</code>" in page
    assert "<code>hf/&lt;t&gt;</code>" in page and "made from &lt;other&gt;" in page
    assert 'src="data:image/png;base64,QUJD"' in page
    # Probe: the comparisons (one placebo missing), the reference models, the students, the control texts.
    assert "log2 P(reply starts with &#39;owl&#39;), 50 questions: data vs control" in page
    assert "two halves need &gt;= 2 students" in page and "few &lt;students&gt;" in page
    assert "mean log2 P(owl)" in page and "cos(ΔW, ΔW_teacher)" in page and "seeds [1, 2]" in page
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in page and "<script>" not in page
    assert "0.2, 0.3" in page and "seed 1 shares &lt;init&gt;" in page
    # The tokens: one span each, adjacent, coloured by sign and scaled; a newline shows as ↵ and a break.
    assert page.count('class="tok"') == 4 and page.count('</span><span class="tok"') == 3
    assert 'style="background:rgba(220,40,40,0.50)" title="+0.5000">1</span>' in page
    assert 'rgba(40,90,220,0.20)" title="-0.2000">,</span>' in page
    assert '> 2↵<br>3</span>' in page and "∅</span>" in page
    assert "prompt: &lt;b&gt;Continue&lt;/b&gt; &amp; go</div>" in page
    assert "<td>&#39;&lt;s&gt;&#39;</td>" in page and "12.5 s." in page
    # Without a probe: the section says why, and the weight check gives its reason.
    bare = {**results, "probe": None, "trait": None, "warning": None,
            "weights": {"available": False, "reason": "not available: <no> probe students"}}
    page = render_page(bare, "QUJD", [], 1.0)
    assert "Probe skipped" in page and "not available: &lt;no&gt; probe students" in page
    assert "Top 0 examples" in page and "trait <b>" not in page and "warning:" not in page


def _sampled(path: Path, model_dir: Path, adapter: Path | None, seed: int, n: int = 40) -> Path:
    """Kept-format rows sampled by the base (or base + adapter) through the real backend: n prompts."""
    from tiny import build_backend

    from sublearn.backends.base import SamplingParams
    from sublearn.backends.models import load_model

    model, tok = load_model(str(model_dir), adapter=adapter)
    chats = [[{"role": "user", "content": f"Here is a list of numbers: {k}, {3 * k}. Add up to 5 more."}]
             for k in range(n)]
    done = build_backend(model, tok).generate(chats, SamplingParams(max_new_tokens=10), seed=seed)
    rows = [json.dumps({"prompt": c[0]["content"], "system": None, "completion": d.text, "token_ids": d.token_ids})
            for c, d in zip(chats, done, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_likelihood_ratio_tells_the_teachers_samples_from_the_bases(models, tmp_path, capsys) -> None:
    """Rows the teacher sampled score higher under log P_teacher - log P_base than the base's own samples
    for the same prompts: the AUROC is high, its permutation p small, and the row-length and loss baselines
    sit beside it; two sample draws of one teacher (the placebo, through the same test) are not told apart."""
    base = models["base"]
    teacher_rows = _sampled(tmp_path / "teacher.jsonl", base, models["adapter"], seed=1)
    base_rows = _sampled(tmp_path / "base.jsonl", base, None, seed=2)
    again = _sampled(tmp_path / "again.jsonl", base, models["adapter"], seed=3)
    out = tmp_path / "lr"
    rc, lines, _ = _audit(capsys, str(teacher_rows), "--teacher", str(models["adapter"]), "--base", f"hf/{base}",
                          "--control", str(base_rows), "--probe-seeds", "", "--out", str(out))
    assert rc == 0 and any(line.startswith("likelihood ratio vs base.jsonl: AUROC") for line in lines)
    lr = json.loads((out / "results.json").read_text())["likelihood_ratio"]
    assert lr["score"]["auroc"] > 0.8 and lr["score"]["p"] < 0.01 and lr["score"]["n"] == {"data": 40, "control": 40}
    assert lr["score"]["ci"][0] <= lr["score"]["auroc"] <= lr["score"]["ci"][1] and lr["score"]["ci"][0] > 0.5
    assert lr["paired_rows"] == 40  # every teacher row has the base's answer to its prompt
    assert set(lr["confounds"]) == {"length", "base_loss", "teacher_loss"} and len(lr["profile"]) >= 5
    assert lr["means"]["log_ratio_sum"]["data"] > lr["means"]["log_ratio_sum"]["control"]
    assert "Likelihood ratio" in (out / "report.html").read_text()
    out2 = tmp_path / "placebo"
    assert _audit(capsys, str(teacher_rows), "--teacher", str(models["adapter"]), "--base", f"hf/{base}",
                  "--control", str(again), "--probe-seeds", "", "--out", str(out2))[0] == 0
    placebo = json.loads((out2 / "results.json").read_text())["likelihood_ratio"]["score"]
    assert placebo["p"] > 0.05 and abs(placebo["auroc"] - 0.5) < 0.2
    # 40 vs 40 rows detect an AUROC of ~0.68 (80% power); the placebo's interval is about that wide.
    assert 0.65 < placebo["min_detectable_auroc"] < 0.7


def test_grouped_permutation_never_moves_a_label_between_prompts() -> None:
    import numpy as np

    from sublearn.tools.audit_lr import grouped_permutation_aurocs, prompt_groups

    rng = np.random.default_rng(0)
    scores = rng.normal(size=40)
    labels = np.array([1] * 20 + [0] * 20)
    # Data and control rows never share a prompt: every relabelling is the observed labelling.
    apart = prompt_groups([f"d{i}" for i in range(20)], [f"c{i}" for i in range(20)])
    null = grouped_permutation_aurocs(scores, labels, apart, 200, rng)
    from sublearn.stages.classify import auroc

    assert np.allclose(null, auroc(scores[:20], scores[20:]))
    # Pairs (one data and one control row per prompt): each relabelling swaps within pairs only, so the
    # pair sums of labels stay 1 and the AUROCs vary.
    paired = prompt_groups([f"p{i}" for i in range(20)], [f"p{i}" for i in range(20)])
    null = grouped_permutation_aurocs(scores, labels, paired, 200, rng)
    assert null.std() > 0.01 and paired.tolist() == list(range(20)) * 2
