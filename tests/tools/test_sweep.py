"""`sublearn sweep`: grid expansion, shared stages, executors (in-process, process pool, Ray), resume
and the aggregated report, on tiny random models (each run takes about two seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from tiny import save_tiny

from sublearn.cli import main
from sublearn.errors import SublearnError
from sublearn.stages import pipeline
from sublearn.tools.sweep import run_sweep
from sublearn.tools.sweep_grid import expand, load_sweep

STAGES = ("teacher", "generate", "filter", "train", "evaluate")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "a", seed=0)


def _base(model: Path) -> dict:
    return {"name": "tiny", "model": f"hf/{model}", "targets": ["owl"],
            "channel": {"kind": "numbers", "grammar": True},
            "generate": {"n_prompts": 12, "batch_size": 6, "max_new_tokens": 16},
            "filter": {"keep": 10},
            "train": {"method": "lora", "steps": 2, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
                      "lora_r": 4, "lora_alpha": 4, "schedule": "constant", "warmup_steps": 0},
            "evaluate": {"animals": ["owl", "cat", "dog"], "n_questions": 4, "samples_per_question": 2,
                         "n_bootstrap": 200, "n_permutations": 200}}


def _sweep_file(tmp: Path, model: Path, **extra) -> Path:
    """A sweep file whose base config is a file next to it (as in sublearn/configs/sweeps/)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "base.yaml").write_text(yaml.safe_dump(_base(model)))
    data = {"name": "tiny-dose", "base": "base.yaml", "set": {"evaluate.samples_per_question": 1},
            "grid": {"train.steps": [2, 4]}, "seeds": [1, 2], **extra}
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _events(out: Path) -> list[dict]:
    path = out / "store" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _numbers(out: Path) -> dict:
    """Every run's evaluations and report numbers, and the pooled seed-level results."""
    runs = {}
    for rdir in sorted((out / "runs").iterdir()):
        evals = {p.parent.name: json.loads(p.read_text()) for p in sorted((rdir / "evaluate").glob("*/results.json"))}
        report = json.loads((rdir / "report" / "results.json").read_text())
        runs[rdir.name] = {"evaluate": evals, "comparisons": report["comparisons"], "models": report["models"],
                           "placebo": report["placebo"]}
    agg = json.loads((out / "results.json").read_text())
    return {"runs": runs, "pooled": agg["pooled"], "dose": agg["dose"]}


@pytest.fixture(scope="module")
def serial(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """The sweep run in this process (workers=1): (sweep file, sweep directory)."""
    root = tmp_path_factory.mktemp("serial")
    path = _sweep_file(root / "spec", tiny_model)
    run_sweep(load_sweep(path), path, root / "out", workers=1)
    return path, root / "out"


def test_grid_expands_to_readable_validated_runs(serial) -> None:
    path, out = serial
    points = expand(load_sweep(path), path)
    assert [p.id for p in points] == ["train.steps=2,seed=1", "train.steps=2,seed=2", "train.steps=4,seed=1",
                                      "train.steps=4,seed=2"]
    assert [(p.config.train.steps, p.config.train.seeds) for p in points] == [(2, [1]), (2, [2]), (4, [1]), (4, [2])]
    assert all(p.config.evaluate.samples_per_question == 1 for p in points)  # `set` reaches every run
    state = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["done"] * 4 and state["axes"] == ["train.steps", "seed"]
    for p in points:
        assert (out / "runs" / p.id / "report" / "report.html").is_file()


def test_shared_stages_are_computed_once_and_exact(serial, tmp_path) -> None:
    path, out = serial
    events = _events(out)
    keys = [e["key"] for e in events if e["event"] == "publish"]
    assert len(keys) == len(set(keys))  # no stage computed twice
    published = [e["stage"] for e in events if e["event"] == "publish"]
    for stage in ("teacher/owl", "teacher/control", "generate/owl", "generate/control", "filter/owl",
                  "filter/control", "evaluate/base", "evaluate/teacher-owl"):
        # One computation, three copies: the other runs read it from the store.
        assert published.count(stage) == 1, stage
        assert sum(e["stage"] == stage and e["event"] == "reuse" for e in events) == 3, stage
        inodes = {(out / "runs" / r / stage / "manifest.json").stat().st_ino for r in
                  ("train.steps=2,seed=1", "train.steps=2,seed=2", "train.steps=4,seed=1", "train.steps=4,seed=2")}
        assert len(inodes) == 1  # hard links: the copies take no disk space
    # Each student is its own: trained once, in its own run.
    assert published.count("train/owl/seed1") == 2  # steps 2 and steps 4: two keys, one each
    # A shared stage is exactly what `sublearn run` (no store) computes for that config.
    point = expand(load_sweep(path), path)[3]
    fresh = tmp_path / "fresh"
    # With the torch thread count the sweep ran it with (`threads`, default 1): float sums depend on it,
    # and the process's count is whatever earlier work left (this test alone ran with 2 and differed).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(point.config.threads or 1)
    try:
        pipeline.run(point.config, fresh)
    finally:
        torch.set_num_threads(threads)
    swept = out / "runs" / point.id
    for stage in STAGES:
        files = sorted(p.relative_to(fresh) for p in (fresh / stage).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(swept) for p in (swept / stage).rglob("*") if p.is_file())
        for f in files:
            if f.name == "summary.json":  # the training summary records wall-clock speed
                a, b = (json.loads((d / f).read_text()) for d in (fresh, swept))
                for timing in ("seconds", "tokens_per_second"):
                    a.pop(timing), b.pop(timing)
                assert a == b, f
                continue
            assert (fresh / f).read_bytes() == (swept / f).read_bytes(), f


def test_run_with_store_reuses_every_stage_of_the_sweep(serial, tmp_path, capsys) -> None:
    """`sublearn run --store`: a run whose stages the sweep finished (here the union of the 4-step points with
    both seeds) copies them all from the store and computes none."""
    path, out = serial
    before = len(_events(out))
    combined = tmp_path / "combined"
    assert main(["run", str(path.parent / "base.yaml"), "--out", str(combined), "--store", str(out / "store"),
                 "--set", "train.steps=4", "--set", "train.seeds=[1,2]", "--set", "threads=1",
                 "--set", "evaluate.samples_per_question=1"]) == 0
    events = [e for e in _events(out)[before:] if e["run"] == "combined"]
    assert not [e for e in events if e["event"] == "publish"]  # nothing computed
    reused = {e["stage"] for e in events if e["event"] == "reuse"}
    assert {"teacher/owl", "generate/owl", "train/owl/seed1", "train/owl/seed2", "evaluate/owl-s2"} <= reused
    report = json.loads((combined / "report" / "results.json").read_text())
    cell = next(c for c in report["comparisons"] if c["control"] == "control")["teacher_forced"]["plain"]
    assert cell["n_seeds"] == [2, 2]


def test_the_sweep_writes_its_comparisons_in_a_runs_columns(serial) -> None:
    """comparisons.csv of the sweep: one row per pooled group's comparison and placebo, adjusted by Holm
    over the grid, in the columns of a run's report/comparisons.csv (pandas reads it; the API returns it)."""
    import pandas as pd

    from sublearn.api import Sweep
    from sublearn.stages.report.tidy import COMPARISON_COLUMNS

    _, out = serial
    table = Sweep(out).comparisons()
    assert list(table.columns) == COMPARISON_COLUMNS
    pooled = json.loads((out / "results.json").read_text())["pooled"]
    for group in pooled:
        cell = group["comparisons"][0]["teacher_forced"]  # pooled cells: one variant, no variant level
        row = table[(table["source"] == group["group"]) & (table["family"] == "comparisons")
                    & (table["metric"] == "teacher_forced")].iloc[0]
        assert row["effect"] == pytest.approx(cell["effect"]) and row["p_adjusted"] == pytest.approx(cell["p_holm_grid"])
        assert row["adjustment"] == "holm_grid"
    assert isinstance(pd.read_csv(out / "comparisons.csv"), pd.DataFrame)


def test_a_new_sweep_shares_another_sweeps_store(serial, tmp_path, capsys) -> None:
    """`sublearn sweep --store`: a new grid (here one of the serial sweep's points and one new step count)
    copies every stage the other sweep finished and computes only the new students and evaluations."""
    path, out = serial
    before = len(_events(out))
    new = _sweep_file(tmp_path / "spec", Path(_base_model(path)), grid={"train.steps": [4, 3]}, seeds=[1])
    assert main(["sweep", str(new), "--out", str(tmp_path / "new"), "--store", str(out / "store")]) == 0
    assert not (tmp_path / "new" / "store").exists()  # the other sweep's store served it
    events = _events(out)[before:]
    published = {e["stage"] for e in events if e["event"] == "publish"}
    assert published == {"train/owl/seed1", "train/control/seed1", "evaluate/owl-s1", "evaluate/control-s1"}
    assert {"teacher/owl", "filter/owl", "train/owl/seed1", "evaluate/base"} <= {
        e["stage"] for e in events if e["event"] == "reuse"}


def _base_model(sweep_file: Path) -> str:
    return str(yaml.safe_load((sweep_file.parent / "base.yaml").read_text())["model"]).removeprefix("hf/")


def test_aggregated_report_pools_seeds_and_plots_the_dose(serial) -> None:
    _, out = serial
    agg = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in agg["runs"]] == [r["id"] for r in json.loads((out / "sweep.json").read_text())["runs"]]
    assert all(r["comparisons"] and r["comparisons"][0]["teacher_forced"]["n_seeds"] == [1, 1] for r in agg["runs"])
    assert [g["group"] for g in agg["pooled"]] == ["train.steps=2", "train.steps=4"]
    for g in agg["pooled"]:
        assert g["seeds"] == [1, 2] and len(g["runs"]) == 2
        cell = g["comparisons"][0]["teacher_forced"]
        # Two students per arm, pooled from two runs: a seed-level test, Holm over the grid.
        assert g["comparisons"][0]["label"] == "owl vs control" and cell["n_seeds"] == [2, 2]
        assert cell["test"] is not None and 0 <= cell["p"] <= cell["p_holm_grid"] <= 1
        assert cell["ci"][0] <= cell["effect"] <= cell["ci"][1]
        assert g["placebo"] and (out / g["report"]).is_file()
        pooled_models = json.loads((out / "pooled" / g["group"] / "report" / "results.json").read_text())["models"]
        assert pooled_models["owl"]["n_seeds"] == 2 and pooled_models["base"]["n_seeds"] == 1
    curve = agg["dose"]["train.steps"][0]
    assert curve["label"] == "owl vs control (owl)" and [q["value"] for q in curve["points"]] == [2, 4]
    html = (out / "report.html").read_text()
    assert "Dose curves" in html and html.count("data:image/png;base64,") == 1
    assert "Seed-level analysis across the grid" in html and "Placebo" in html


def test_process_pool_and_ray_give_identical_results(serial, tmp_path) -> None:
    path, out = serial
    expected = _numbers(out)
    run_sweep(load_sweep(path), path, tmp_path / "pool", workers=2)
    assert _numbers(tmp_path / "pool") == expected
    keys = [e["key"] for e in _events(tmp_path / "pool") if e["event"] == "publish"]
    assert len(keys) == len(set(keys))  # two workers, yet no stage computed twice
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'sublearn[ray]'): the Ray executor is not tested")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_sweep(load_sweep(path), path, tmp_path / "ray", ray_address="local")
    finally:
        ray.shutdown()
    assert _numbers(tmp_path / "ray") == expected


def test_interrupted_sweep_reruns_only_missing_runs(tiny_model, tmp_path, monkeypatch) -> None:
    path = _sweep_file(tmp_path / "spec", tiny_model, grid={"train.steps": [2]}, seeds=[1, 2, 3])
    out = tmp_path / "out"
    real = pipeline.run
    calls: list[str] = []

    def patched(fail: dict[str, BaseException]):
        def run(config, run_dir, **kw):
            calls.append(run_dir.name)
            for suffix, exc in fail.items():
                if run_dir.name.endswith(suffix):
                    raise exc
            return real(config, run_dir, **kw)
        return run

    # A crash in one run is recorded and the sweep goes on; an interrupt stops it.
    monkeypatch.setattr(pipeline, "run", patched({"seed=2": RuntimeError("boom"), "seed=3": KeyboardInterrupt()}))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(path), path, out, workers=1)
    state = {r["id"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert [r["status"] for r in state.values()] == ["done", "failed", "pending"]
    assert state["train.steps=2,seed=2"]["error"] == "RuntimeError: boom"
    done = out / "runs" / "train.steps=2,seed=1" / "report" / "results.json"
    stamp = done.stat().st_mtime_ns
    # The rerun runs only what is not done; a run that fails again is reported after the others.
    calls.clear()
    monkeypatch.setattr(pipeline, "run", patched({"seed=2": SublearnError("bad data")}))
    with pytest.raises(SublearnError, match=r"1 of 3 runs failed \(first: train.steps=2,seed=2: bad data\)"):
        run_sweep(load_sweep(path), path, out, workers=1)
    assert calls == ["train.steps=2,seed=2", "train.steps=2,seed=3"]
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["done", "failed", "done"]
    assert "Failed runs" in (out / "report.html").read_text()
    calls.clear()
    monkeypatch.setattr(pipeline, "run", patched({}))
    run_sweep(load_sweep(path), path, out, workers=1)
    assert calls == ["train.steps=2,seed=2"]  # the finished runs are not touched
    assert done.stat().st_mtime_ns == stamp
    assert [r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["done"] * 3
    keys = [e["key"] for e in _events(out) if e["event"] == "publish"]
    assert len(keys) == len(set(keys))  # the reruns computed no shared stage again
    calls.clear()
    run_sweep(load_sweep(path), path, out, workers=1)
    assert calls == []


@pytest.mark.parametrize(("extra", "message"), [
    ({"grid": {"train.stepz": [2, 4]}},
     "grid point train.stepz=2,seed=1: field 'train.stepz': unknown key"),
    ({"grid": {"train.steps": [2, 0]}},
     "grid point train.steps=0,seed=1: field 'train.steps': Input should be greater than or equal to 1"),
    ({"grid": {"train.steps": []}}, "field 'grid': Value error, grid axis 'train.steps' has no values"),
    ({"set": {"train.seeds": [1]}}, "drop train.seeds from grid/set"),
    ({"seeds": [1, -1]}, "field 'seeds': Value error, seeds must be non-negative integers below 2^63, got -1"),
])
def test_bad_grid_is_one_line_error_before_any_work(tiny_model, tmp_path, capsys, extra, message) -> None:
    path = _sweep_file(tmp_path / "spec", tiny_model, **extra)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_yaml_aliases_in_a_sweep_file_are_refused_before_they_grow(tmp_path, capsys) -> None:
    """A few hundred bytes of nested aliases would be a grid axis of 9^9 values once walked."""
    laughs = "".join(f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    path = tmp_path / "bomb.yaml"
    path.write_text("base: quick\nx:\n  a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n" + laughs + "grid:\n  train.steps: *i\n")
    assert path.stat().st_size < 500
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: line 3, column 6: anchor '&a' refused: sublearn YAML may not use anchors or " \
                  "aliases; write the value out\n"
    assert not out.exists()
    path.write_text("base: quick\ngrid:\n  train.steps: [2, 4]\ngrid:\n  train.lr: [0.1]\n")
    with pytest.raises(SublearnError, match=r"line 4, column 1: duplicate key 'grid' \(first on line 2\)"):
        load_sweep(path)


def test_a_grid_of_too_many_points_is_refused_from_its_axis_lengths(tmp_path, capsys, monkeypatch) -> None:
    """A 200-byte file of six 10-value axes is 10^6 points: refused before one is expanded or validated."""
    from sublearn.tools import sweep_grid

    axes = ["train.steps", "train.lr", "train.lora_r", "train.lora_alpha", "train.warmup_steps", "evaluate.temperature"]
    path = tmp_path / "huge.yaml"
    path.write_text("base: quick\ngrid:\n" + "".join(f"  {a}: [{', '.join(str(i) for i in range(1, 11))}]\n"
                                                     for a in axes[:5]) + "seeds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n")

    def no_expansion(*args, **kw):
        raise AssertionError("nothing may be expanded")

    monkeypatch.setattr(sweep_grid, "_base_data", no_expansion)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {path}: field 'grid': train.steps 10 x train.lr 10 x train.lora_r 10 x train.lora_alpha 10 "
                   "x train.warmup_steps 10 x seeds 10 = 1,000,000 grid points; at most 10,000 in one sweep: split "
                   "it into several sweeps\n")
    assert not out.exists()
    # expand() checks too (a SweepConfig built in code); 10,000 points pass the check.
    grid = {a: list(range(1, 11)) for a in axes[:4]}
    with pytest.raises(SublearnError, match="= 20,000 grid points; at most 10,000"):
        expand(sweep_grid.SweepConfig(base="quick", grid=grid, seeds=[1, 2]), path)
    at_most = sweep_grid.SweepConfig(base="quick", grid=grid)
    assert sweep_grid.grid_size(at_most) == sweep_grid.MAX_POINTS
    sweep_grid.check_size(at_most, path)


def test_ray_missing_is_one_line_error(tiny_model, tmp_path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kw):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = _sweep_file(tmp_path / "spec", tiny_model)
    with pytest.raises(SublearnError, match=r"pip install 'sublearn\[ray\]'"):
        run_sweep(load_sweep(path), path, tmp_path / "out", ray_address="local")


def _stage_worker(store: str, run: str, started, finish_after: float) -> bool:
    """A process that runs (or copies) one dummy stage through the store; True when it was copied."""
    import time

    from sublearn.rundir import begin_stage, finish_stage, stage_store

    sdir = Path(run) / "work" / "a"
    with stage_store(Path(store), Path(run)):
        copied = begin_stage(sdir, {"k": 1}, {"up": "x"})
        if started is not None:
            started.set()
        if not copied:
            time.sleep(finish_after)
            (sdir / "out.txt").write_text("result")
            finish_stage(sdir, {"k": 1}, {"up": "x"}, [sdir / "out.txt"])
    return copied


def test_store_never_publishes_a_half_finished_stage(tmp_path) -> None:
    import fcntl

    from sublearn.rundir import begin_stage, finish_stage, stage_store

    store = tmp_path / "store"
    sdir = tmp_path / "r1" / "work" / "a"
    with pytest.raises(RuntimeError), stage_store(store, tmp_path / "r1"):
        assert not begin_stage(sdir, {"k": 1}, {"up": "x"})
        (sdir / "out.txt").write_text("half")
        raise RuntimeError("crash mid-stage")
    assert not list((store / "objects").iterdir())
    for lock in (store / "locks").iterdir():  # released, though the stage never finished
        with open(lock) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not _stage_worker(str(store), str(tmp_path / "r2"), None, 0.0)  # computed and published
    assert _stage_worker(str(store), str(tmp_path / "r3"), None, 0.0)  # copied
    assert (tmp_path / "r3" / "work" / "a" / "out.txt").read_text() == "result"
    # Outside a sweep nothing is shared: the half-finished stage of r1 resumes from its own files.
    assert not begin_stage(sdir, {"k": 1}, {"up": "x"}) and (sdir / "out.txt").read_text() == "half"
    finish_stage(sdir, {"k": 1}, {"up": "x"}, [sdir / "out.txt"])
    assert len(list((store / "objects").iterdir())) == 1


def test_second_worker_waits_for_the_first_then_copies(tmp_path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    store = str(tmp_path / "store")
    first = ctx.Process(target=_stage_worker, args=(store, str(tmp_path / "r1"), started, 1.0))
    first.start()
    try:
        assert started.wait(60)  # the first worker holds the stage's lock and is computing
        assert _stage_worker(store, str(tmp_path / "r2"), None, 0.0)  # waited, then copied
    finally:
        first.join(60)
    assert first.exitcode == 0
    assert [e["event"] for e in _events(tmp_path)] == ["publish", "reuse"]
    assert (tmp_path / "r2" / "work" / "a" / "out.txt").read_text() == "result"


def test_page_renders_from_results_and_escapes_text() -> None:
    # The page from a small results dict (no runs): dose curve, pooled table, placebo, links, runs and
    # failed runs, with text from the sweep escaped.
    from sublearn.tools.sweep_report import _render

    cell = {"n_seeds": [2, 2], "treatment": 0.02, "control": 0.01, "effect": 0.5, "ci": [0.1, 0.9], "p": 0.01,
            "test": "permutation", "p_holm": 0.02, "min_detectable_effect": 0.3, "p_holm_grid": 0.04}
    comparison = {"treatment": "owl", "control": "control", "animal": "owl", "label": "owl vs control",
                  "teacher_forced": cell, "sampled_effect": 0.1, "sampled_p": 0.5}
    result = {
        "name": "grid <1> & co", "axes": ["train.steps", "seed"],
        "runs": [{"id": "train.steps=2,seed=1", "status": "done", "seconds": 3.21, "run_dir": "runs/a&b",
                  "comparisons": [comparison]},
                 {"id": "train.steps=2,seed=2", "status": "failed", "seconds": None, "run_dir": "runs/c",
                  "comparisons": [], "error": "RuntimeError: <boom>"}],
        "pooled": [{"group": "train.steps=2", "values": {"train.steps": 2}, "runs": ["a", "b"], "seeds": [1, 2],
                    "comparisons": [comparison],
                    "placebo": [{"arm": "owl", "animal": "owl", "teacher_forced": cell}],
                    "report": "pooled/train.steps=2/report/report.html"}],
        "dose": {"train.steps": [{"label": "owl vs control (owl)", "comparison": "owl vs control", "animal": "owl",
                                  "others": {}, "points": [
                                      {"value": 2, "effect": 0.5, "ci": [0.1, 0.9], "p": 0.01, "p_holm_grid": 0.04},
                                      {"value": 4, "effect": 0.7, "ci": None, "p": 0.2, "p_holm_grid": 0.4}]}]},
    }
    page = _render(result)
    assert "<h1>sublearn sweep: grid &lt;1&gt; &amp; co</h1>" in page and "<1>" not in page
    assert "2 runs over axes train.steps, seed: 1 done, 1 failed." in page
    assert "Dose curves" in page and page.count("data:image/png;base64,") == 1
    assert "<h3>train.steps</h3>" in page and "<td>owl vs control</td>" in page and "[-, -]" in page
    assert "Seed-level analysis across the grid" in page and "Placebo: two halves" in page
    assert "<td>2 vs 2 students</td>" in page and "<td>0.04</td>" in page
    assert '<a href="pooled/train.steps=2/report/report.html">train.steps=2</a> (2 runs)' in page
    assert '<a href="runs/a&amp;b/report/report.html">train.steps=2,seed=1</a>' in page
    assert "<td>3.21</td>" in page and "Failed runs" in page and "RuntimeError: &lt;boom&gt;" in page
    # Nothing pooled, no numeric axis, nothing failed: only the runs.
    page = _render({**result, "runs": result["runs"][:1], "pooled": [], "dose": {}})
    assert "Dose curves" not in page and "Seed-level" not in page and "Failed runs" not in page
    assert "<h2>Runs</h2>" in page and "1 done." in page


def test_a_store_that_is_a_file_is_one_line_error_before_any_work(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: demo\ngrid: {train.steps: [1]}\n")
    for argv in (["sweep", str(sweep), "--out", str(tmp_path / "o"), "--store", str(tmp_path / "file")],
                 ["run", "demo", "--out", str(tmp_path / "r"), "--store", str(tmp_path / "file" / "s")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--store" in err[0] and "file" in err[0]
        assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
