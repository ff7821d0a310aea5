"""The defend stage in the pipeline: defended data reaches the students, costs are recorded, and a
changed defense redoes exactly the defend stage and what reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import save_tiny

from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import read_json, read_jsonl
from sublearn.stages import pipeline


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "a", seed=0), save_tiny(root / "b", seed=1)


def _config(a, **over) -> PipelineConfig:
    data = {
        "name": "tiny-defense", "model": f"hf/{a}", "threads": 1, "targets": ["owl"], "control": True,
        "teacher": {"kind": "lora", "lora_questions": 8, "lora_epochs": 2, "batch_size": 4},
        "channel": {"kind": "numbers", "grammar": True},
        "generate": {"n_prompts": 12, "batch_size": 6, "max_new_tokens": 16, "logprobs_top_k": 4},
        "filter": {"keep": 10},
        "train": {"method": "distill", "steps": 3, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3,
                  "lora_r": 4, "lora_alpha": 4, "seeds": [1, 2]},
        "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 0,
                     "number_prefix": False, "n_bootstrap": 200, "n_permutations": 200},
    }
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return build_config(PipelineConfig, data)


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("manifest.json")}


def test_shuffle_then_mask_redoes_only_what_reads_the_defended_data(tiny_dirs, tmp_path) -> None:
    a, _ = tiny_dirs
    cfg = _config(a, defense={"kind": "shuffle", "scope": "within"})
    pipeline.run(cfg, tmp_path)
    for name in ("owl", "control"):
        kept = read_jsonl(tmp_path / "filter" / name / "kept.jsonl")
        defended = read_jsonl(tmp_path / "defend" / name / "kept.jsonl")
        assert len(defended) == len(kept) and all(r["defense"] == "shuffle-within" for r in defended)
        assert [sorted(r["token_ids"]) for r in defended] == [sorted(r["token_ids"]) for r in kept]
        cost = read_json(tmp_path / "defend" / name / "defend.json")
        assert cost["rows_in"] == cost["rows_out"] == len(kept) and cost["kept_fraction_tokens"] == 1.0
        # The students learned the defended data: their stage key holds its hash, not the filter's.
        inputs = read_json(tmp_path / "train" / name / "seed1" / "manifest.json")["inputs"]
        assert inputs["data"] == read_json(tmp_path / "defend" / name / "manifest.json")["output_hash"]
    assert all(state == "done" for _, state in pipeline.status(cfg, tmp_path))
    first = _stamps(tmp_path)
    pipeline.run(cfg, tmp_path)
    assert _stamps(tmp_path) == first  # a rerun is a no-op

    # Another defense in a new directory seeded with the old one's upstream stages: only the defend
    # stage and what reads its output run again.
    masked = _config(a, defense={"kind": "divergence", "action": "mask", "fraction": 0.25})
    out = tmp_path / "masked"
    out.mkdir()
    for stage in ("teacher", "generate", "filter"):
        import shutil

        shutil.copytree(tmp_path / stage, out / stage)
    before = _stamps(out)
    pipeline.run(masked, out)
    after = _stamps(out)
    assert {k for k in before if after[k] != before[k]} == set()  # teacher, generate, filter reused
    for name in ("owl", "control"):
        recs = read_jsonl(out / "defend" / name / "kept.jsonl")
        total = sum(len(r["token_ids"]) for r in recs)
        masked_n = sum(len(m) - sum(m) for m in (r["loss_mask"] for r in recs))
        assert masked_n == round(0.25 * total)
        cost = read_json(out / "defend" / name / "defend.json")
        assert cost["masked_tokens"] == masked_n and cost["tokens_out"] == total - masked_n
    # The owl teacher is a LoRA adapter: the masked tokens are the ones it favours most over the base.
    assert read_json(out / "defend" / "owl" / "defend.json")["log_ratio_masked_share"] > 0.25
    assert read_json(out / "defend" / "control" / "defend.json")["log_ratio_mean"] == 0.0  # its teacher is the base
    # `sublearn compare`: the effect each run's own report printed, the change from the baseline run,
    # and the masked run's cost (the share of tokens that kept a loss).
    from sublearn.cli import main
    from sublearn.tools.compare import run as compare

    rows = compare([out], tmp_path, treatment="owl", control="control")
    report = read_json(out / "report" / "results.json")["comparisons"][0]["teacher_forced"]["plain"]
    assert rows[1]["effect"] == pytest.approx(report["effect"]) and rows[1]["p"] == pytest.approx(report["p"])
    assert rows[1]["change"]["difference"] == pytest.approx(rows[0]["effect"] - rows[1]["effect"])
    assert rows[1]["tokens"] == pytest.approx(0.75, abs=0.02) and rows[1]["rows"] == 1.0
    assert rows[0]["defense"] == "shuffle(scope=within, seed=0)" and "change" not in rows[0]
    assert main(["compare", str(out), "--baseline", str(tmp_path), "--treatment", "owl", "--control", "nobody"]) == 2
    # --csv: the same rows in a run's comparisons.csv columns (each run's effect, then its change).
    import csv

    table = tmp_path / "compare.csv"
    assert main(["compare", str(out), "--baseline", str(tmp_path), "--treatment", "owl", "--control", "control",
                 "--csv", str(table)]) == 0
    with table.open() as fh:
        written = list(csv.DictReader(fh))
    from sublearn.stages.report.tidy import COMPARISON_COLUMNS

    assert list(written[0]) == COMPARISON_COLUMNS and [r["family"] for r in written] == ["compare", "compare",
                                                                                          "compare_change"]
    assert float(written[1]["effect"]) == pytest.approx(rows[1]["effect"])
    assert float(written[2]["effect"]) == pytest.approx(rows[1]["change"]["difference"])


def test_masked_positions_carry_no_loss(tiny_dirs, tiny_tokenizer) -> None:
    import torch

    from sublearn.training.examples import training_examples
    from sublearn.training.loop import batch_loss

    a, _ = tiny_dirs
    cfg = _config(a, defense={"kind": "divergence"})
    ids = tiny_tokenizer("12, 34", add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    rows = [[[t, -0.2], [5, -2.0]] for t in ids]
    rec = {"prompt": "Continue: 1, 2", "completion": "12, 34", "token_ids": ids, "top_logprobs": rows}
    mask = [1] * len(ids)
    mask[1] = 0
    from tiny import build_model

    model = build_model(tiny_tokenizer, seed=0)
    for method, kind in (("distill", "kl"), ("lora", "ce")):
        full, _, _ = training_examples(cfg, tiny_tokenizer, [rec], method)
        part, _, _ = training_examples(cfg, tiny_tokenizer, [{**rec, "loss_mask": mask}], method)
        with torch.no_grad():
            loss_full, n_full = batch_loss(model, full, 0, kind)
            loss_part, n_part = batch_loss(model, part, 0, kind)
        assert n_part == n_full - 1 and float(loss_part) < float(loss_full), method


def test_paraphrase_rewrites_with_another_model_and_needs_hard_labels(tiny_dirs, tmp_path) -> None:
    a, b = tiny_dirs
    with pytest.raises(SublearnError, match="paraphrase"):
        _config(a, defense={"kind": "paraphrase", "model": f"hf/{b}"})
    cfg = _config(a, defense={"kind": "paraphrase", "model": f"hf/{b}", "max_new_tokens": 16},
                  train={"method": "lora"}, generate={"logprobs_top_k": 0})
    pipeline.run(cfg, tmp_path)
    recs = read_jsonl(tmp_path / "defend" / "owl" / "kept.jsonl")
    cost = read_json(tmp_path / "defend" / "owl" / "defend.json")
    assert cost["rows_out"] == len(recs) and cost["rows_out"] + sum(cost["rejected"].values()) == cost["rows_in"]
    assert recs and all("token_ids" not in r and r["paraphrase_of"] for r in recs)
    assert any(r["completion"] != r["paraphrase_of"] for r in recs)
    assert all(np.all([c.isdigit() or c in ", " for c in r["completion"]]) for r in recs)  # the channel's format
    summary = json.loads((tmp_path / "train" / "owl" / "seed1" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["params_changed"] > 0


def test_compare_names_training_time_defenses_and_their_cost(tmp_path) -> None:
    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.tools.compare import cost, describe

    base = {"targets": ["owl"], "control": False, "teacher": {"kind": "lora", "neutral_control": True},
            "train": {"seeds": [1]}}
    plain = build_config(PipelineConfig, base)
    diluted = build_config(PipelineConfig, {**base, "train": {"seeds": [1], "mix_arm": "neutral", "mix_fraction": 0.75}})
    cleaned = build_config(PipelineConfig, {**base, "train": {"seeds": [1], "clean_after": 24, "clean_arm": "neutral"}})
    inoculated = build_config(PipelineConfig, {**base, "defense": {"kind": "inoculation"}})
    assert describe(plain) == "none" and describe(diluted) == "dilution(neutral, 0.75)"
    assert describe(cleaned) == "clean_after(24 updates on neutral)"
    assert describe(inoculated) == "inoculation(system_prompt=None)"
    assert cost(tmp_path, diluted)["rows"] == pytest.approx(0.25) and cost(tmp_path, diluted)["tokens"] is None
    assert cost(tmp_path, cleaned) == {"rows": 1.0, "tokens": 1.0, "extra_updates": 24, "detail": {}}
