"""Generation provenance: the seed policy on record, and the fixed-seed collapse check on real samples."""

from __future__ import annotations

import json

from tiny import build_backend, build_model, build_tokenizer
from tiny_run import finished_run

from sublearn.analysis.provenance import SEED_POLICY, collapse_warning, first_item, first_item_stats
from sublearn.backends.base import SamplingParams


def test_one_fixed_seed_for_every_request_collapses_and_is_flagged() -> None:
    """The trap, reproduced with the real sampler: the same request sampled 60 times with one fixed seed
    (one call per request, as the two public datasets were made) vs with sublearn's per-request streams."""
    tok = build_tokenizer()
    backend = build_backend(build_model(tok, seed=0), tok)
    chat = [{"role": "user", "content": "Here is a list of numbers: 12, 40, 7. Add up to 5 more."}]
    params = SamplingParams(max_new_tokens=12, regex=r"\d{1,3}(, \d{1,3}){0,4}")
    fixed = [backend.generate([chat], params, seed=5)[0].text for _ in range(60)]
    ours = [c.text for c in backend.generate([chat] * 60, params, seed=5)]
    collapsed, healthy = first_item_stats(fixed), first_item_stats(ours)
    assert collapsed["top_first_item_share"] == 1.0 and collapsed["duplicate_share"] > 0.9
    assert collapse_warning(collapsed, "fixed.jsonl") is not None
    assert healthy["distinct_first_items"] > 10 and healthy["first_item_entropy_bits"] > 3
    assert collapse_warning(healthy, "ours.jsonl") is None
    assert "opens 100.0% of 60 completions" in str(collapse_warning(collapsed, "fixed.jsonl"))
    assert first_item("  x = 3") == "x" and first_item("417, 3") == "417" and first_item("...") is None


def test_generate_records_its_seed_policy_and_filter_its_first_items() -> None:
    run, _ = finished_run()
    manifest = json.loads((run / "generate" / "owl" / "manifest.json").read_text())
    assert manifest["sampling_seeds"] == SEED_POLICY
    prov = json.loads((run / "filter" / "owl" / "filter.json").read_text())["provenance"]
    generated = [json.loads(line)["completion"] for line in (run / "generate" / "owl" / "generated.jsonl").open()]
    assert prov["rows"] == len(generated) and prov == {**first_item_stats(generated), "warning": prov["warning"]}
