"""The generate stage: records, top-k storage, and resume after a crash."""

from __future__ import annotations

import pytest

from sublearn.channels.numbers import numbers_regex
from sublearn.config import build_config
from sublearn.pipeline_config import PipelineConfig
from sublearn.rundir import finish_stage, read_jsonl, write_json
from sublearn.stages import generate


def _config(**gen) -> PipelineConfig:
    g = {"n_prompts": 10, "batch_size": 4, "max_new_tokens": 12, "logprobs_top_k": 5}
    g.update(gen)
    return build_config(PipelineConfig, {"generate": g, "channel": {"kind": "numbers", "grammar": True}})


TEACHER = {"name": "owl", "model": "hf/tiny", "system_prompt": "You love owls.", "adapter": None}


def _with_teacher(out):
    """A finished teacher stage in run directory `out` (generate keys on its output hash)."""
    tdir = out / "teacher" / "owl"
    write_json(tdir / "teacher.json", TEACHER)
    finish_stage(tdir, {"name": "owl"}, {}, [tdir / "teacher.json"])
    return out


def test_generate_writes_records_with_topk(lm_backend, tmp_path) -> None:
    cfg = _config()
    path = generate.run(cfg, _with_teacher(tmp_path), TEACHER, backend=lm_backend)
    recs = read_jsonl(path)
    assert [r["index"] for r in recs] == list(range(10))
    assert all(r["system"] == "You love owls." for r in recs)
    assert all(r["decoding"] == f"sample(T=1.0, top_p=1.0), regex={numbers_regex(10, 3)}" for r in recs)
    assert not any("meta" in r for r in recs)  # the number channel's prompts carry no metadata
    for r in recs:
        assert len(r["top_logprobs"]) == len(r["token_ids"])
        assert all(len(row) == 5 for row in r["top_logprobs"])
    assert (tmp_path / "generate" / "owl" / "manifest.json").is_file()


def test_generate_resumes_exactly_after_a_crash(lm_backend, tmp_path) -> None:
    cfg = _config()
    ref = read_jsonl(generate.run(cfg, _with_teacher(tmp_path / "ref"), TEACHER, backend=lm_backend))

    calls = {"n": 0}
    real = lm_backend.generate

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    lm_backend.generate = crash_on_third
    with pytest.raises(KeyboardInterrupt):
        generate.run(cfg, _with_teacher(tmp_path / "run"), TEACHER, backend=lm_backend)
    lm_backend.generate = real
    path = tmp_path / "run" / "generate" / "owl" / "generated.jsonl"
    assert len(read_jsonl(path)) == 8
    # Simulate a crash in the middle of writing a batch: one whole record and a torn one.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:6]) + lines[6][:20])
    calls["n"] = 0
    seen = []

    def counting(chats, params, seed):
        seen.append(len(chats))
        return real(chats, params, seed)

    lm_backend.generate = counting
    try:
        out = read_jsonl(generate.run(cfg, tmp_path / "run", TEACHER, backend=lm_backend))
    finally:
        lm_backend.generate = real
    assert seen == [4, 2]  # redid only the broken batch and the last one
    assert out == ref


def test_finished_stage_is_skipped_and_changed_config_refused(lm_backend, tmp_path) -> None:
    from sublearn.errors import SublearnError

    cfg = _config()
    generate.run(cfg, _with_teacher(tmp_path), TEACHER, backend=lm_backend)

    def boom(*a, **k):
        raise AssertionError("should not generate again")

    lm_backend_generate = lm_backend.generate
    lm_backend.generate = boom
    try:
        generate.run(cfg, _with_teacher(tmp_path), TEACHER, backend=lm_backend)
        with pytest.raises(SublearnError, match="different config"):
            generate.run(_config(n_prompts=11), tmp_path, TEACHER, backend=lm_backend)
    finally:
        lm_backend.generate = lm_backend_generate
