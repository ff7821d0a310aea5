"""Config loading: YAML, overrides, and one-line errors naming the field or file."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sublearn.cli import main
from sublearn.config import load_config, parse_overrides
from sublearn.errors import SublearnError
from sublearn.lm.config import PipelineConfig


def test_defaults_follow_the_paper() -> None:
    c = PipelineConfig()
    assert (c.train.lora_r, c.train.lora_alpha, c.train.lr, c.train.epochs, c.train.batch_size) == (8, 8, 2e-4, 3, 66)
    assert c.train.max_grad_norm == 1.0 and c.train.warmup_steps == 5 and c.train.max_length == 500
    assert c.generate.n_prompts == 30_000 and c.filter.keep == 10_000 and c.generate.temperature == 1.0
    assert c.evaluate.n_questions == 50 and c.evaluate.samples_per_question == 100


def test_yaml_plus_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntargets: [owl, cat]\ntrain:\n  epochs: 2\n")
    c = load_config(PipelineConfig, path, ["train.lr=0.001", "generate.n_prompts=10", "targets=[dog]"])
    assert c.name == "x" and c.train.epochs == 2 and c.train.lr == 0.001
    assert c.generate.n_prompts == 10 and c.targets == ["dog"]
    with pytest.raises(ValidationError):  # frozen
        c.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "overrides", "needle"), [
    ("name: [unclosed\n", [], "malformed YAML"),
    ("- a\n- b\n", [], "expected a YAML mapping"),
    ("trian:\n  epochs: 2\n", [], "field 'trian': unknown key"),
    ("train:\n  epochs: many\n", [], "field 'train.epochs'"),
    ("", ["train.lr=-1"], "field 'train.lr'"),
    ("", ["targets=[Owl]"], "field 'targets'"),
    ("", ["nonsense"], "expected key=value"),
    ("", ["train.micro_batch_size=100"], "micro_batch_size must be <= batch_size"),
    ("", ["teacher.neutral_control=true"], "neutral_control needs kind: lora"),
    ("", ["targets=[owl,neutral]"], "is the name of a control teacher"),
])
def test_errors_are_one_line_and_name_the_field(tmp_path, text, overrides, needle) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, path, overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_missing_file(tmp_path) -> None:
    with pytest.raises(SublearnError, match="config file not found"):
        load_config(PipelineConfig, tmp_path / "nope.yaml")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train.epochs" in err[0]


def test_parse_overrides_nested() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2]}
