"""Fuzz: generated malformed input fed to every command through `sublearn.cli.main`. Each case must end
with exit status 2 and exactly one line on stderr starting with `error:`, never a traceback:

- YAML configs (`run CONFIG --only report`): wrong types, unknown keys, truncated files, anchors and
  aliases, duplicate keys, huge and deeply nested values, bytes that are not text;
- sweep files (`sweep`) mutated the same ways, and a sweep directory whose sweep.json is damaged;
- JSONL data for `audit`: truncated lines, wrong types, nested junk, rows over the size limits;
- run directories (`status`, `report`, `compare`, `run --only report`) with a manifest, config,
  teacher, summary or results file damaged.

Seeded (change SEED to explore other cases; a failure names its case). No case may start model work:
model loading, the pipeline and the sweep's executor are replaced by stand-ins that raise, and every
generated config fails validation or stops at the `--only report` check for trained students.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_run import copy_run, finished_run

from sublearn.cli import main

SEED = 2026


class _WorkStarted(Exception):
    """Raised by the stand-ins: a case got past every check into real work."""


@pytest.fixture()
def no_work(monkeypatch):
    import sublearn.backends.models
    import sublearn.stages.pipeline
    import sublearn.tools.sweep

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _WorkStarted

    monkeypatch.setattr(sublearn.backends.models, "load_model", refuse)
    monkeypatch.setattr(sublearn.stages.pipeline, "run", refuse)
    monkeypatch.setattr(sublearn.tools.sweep, "_execute", refuse)


def _refused(capsys, argv: list[str], case: str, valid: list[str] | None = None) -> str:
    """Run the CLI on one case; assert exit 2 with one `error:` line and no traceback; return the line.
    With `valid`, a case that passes every check (a mutation that happened to leave valid input) is
    appended there instead of failing; the stand-ins kept it from doing any work."""
    try:
        rc = main(argv)
    except _WorkStarted:
        if valid is None:
            pytest.fail(f"{case}: got past every check into real work")
        valid.append(case)
        capsys.readouterr()
        return ""
    except BaseException as exc:  # noqa: BLE001 - any escape is a traceback for the user
        pytest.fail(f"{case}: {type(exc).__name__} escaped main(): {exc!s:.300}")
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, f"{case}: exit {rc}; stderr {captured.err[-500:]!r}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{case}: stderr {captured.err[-800:]!r}"
    assert "Traceback" not in captured.out + captured.err, case
    return lines[0]


# Values of the wrong type for (nearly) every field: a section gets an unknown key, a scalar a mapping.
ALWAYS_WRONG: list[Any] = [{"fuzz": [[1]]}, {"kind": "nonsense", "x": 1}]
JUNK: list[Any] = [*ALWAYS_WRONG, None, True, -1, 0, 3.5, -1e308, 10**30, "", "\U0001f989" * 20, "x" * 3000, [],
                   [1, [2, [3]]], "hf/no/such/model/here", "../../etc", float("inf"), "1e999"]


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def _text_mutation(rng: random.Random, text: str) -> bytes:
    """A YAML text damaged one of the ways a file gets damaged (or abused)."""
    kind = rng.choice(["truncate", "anchor", "duplicate", "tab", "nested", "huge-int", "hex-int", "date", "bytes",
                       "not-utf8", "empty", "list", "scalar", "tag", "flow-junk"])
    lines = text.splitlines()
    if kind == "truncate":
        return text[: rng.randrange(1, max(2, len(text) - 1))].encode()
    if kind == "anchor":
        return ("base: &a [1, 2]\nother: *a\n" + text).encode()
    if kind == "duplicate":
        return (text + lines[0] + "\n").encode()
    if kind == "tab":
        return text.replace("  ", "\t", 1).encode() if "  " in text else ("a:\n\tb: 1\n" + text).encode()
    if kind == "nested":
        return (text + "deep: " + "[" * rng.choice([70, 500, 5000]) + "\n").encode()
    if kind == "huge-int":
        return (text + "seed: " + "9" * rng.choice([40, 5000]) + "\n").encode()
    if kind == "hex-int":
        return (text + "seed: 0x" + "f" * 3000 + "\n").encode()
    if kind == "date":
        return (text + "name: 2001-13-45\n").encode()
    if kind == "bytes":
        pos = rng.randrange(len(text))
        return text[:pos].encode() + bytes(rng.randrange(256) for _ in range(8)) + text[pos:].encode()
    if kind == "not-utf8":
        return b"\xff\xfe\x00" + text.encode("utf-16-le")
    if kind == "empty":
        return rng.choice([b"", b"\n", b"---\n", b"~\n"])
    if kind == "list":
        return b"- a\n- b\n"
    if kind == "scalar":
        return rng.choice([b"just text\n", b"42\n", b"!!python/object/apply:os.getpid []\n"])
    if kind == "tag":
        return (text + "name: !!python/object:os.system x\n").encode()
    return (text + "name: {a: [b, {c: }\n").encode()


# --- YAML configs --------------------------------------------------------------------------------

CONFIG = {"name": "fuzz", "targets": ["owl"], "seed": 1, "channel": {"kind": "numbers", "max_numbers": 10},
          "generate": {"n_prompts": 8, "max_new_tokens": 40}, "filter": {"keep": 4},
          "train": {"seeds": [1, 2], "steps": 3}, "evaluate": {"n_questions": 4, "animals": ["owl", "cat"]}}
CONFIG_FIELDS = ["name", "model", "seed", "targets", "control", "cross_model", "threads", "dtype", "trait", "channel",
                 "teacher", "generate", "filter", "train", "evaluate", "defense", "icl", "classify", "theorem",
                 "train.seeds", "train.steps", "train.lr", "train.method", "train.lora_targets", "generate.n_prompts",
                 "generate.temperature", "generate.backend", "filter.keep", "filter.judge", "evaluate.animals",
                 "evaluate.n_questions", "channel.kind", "channel.max_numbers", "defense.kind", "classify.llm",
                 "icl.k", "icl.draws", "teacher.kind", "teacher.replicates", "trait.kind", "resample_placebo"]


def _config_case(rng: random.Random) -> tuple[str, bytes]:
    tree = json.loads(json.dumps(CONFIG))
    kind = rng.choice(["wrong-type", "wrong-type", "unknown-key", "text", "text"])
    if kind == "wrong-type":
        for _ in range(rng.randint(1, 3)):
            _set(tree, rng.choice(CONFIG_FIELDS), rng.choice(JUNK))
        return kind, yaml.safe_dump(tree, allow_unicode=True).encode()
    if kind == "unknown-key":
        _set(tree, rng.choice(["", "train.", "generate.", "channel.", "evaluate."]) + rng.choice(["fuzz", "seeds_", "Lr"]), 1)
        return kind, yaml.safe_dump(tree).encode()
    return kind, _text_mutation(rng, yaml.safe_dump(tree))


def test_fuzz_yaml_configs(tmp_path, capsys, no_work) -> None:
    rng = random.Random(SEED)
    for i in range(80):
        kind, content = _config_case(rng)
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(content)
        _refused(capsys, ["run", str(path), "--out", str(tmp_path / f"run{i}"), "--only", "report"],
                 f"config case {i} ({kind}): {content[:200]!r}")


# --- sweep files ---------------------------------------------------------------------------------

SWEEP = {"name": "fz", "base": {"targets": ["owl"], "train": {"seeds": [1]}}, "set": {"evaluate.n_questions": 4},
         "grid": {"train.steps": [1, 2]}, "seeds": [1, 2]}
SWEEP_FIELDS = ["name", "base", "set", "grid", "seeds", "grid.train.steps", "grid.train.lr", "grid.nonsense",
                "set.train.steps", "set.nonsense", "base.train", "base.seed", "base.targets"]


def _sweep_case(rng: random.Random) -> tuple[str, bytes]:
    tree = json.loads(json.dumps(SWEEP))
    kind = rng.choice(["wrong-type", "wrong-type", "axis", "big-grid", "unknown-key", "text", "text"])
    if kind == "wrong-type":
        field = rng.choice(SWEEP_FIELDS)
        if field.startswith("grid."):
            tree["grid"][field[5:]] = rng.choice([v for v in JUNK if v != []] + [[{"fuzz": 1}], ["x", None]])
        elif field.startswith("set."):
            tree["set"][field[4:]] = rng.choice(ALWAYS_WRONG)
        else:
            _set(tree, field, rng.choice(ALWAYS_WRONG))
    elif kind == "axis":
        tree["grid"][rng.choice(["train.nonsense", "seeds", "train.steps", "nope.nope"])] = rng.choice(
            [[-1, 0], ["x"], [[1]], [{"a": 1}]])
    elif kind == "big-grid":
        tree["grid"] = {f"train.{f}": list(range(1, 30)) for f in ("steps", "lora_r", "warmup_steps", "epochs")}
    elif kind == "unknown-key":
        tree[rng.choice(["fuzz", "grids", "Seeds"])] = [1]
    else:
        return kind, _text_mutation(rng, yaml.safe_dump(tree))
    return kind, yaml.safe_dump(tree, allow_unicode=True).encode()


def test_fuzz_sweep_files(tmp_path, capsys, no_work) -> None:
    rng = random.Random(SEED + 1)
    valid: list[str] = []  # a truncated file can be a shorter valid sweep
    for i in range(50):
        kind, content = _sweep_case(rng)
        path = tmp_path / f"s{i}.yaml"
        path.write_bytes(content)
        _refused(capsys, ["sweep", str(path), "--out", str(tmp_path / f"sweep{i}")],
                 f"sweep case {i} ({kind}): {content[:200]!r}", valid)
    assert len(valid) <= 5, valid


def test_fuzz_a_sweep_directory_with_a_damaged_sweep_json(tmp_path, capsys, no_work) -> None:
    rng = random.Random(SEED + 2)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    for i in range(12):
        out = tmp_path / f"sweep{i}"
        out.mkdir()
        content = _damaged_json(rng, {"name": "fz", "runs": [{"id": "train.steps=1,seed=1", "status": "done"}]},
                                {"runs": [None, 3, "x", [1], {"id": 5}, {"status": "done"}]})
        (out / "sweep.json").write_bytes(content)
        line = _refused(capsys, ["sweep", str(sweep), "--out", str(out)], f"sweep.json case {i}: {content[:200]!r}")
        assert str(out / "sweep.json") in line


# --- audit data ----------------------------------------------------------------------------------

VALID_ROWS = [{"prompt": "List numbers.", "completion": "1, 2, 3"},
              {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4, 5"}]},
              {"prompt": "p", "completion": "6", "system": "You love owls.", "token_ids": [21, 22]}]


def _bad_line(rng: random.Random) -> bytes:
    """One line that is not a valid row, whichever way."""
    kind = rng.choice(["truncated", "wrong-type", "nested", "not-object", "huge-int", "not-utf8", "long", "ids",
                       "messages", "keys", "nan"])
    row = json.dumps(rng.choice(VALID_ROWS))
    if kind == "truncated":
        return row[: rng.randrange(1, len(row) - 1)].encode()
    if kind == "wrong-type":
        return json.dumps({"prompt": rng.choice([3, None, [], {"a": 1}]), "completion": rng.choice(JUNK[:8])}).encode()
    if kind == "nested":
        depth = rng.choice([50, 2000, 20000])
        return ('{"prompt": "a", "completion": ' + "[" * depth + "]" * depth + "}").encode()
    if kind == "not-object":
        return rng.choice([b"[1, 2]", b'"row"', b"3", b"null", b"true"])
    if kind == "huge-int":
        return ('{"prompt": "a", "completion": "b", "token_ids": [' + "9" * 5000 + "]}").encode()
    if kind == "not-utf8":
        return b'{"prompt": "\xff\xfe", "completion": "1"}'
    if kind == "long":
        return json.dumps({"prompt": "p", "completion": "1, " * 40_000}).encode()
    if kind == "ids":
        return json.dumps({"prompt": "p", "completion": "1", "token_ids": rng.choice([[-1], ["a"], [1.5], "12", [True]])}).encode()
    if kind == "messages":
        return json.dumps({"messages": rng.choice(["x", [], [{"role": "robot", "content": "a"}, {"role": "assistant",
                          "content": "b"}], [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
                          [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], [1, 2]])}).encode()
    if kind == "keys":
        return json.dumps({"text": "hi", "answer": "1"}).encode()
    return b'{"prompt": "a", "completion": NaN}'


def test_fuzz_audit_data(tmp_path, capsys, no_work) -> None:
    rng = random.Random(SEED + 3)
    for i in range(60):
        lines = [json.dumps(rng.choice(VALID_ROWS)).encode() for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.1:
            lines = [b""] * rng.randint(0, 3)  # empty, or only blank lines
        else:
            lines.insert(rng.randint(0, len(lines)), _bad_line(rng))
        data = tmp_path / f"d{i}.jsonl"
        data.write_bytes(b"\n".join(lines) + rng.choice([b"\n", b""]))
        line = _refused(capsys, ["audit", str(data), "--teacher", "hf/x/y", "--base", "hf/x/y", "--probe-seeds", "",
                                 "--out", str(tmp_path / f"a{i}")], f"audit case {i}: {data.read_bytes()[:300]!r}")
        assert line.startswith(f"error: {data}")


# --- damaged run directories ---------------------------------------------------------------------


def _damaged_json(rng: random.Random, original: dict[str, Any], wrong: dict[str, list[Any]]) -> bytes:
    """`original` damaged: replaced whole by another shape or broken text, or one of the fields in
    `wrong` given one of its wrong values."""
    if rng.random() < 0.5 or not wrong:
        return rng.choice([b"[]", b"[1, 2]", b'"done"', b"3", b"null", b"", b"{", b"\xff\xfe{}",
                           ("[" * 20000 + "]" * 20000).encode(), json.dumps(original).encode()[:-1],
                           b'{"a": ' + b"9" * 5000 + b"}"])
    field = rng.choice(sorted(wrong))
    return json.dumps({**original, field: rng.choice(wrong[field])}).encode()


NOT_STR = [None, 3, 1.5, True, [], ["x"], {"a": 1}]
# Per file: the fields a command reads, each with values of the wrong shape.
WRONG_FIELDS = {
    "manifest.json": {"config_hash": NOT_STR, "inputs": ["x", [], 3, {"data": 5}, {"data": None}],
                      "output_hash": [3, [], {"a": 1}, True], "outputs": ["x", 3, {"a": 1}, [3], [None], [""]]},
    "teacher.json": {"name": NOT_STR, "model": NOT_STR, "system_prompt": [3, [], {"a": 1}, True],
                     "adapter": [3, [], {"a": 1}, True]},
    "summary.json": {"data_from": NOT_STR, "model": NOT_STR, "method": NOT_STR, "steps": [None, "3", 1.5, [], True]},
    "results.json": {"teacher_forced": [None, 3, "x", [], {"plain": "x"}, {"plain": {"owl": "x"}}]},
    "config.json": {"targets": ALWAYS_WRONG + ["owl", 3], "train": ALWAYS_WRONG, "name": ALWAYS_WRONG,
                    "seed": [-1, "x", 2**70], "fuzz": [1]},
}


def _run_files(run_dir: Path, command: str, verify: bool) -> list[Path]:
    """The files of a finished run that `command` reads (so damaging any of them must be refused). Not
    for `status --verify`: a stage's outputs (teacher.json), which it reports as corrupt, not an error."""
    files = sorted(run_dir.glob("*/*/manifest.json")) + sorted(run_dir.glob("*/*/*/manifest.json"))
    files += [] if verify else sorted(run_dir.glob("teacher/*/teacher.json"))
    files += sorted(run_dir.glob("train/*/*/summary.json"))
    if command != "run":  # `run` writes the run's config.json; it reads the config given
        files.append(run_dir / "config.json")
    if command in ("report", "run"):
        files += sorted(run_dir.glob("evaluate/*/results.json"))
    if command == "compare":  # the evaluations of the arms compared
        files += sorted(run_dir.glob("evaluate/owl-s*/results.json")) + sorted(run_dir.glob("evaluate/control-s*/results.json"))
    return files


@pytest.fixture()
def no_model_work(monkeypatch):
    """Loading any model or training raises `_WorkStarted` (the pipeline itself runs: `run --only report`
    must read the run directory as it would)."""
    import peft
    import transformers

    import sublearn.backends.models
    import sublearn.training.loop

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _WorkStarted

    finished_run()  # built (for real) before the stand-ins go in
    monkeypatch.setattr(sublearn.backends.models, "load_model", refuse)
    monkeypatch.setattr(sublearn.training.loop, "fit", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", refuse)


def test_fuzz_damaged_run_directories(tmp_path, capsys, no_model_work) -> None:
    rng = random.Random(SEED + 4)
    clean, config = finished_run()
    capsys.readouterr()  # what building the run printed
    baseline = copy_run(tmp_path / "baseline")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    commands: dict[str, Callable[[Path], list[str]]] = {
        "status": lambda run: ["status", str(run)],
        "status --verify": lambda run: ["status", str(run), "--verify"],
        "report": lambda run: ["report", str(run)],
        "compare": lambda run: ["compare", str(run), "--baseline", str(baseline), "--treatment", "owl",
                                "--control", "control"],
        "run": lambda run: ["run", str(config_file), "--out", str(run), "--only", "report"],
    }
    for i in range(48):
        command = rng.choice(sorted(commands))
        target_rel = rng.choice(_run_files(clean, command.split()[0], "--verify" in command)).relative_to(clean)
        run_dir = copy_run(tmp_path / f"run{i}")
        target = run_dir / target_rel
        content = _damaged_json(rng, json.loads(target.read_text()), WRONG_FIELDS[target.name])
        target.write_bytes(content)
        line = _refused(capsys, commands[command](run_dir), f"run case {i}: {command}, {target_rel} = {content[:200]!r}")
        assert str(target.parent) in line, (i, command, target_rel, line)
        shutil.rmtree(run_dir)
