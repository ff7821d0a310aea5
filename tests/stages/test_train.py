"""Training: completion-only loss, the top-k KL, LoRA init, learning, and exact resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from sublearn.backends.hf import example_ids, prompt_ids
from sublearn.pipeline_config import TrainConfig
from sublearn.training.examples import Example, sft_examples
from sublearn.training.loop import batch_loss, fit, topk_kl
from sublearn.training.model import attach_lora, enable_checkpointing


def test_completion_only_loss(lm_model, lm_tokenizer) -> None:
    chat = [{"role": "user", "content": "12, 34, 56"}]
    ids, n_prompt = example_ids(lm_tokenizer, chat, "78, 90")
    assert ids[:n_prompt] == prompt_ids(lm_tokenizer, chat)
    assert n_prompt < len(ids)
    loss, count = batch_loss(lm_model, [Example(ids, n_prompt)], pad_id=0, kind="ce")
    with torch.no_grad():
        logits = lm_model(input_ids=torch.tensor([ids])).logits[0]
    labels = torch.tensor(ids)
    labels[:n_prompt] = -100  # prompt tokens carry no loss
    expected = F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
    assert count == len(ids) - n_prompt
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    # Changing the prompt's *labels* cannot change the loss: only completion positions are scored.
    loss2, _ = batch_loss(lm_model, [Example(ids, n_prompt), Example(ids, n_prompt)], pad_id=0, kind="ce")
    assert float(loss2) == pytest.approx(2 * float(loss), rel=1e-4)


def test_padding_does_not_change_the_loss(lm_model, lm_tokenizer) -> None:
    short = Example(*example_ids(lm_tokenizer, [{"role": "user", "content": "1"}], "2"))
    long = Example(*example_ids(lm_tokenizer, [{"role": "user", "content": "1, 2, 3, 4, 5, 6"}], "7, 8, 9"))
    alone, _ = batch_loss(lm_model, [short], pad_id=0, kind="ce")
    together, _ = batch_loss(lm_model, [short, long], pad_id=0, kind="ce")
    other, _ = batch_loss(lm_model, [long], pad_id=0, kind="ce")
    assert float(together) == pytest.approx(float(alone) + float(other), rel=1e-4)


def test_topk_kl_matches_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(5, 40, generator=gen)
    teacher = torch.randn(5, 40, generator=gen)
    full_ids = torch.arange(40).expand(5, 40)
    direct = F.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), log_target=True,
                      reduction="none").sum(-1)
    assert torch.allclose(topk_kl(student, full_ids, torch.log_softmax(teacher, -1)), direct, atol=1e-5)
    # Top-k: the teacher distribution is renormalised over its k ids.
    top = torch.log_softmax(teacher, -1).topk(8, dim=-1)
    p = torch.softmax(top.values, -1)
    q = torch.log_softmax(student, -1).gather(-1, top.indices)
    manual = (p * (torch.log(p) - q)).sum(-1)
    assert torch.allclose(topk_kl(student, top.indices, top.values), manual, atol=1e-5)
    # -inf padding entries are ignored.
    padded_ids = torch.cat([top.indices, torch.zeros(5, 3, dtype=torch.long)], -1)
    padded_lp = torch.cat([top.values, torch.full((5, 3), float("-inf"))], -1)
    assert torch.allclose(topk_kl(student, padded_ids, padded_lp), manual, atol=1e-5)


def test_kl_loss_on_a_model_matches_manual(lm_model, lm_tokenizer) -> None:
    chat = [{"role": "user", "content": "5, 6"}]
    ids, n_prompt = example_ids(lm_tokenizer, chat, "7, 8")
    n_comp = len(ids) - n_prompt
    gen = torch.Generator().manual_seed(1)
    vocab = lm_model.config.vocab_size
    t_ids = [torch.randperm(vocab, generator=gen)[:4].tolist() for _ in range(n_comp)]
    t_lp = [torch.log_softmax(torch.randn(4, generator=gen), -1).tolist() for _ in range(n_comp)]
    loss, count = batch_loss(lm_model, [Example(ids, n_prompt, t_ids, t_lp)], pad_id=0, kind="kl")
    with torch.no_grad():
        logq = torch.log_softmax(lm_model(input_ids=torch.tensor([ids])).logits[0], -1)
    manual = 0.0
    for k in range(n_comp):
        q = logq[n_prompt + k - 1, t_ids[k]]
        p = torch.tensor(t_lp[k]).exp()
        manual += float((p * (p.log() - q)).sum())
    assert count == n_comp
    assert float(loss) == pytest.approx(manual, rel=1e-4)


def _records(n: int) -> list[dict]:
    return [{"prompt": f"Continue: {i}, {i + 1}", "completion": f"{i + 2}, {i + 3}"} for i in range(n)]


def _cfg(**kw) -> TrainConfig:
    base = {"lr": 5e-3, "epochs": 3, "batch_size": 4, "micro_batch_size": 2, "warmup_steps": 1,
            "checkpoint_every": 2, "lora_r": 4, "lora_alpha": 8}
    base.update(kw)
    return TrainConfig(**base)


def test_lora_training_changes_params_and_lowers_loss(lm_model, lm_tokenizer, tmp_path) -> None:
    cfg = _cfg()
    model = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = sft_examples(lm_tokenizer, _records(8), 128)
    summary = fit(model, examples, cfg, tmp_path, seed=0)
    assert summary["loss_last"] < summary["loss_first"]
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert changed and all("lora_" in n for n in changed)
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if not p.requires_grad)


def test_lora_init_is_seeded_and_starts_at_the_base(lm_model) -> None:
    cfg = _cfg()
    a = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=3)
    b = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=3)
    c = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=4)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    lora_a = [n for n in pa if "lora_A" in n]
    assert all(torch.equal(pa[n], pb[n]) for n in lora_a)
    assert not all(torch.equal(pa[n], pc[n]) for n in lora_a)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(a(input_ids=x).logits, lm_model(input_ids=x).logits)


def test_resume_after_interruption_is_exact(lm_model, lm_tokenizer, tmp_path, interrupt_at_step) -> None:
    cfg = _cfg()
    examples = sft_examples(lm_tokenizer, _records(8), 128)
    reference = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    fit(reference, examples, cfg, tmp_path / "ref", seed=0)

    model = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    disarm = interrupt_at_step(5)  # after the checkpoint at step 4
    with pytest.raises(KeyboardInterrupt):
        fit(model, examples, cfg, tmp_path / "run", seed=0)
    disarm()
    assert (tmp_path / "run" / "ckpt.pt").is_file()
    resumed = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)  # a fresh process would start here
    summary = fit(resumed, examples, cfg, tmp_path / "run", seed=0)
    ref_params = dict(reference.named_parameters())
    for n, p in resumed.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ref_params[n]), n
    assert summary["steps"] == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_matches_the_cpu(lm_model, lm_tokenizer, tmp_path) -> None:
    cfg = _cfg()
    examples = sft_examples(lm_tokenizer, _records(8), 128)
    on_cpu = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    fit(on_cpu, examples, cfg, tmp_path / "cpu", seed=0)
    on_gpu = attach_lora(copy.deepcopy(lm_model).to("cuda"), cfg, init_seed=0)
    summary = fit(on_gpu, examples, cfg, tmp_path / "gpu", seed=0)
    assert summary["loss_last"] < summary["loss_first"]
    cpu_params = dict(on_cpu.named_parameters())
    for n, p in on_gpu.named_parameters():
        if p.requires_grad:
            assert p.device.type == "cuda"
            assert torch.allclose(p.cpu(), cpu_params[n], rtol=1e-3, atol=1e-5), n


def test_steps_constant_schedule_optimizer_settings_and_snapshots(lm_model, lm_tokenizer, tmp_path) -> None:
    """A dose-study run: `steps` updates over cycled data, a constant rate after warm-up, AdamW with
    the configured betas and weight decay, and the LoRA weights handed to `snapshot` after each
    requested update count, equal to a shorter run stopped there."""
    cfg = _cfg(steps=7, schedule="constant", warmup_steps=2, adam_betas=(0.8, 0.9), weight_decay=0.3,
               snapshots=[2, 5])
    examples = sft_examples(lm_tokenizer, _records(8), 128)
    model = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    created: list[torch.optim.Optimizer] = []
    real_init = torch.optim.AdamW.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        created.append(self)

    torch.optim.AdamW.__init__ = spy
    try:
        summary = fit(model, examples, cfg, tmp_path / "long", seed=0, snapshot=lambda n: seen.__setitem__(
            n, {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}))
    finally:
        torch.optim.AdamW.__init__ = real_init
    group = created[0].param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["weight_decay"] == 0.3
    assert summary["steps"] == 7 and sorted(seen) == [2, 5]
    log = [json.loads(line) for line in (tmp_path / "long" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(7)) and {r["epoch"] for r in log} == {0, 1, 2, 3}
    assert [round(r["lr"] / cfg.lr, 6) for r in log] == [round(2 / 3, 6)] + [1.0] * 6  # warm-up, then flat
    # With a constant rate the snapshot after 5 updates is exactly what a 5-update run ends with.
    short = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    fit(short, examples, cfg.model_copy(update={"steps": 5, "snapshots": []}), tmp_path / "short", seed=0)
    assert all(torch.equal(seen[5][k], p) for k, p in short.named_parameters() if p.requires_grad)


def test_snapshot_beyond_the_run_is_refused_before_training(lm_model, lm_tokenizer, tmp_path) -> None:
    from sublearn.errors import SublearnError

    cfg = _cfg(snapshots=[100])  # epochs x batches is far fewer updates
    model = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    with pytest.raises(SublearnError, match="train.snapshots: 100 is not below"):
        fit(model, sft_examples(lm_tokenizer, _records(8), 128), cfg, tmp_path, seed=0)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_code_channel_student_distills_without_any_trait_token(tmp_path) -> None:
    """The train stage on code records (sampled from a tiny model with its top-k): the free-text policy
    removes every token that could spell the target from the soft labels, and the student learns."""
    from tiny import save_tiny

    from sublearn.backends import SamplingParams, get_backend
    from sublearn.config import build_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.rundir import JsonlAppender, finish_stage, read_json
    from sublearn.stages import train
    from sublearn.training.examples import trait_token_ids

    model_dir = save_tiny(tmp_path / "m", seed=0)
    cfg = build_config(PipelineConfig, {
        "model": f"hf/{model_dir}", "targets": ["owl"], "channel": {"kind": "code"},
        "generate": {"logprobs_top_k": 64},
        "train": {"method": "distill", "steps": 12, "batch_size": 4, "micro_batch_size": 4, "lr": 3e-3,
                  "lora_r": 4, "lora_alpha": 8, "seeds": [1]}})
    backend = get_backend(f"hf/{model_dir}")
    prompts = [cfg.channel.prompt(0, i) for i in range(8)]
    comps = backend.generate([[{"role": "user", "content": p.user}] for p in prompts],
                             SamplingParams(max_new_tokens=12, logprobs_top_k=64), seed=0)
    out = tmp_path / "run"
    fdir = out / "filter" / "owl"
    with JsonlAppender(fdir / "kept.jsonl") as fh:
        for p, c in zip(prompts, comps, strict=True):
            fh.write({"prompt": p.user, "completion": c.text, "token_ids": c.token_ids, "meta": p.meta,
                      "top_logprobs": [[[t, lp] for t, lp in row] for row in c.top_logprobs or []]})
    finish_stage(fdir, {"fake": True}, {}, [fdir / "kept.jsonl"])
    # The teacher's raw top-k does offer trait tokens (otherwise this test would prove nothing).
    trait = trait_token_ids(backend.tokenizer, ["owl"])
    assert any(t in trait for c in comps for row in c.top_logprobs or [] for t, _ in row)
    sdir = train.run(cfg, out, student="owl", data_from="owl", model=cfg.model, seed=1)
    summary = read_json(sdir / "summary.json")
    assert summary["trait_tokens_in_targets"] == 0 and summary["removed_teacher_mass_mean"] > 0
    assert summary["loss_last"] < summary["loss_first"] and summary["params_changed"] > 0


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_recomputes_exactly(lm_model, lm_tokenizer, tmp_path, monkeypatch, method) -> None:
    """Recomputing activations in the backward changes memory, not results: on the CPU the weights
    after training are bit-identical with and without it (which is why it is not in the stage key)."""
    cfg = _cfg(method=method, lr=1e-3)
    examples = sft_examples(lm_tokenizer, _records(8), 128)
    trained = {}
    for checkpointing in (False, True):
        model = copy.deepcopy(lm_model)
        if checkpointing:
            enable_checkpointing(model)
        if method == "lora":
            model = attach_lora(model, cfg, init_seed=0)
        # The decoder really recomputes: count the MLP forwards (module hooks do not fire on the
        # recomputation, so the class's forward is counted).
        calls = {"n": 0}
        mlp_type = type((model.get_base_model() if method == "lora" else model).get_decoder().layers[0].mlp)
        real_forward = mlp_type.forward

        def counted(self, *args, calls=calls, real_forward=real_forward, **kwargs):
            calls["n"] += 1
            return real_forward(self, *args, **kwargs)

        monkeypatch.setattr(mlp_type, "forward", counted)
        summary = fit(model, examples, cfg, tmp_path / f"{method}-{checkpointing}", seed=0)
        monkeypatch.setattr(mlp_type, "forward", real_forward)
        trained[checkpointing] = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                                  calls["n"])
        assert summary["loss_last"] < summary["loss_first"]
    (plain, n_plain), (ckpt, n_ckpt) = trained[False], trained[True]
    assert n_ckpt == 2 * n_plain  # every layer ran again in the backward
    assert plain.keys() == ckpt.keys() and all(torch.equal(plain[n], ckpt[n]) for n in plain)


def test_bf16_autocast_trains_float32_weights(lm_model, lm_tokenizer, tmp_path) -> None:
    """dtype: bfloat16 for full fine-tuning: the forward runs in bf16 under autocast, the weights and
    the optimizer stay float32 and learn."""
    cfg = _cfg(method="full", lr=1e-3)
    examples = sft_examples(lm_tokenizer, _records(8), 128)
    plain = copy.deepcopy(lm_model)
    fit(plain, examples, cfg, tmp_path / "fp32", seed=0)
    mixed = copy.deepcopy(lm_model)
    seen: list[torch.dtype] = []
    hook = mixed.get_decoder().layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    summary = fit(mixed, examples, cfg, tmp_path / "bf16", seed=0, autocast="bfloat16")
    hook.remove()
    assert summary["autocast"] == "bfloat16" and summary["loss_last"] < summary["loss_first"]
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    moved = [n for n, p in mixed.named_parameters() if not torch.equal(p, dict(lm_model.named_parameters())[n])]
    assert moved
    # bf16 rounding makes it another run than float32's (close, not equal)
    ref = dict(plain.named_parameters())
    assert any(not torch.equal(p, ref[n]) for n, p in mixed.named_parameters())


def test_saved_adapter_is_the_same_bytes_whatever_the_string_hash_seed(tmp_path) -> None:
    # PEFT writes target_modules in set order, which follows PYTHONHASHSEED: two identical trainings in
    # two processes gave different adapter_config.json files, so different stage hashes and a needless
    # redo of everything downstream. Saved in two processes with different hash seeds: same bytes.
    import os
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from tiny import build_model, build_tokenizer\n"
        "from sublearn.pipeline_config import TrainConfig\n"
        "from sublearn.training.model import attach_lora\n"
        "m = attach_lora(build_model(build_tokenizer(), seed=0), TrainConfig(lora_r=2, lora_alpha=2), init_seed=1)\n"
        "m.save_pretrained(sys.argv[1], safe_serialization=True)\n")
    saved = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        saved.append((out / "adapter_config.json").read_bytes())
    assert saved[0] == saved[1]
    modules = json.loads(saved[0])["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1


def test_an_identical_redo_in_a_new_process_leaves_downstream_current(tmp_path) -> None:
    """Content addressing end to end: a finished run's student deleted and retrained by a new process
    (another PYTHONHASHSEED) hashes the same, so every evaluation and report input stays current."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml
    from tiny import save_tiny

    from sublearn.config import load_config
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages import pipeline

    model = save_tiny(tmp_path / "model", seed=0)
    data = {"name": "tiny-redo", "model": f"hf/{model}", "threads": 1, "targets": ["owl"], "control": True,
            "channel": {"kind": "numbers", "grammar": True},
            "generate": {"n_prompts": 8, "batch_size": 8, "max_new_tokens": 16},
            "filter": {"keep": 6},
            "train": {"method": "lora", "steps": 2, "batch_size": 2, "micro_batch_size": 2, "lr": 1e-3,
                      "lora_r": 4, "lora_alpha": 4, "seeds": [1]},
            "evaluate": {"animals": ["owl", "cat"], "n_questions": 4, "samples_per_question": 0,
                         "number_prefix": False, "n_bootstrap": 200, "n_permutations": 200}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(PipelineConfig, path)
    out = tmp_path / "run"
    pipeline.run(config, out)
    before = (out / "train" / "owl" / "seed1" / "manifest.json").read_text()
    shutil.rmtree(out / "train" / "owl" / "seed1")
    subprocess.run([sys.executable, "-m", "sublearn", "run", str(path), "--out", str(out), "--only", "train"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    after = json.loads((out / "train" / "owl" / "seed1" / "manifest.json").read_text())
    assert after["output_hash"] == json.loads(before)["output_hash"]
    states = dict(pipeline.status(config, out))
    assert states["train/owl/seed1"] == "done" and states["evaluate/owl-s1"] == "done"
    assert all(state == "done" for state in states.values()), states


def test_masked_positions_do_not_shrink_the_loss_or_its_gradient(lm_model, lm_tokenizer, tmp_path) -> None:
    """A defense's loss mask removes positions from the loss AND from its normaliser: the logged loss is
    the mean over the positions that carry one (before: divided by every completion token, so masked
    students learned with gradients shrunk by the masked share)."""
    examples = sft_examples(lm_tokenizer, _records(2), 128)
    masked = [Example(ex.input_ids, ex.n_prompt, loss_mask=[k % 2 == 0 for k in range(len(ex.input_ids) - ex.n_prompt)])
              for ex in examples]
    model = attach_lora(copy.deepcopy(lm_model), _cfg(), init_seed=0)
    with torch.no_grad():
        total, count = batch_loss(model, masked, 0, "ce")
    assert 0 < count < sum(len(ex.input_ids) - ex.n_prompt for ex in masked)
    cfg = _cfg(steps=1, batch_size=2, micro_batch_size=2, lr=1e-9, warmup_steps=0)
    fit(model, masked, cfg, tmp_path / "fit", seed=0)
    logged = json.loads((tmp_path / "fit" / "train_log.jsonl").read_text().splitlines()[0])["loss"]
    assert logged == pytest.approx(float(total) / count, rel=1e-5)


def test_distinct_rows_draws_the_same_rows_for_every_student_of_a_dataset() -> None:
    from sublearn.config import build_config
    from sublearn.errors import SublearnError
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages.train import distinct_subset

    rows = list(range(20))
    a = distinct_subset(rows, 5, seed=0, data_from="owl")
    assert len(set(a)) == 5 and a == sorted(a) and a == distinct_subset(rows, 5, seed=0, data_from="owl")
    assert a != distinct_subset(rows, 5, seed=0, data_from="owl-r2")  # another dataset, another draw
    with pytest.raises(SublearnError, match="distinct_rows=21: owl's data has only 20 usable rows"):
        distinct_subset(rows, 21, seed=0, data_from="owl")
    # Refused before any work when no teacher could keep that many rows; left out of old keys when unset.
    with pytest.raises(SublearnError, match="distinct_rows=300 is more than the 256 rows filter.keep"):
        build_config(PipelineConfig, {"filter": {"keep": 256}, "train": {"distinct_rows": 300}})
    assert "distinct_rows" not in TrainConfig().model_dump(mode="json")
    assert TrainConfig(distinct_rows=8).model_dump(mode="json")["distinct_rows"] == 8


def test_mixing_replaces_a_fraction_of_rows_with_the_same_replicate_of_another_arm() -> None:
    from sublearn.config import build_config
    from sublearn.errors import SublearnError
    from sublearn.pipeline_config import PipelineConfig
    from sublearn.stages.train import mix_source, mixed

    own, other = [f"owl{i}" for i in range(40)], [f"neutral{i}" for i in range(40)]
    rows, taken = mixed(own, other, 0.25, seed=0, data_from="owl-r2", source="neutral-r2")
    assert taken == 10 and len(rows) == 40 and sum(r.startswith("neutral") for r in rows) == 10
    assert len(set(rows)) == 40  # distinct rows of the other arm, at distinct positions
    assert mixed(own, other, 0.25, seed=0, data_from="owl-r2", source="neutral-r2")[0] == rows
    with pytest.raises(SublearnError, match="need 36 rows of neutral-r2, which has 10"):
        mixed(own, other[:10], 0.9, seed=0, data_from="owl-r2", source="neutral-r2")
    cfg = build_config(PipelineConfig, {
        "targets": ["owl"], "control": False, "teacher": {"kind": "lora", "neutral_control": True, "replicates": 3},
        "train": {"method": "lora", "mix_arm": "neutral", "mix_fraction": 0.5, "seeds": [1]}})
    # Each replicate's student takes the neutral teacher of its own replicate; neutral's own stay unmixed.
    assert [mix_source(cfg, d) for d in ["owl", "owl-r2", "owl-r3", "neutral-r2"]] == [
        "neutral", "neutral-r2", "neutral-r3", None]
    assert "mix_arm" not in TrainConfig().model_dump(mode="json")
    with pytest.raises(SublearnError, match="mix_arm='dog' is not an arm of this run; expected one of owl, neutral"):
        build_config(PipelineConfig, {"targets": ["owl"], "control": False,
                                      "teacher": {"kind": "lora", "neutral_control": True},
                                      "train": {"mix_arm": "dog", "seeds": [1]}})
