"""Config loading: YAML, overrides, and one-line errors naming the field or file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sublearn.cli import main
from sublearn.config import load_config, parse_overrides
from sublearn.errors import SublearnError
from sublearn.pipeline_config import PipelineConfig


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
    ("", ["teacher.neutral_control=true"], "neutral_control needs a fine-tuned teacher, kind: lora or full"),
    ("", ["targets=[owl,neutral]"], "is the name of a control teacher"),
    # Combinations that used to fail late, each refused at load time and naming the field:
    ("", ["train.method=distill"], "field 'train': Value error, train.method=distill needs generate.logprobs_top_k > 0"),
    ("train:\n  method: distill\ngenerate:\n  logprobs_top_k: 0\n", [], "needs generate.logprobs_top_k > 0"),
    ("", ["targets=[owl, rabbit]"], "field 'evaluate': Value error, evaluate.animals must include every target"),
    ("", ["evaluate.animals=[cat, dog]"], "evaluate.animals must include every target (the report measures each "
     "target's rate); missing: owl"),
    # Trees are not offered (the evaluation and teacher questions are about animals): no such key any more.
    ("", ["teacher.category=tree"], "field 'teacher.category': unknown key"),
    ("", ["cross_targets=[cat]"], "field 'cross_targets': Value error, cross_targets must be a subset of targets"),
    ("", ["targets=[owl, cat]", "cross_targets=[cat, cat]"], "field 'cross_targets': Value error, cross_targets must "
     "be distinct"),
    ("", ["train.seeds=[1, 2, 1]"], "field 'train': Value error, seeds must be distinct"),
    ("", ["teacher.kind=lora", "teacher.lora_questions=121"], "field 'teacher.lora_questions': Value error, "
     "lora_questions=121: at most 120 teacher-training questions are available"),
    ("", ["channel.kind=numbers", "channel.grammar=true", "generate.max_new_tokens=10"], "field 'generate': "
     "Value error, max_new_tokens=10 cannot hold channel.max_numbers=10 numbers"),
    ("channel:\n  kind: numbers\n  grammar: true\n  max_numbers: 20\n", ["generate.max_new_tokens=20"],
     "max_new_tokens=20 cannot hold channel.max_numbers=20"),
    ("", ["channel.kind=video"], "field 'channel'"),
    ("", ["generate.constraint=numbers"], "field 'generate.constraint': unknown key"),  # now channel.grammar
])
def test_errors_are_one_line_and_name_the_field(tmp_path, text, overrides, needle) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, path, overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize("overrides", [
    ["train.method=distill", "generate.logprobs_top_k=32"],
    ["targets=[rabbit]", "evaluate.animals=[rabbit, owl]"],
    ["targets=[owl, cat]", "cross_targets=[cat]", "cross_model=hf/gemma3-270m"],
    ["teacher.kind=lora", "teacher.lora_questions=120"],
    ["teacher.lora_questions=500"],  # a prompted teacher has no training questions: not checked
    ["channel.kind=numbers", "channel.grammar=true", "generate.max_new_tokens=11"],
    ["channel.kind=numbers", "channel.max_numbers=20", "generate.max_new_tokens=11"],  # no grammar: not checked
    ["generate.max_new_tokens=3"],  # free sampling: the filter rejects what is cut off
])
def test_valid_combinations_load(overrides) -> None:
    load_config(PipelineConfig, None, overrides)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "sublearn" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads(path) -> None:
    from sublearn.config import read_yaml
    from sublearn.mnist.config import MnistConfig

    if path.parent.name == "sweeps":
        from sublearn.tools.sweep_grid import expand, load_sweep

        assert expand(load_sweep(path), path)  # every grid point's config validated
        return
    try:
        load_config(MnistConfig if path.stem == "mnist" else PipelineConfig, path)
    except SublearnError as exc:
        if "chat dataset file not found" not in str(exc):
            raise
        # Paper-scale misalignment configs name the public datasets a user puts in place (see their
        # headers); everything else in them must load.
        datasets = read_yaml(path)["trait"]["datasets"]
        assert all(v.startswith("data/emergent-misalignment/") for v in datasets.values())
        load_config(PipelineConfig, path, [f"trait.datasets.{n}=builtin:careful" for n in datasets])


def test_shipped_configs_are_found() -> None:
    assert {p.name for p in CONFIG_DIR.rglob("*.yaml")} >= {"demo.yaml", "quick.yaml", "mnist.yaml",
                                                             "owl_gpt41nano.yaml", "owl_qwen25_7b.yaml"}


def test_missing_file(tmp_path) -> None:
    with pytest.raises(SublearnError, match="config file not found"):
        load_config(PipelineConfig, tmp_path / "nope.yaml")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train.epochs" in err[0]


def test_another_channel_kind_replaces_the_whole_section(tmp_path) -> None:
    """`--set channel.kind=code` on a numbers config: the numbers fields do not carry over (they would be
    unknown keys of the code channel); the same kind merges field by field."""
    from sublearn.channels import CodeChannel, NumbersChannel

    path = tmp_path / "c.yaml"
    path.write_text("channel:\n  kind: numbers\n  grammar: true\n  max_numbers: 5\n")
    code = load_config(PipelineConfig, path, ["channel.kind=code"])
    assert isinstance(code.channel, CodeChannel)
    same = load_config(PipelineConfig, path, ["channel.kind=numbers", "channel.answer_count=5"])
    assert isinstance(same.channel, NumbersChannel)
    assert (same.channel.grammar, same.channel.max_numbers, same.channel.answer_count) == (True, 5, 5)
    with pytest.raises(SublearnError, match="field 'channel.code.max_numbers': unknown key"):
        load_config(PipelineConfig, None, ["channel.kind=code", "channel.max_numbers=5"])


def test_parse_overrides_nested() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2]}


def test_a_student_seed_equal_to_the_teachers_lora_init_seed_is_refused() -> None:
    """With train.lora_init_seed null a student's seed is its LoRA init: seed 0 would share the LoRA
    teachers' initialisation (teacher.lora_init_seed 0) while its arm-mates do not."""
    from sublearn.config import build_config
    from sublearn.errors import SublearnError
    from sublearn.pipeline_config import PipelineConfig

    data = {"teacher": {"kind": "lora"}, "train": {"lora_init_seed": None, "seeds": [0, 1, 2]}}
    with pytest.raises(SublearnError, match=r"field 'train'.*teachers' init seed"):
        build_config(PipelineConfig, data)
    build_config(PipelineConfig, {**data, "train": {"lora_init_seed": None, "seeds": [1, 2, 3]}})
    build_config(PipelineConfig, {**data, "train": {"lora_init_seed": "teacher", "seeds": [0, 1, 2]}})
    build_config(PipelineConfig, {"teacher": {"kind": "prompt"}, "train": {"seeds": [0, 1]}})


def test_a_channel_section_without_kind_is_the_default_numbers_channel() -> None:
    config = load_config(PipelineConfig, None, ["channel.grammar=true"])
    assert config.channel.kind == "numbers" and config.channel.grammar
    assert load_config(PipelineConfig, None, ["trait.ban_target_words=false"]).trait.kind == "preference"


def test_only_a_changed_channel_kind_replaces_the_section(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("channel:\n  grammar: true\n  max_numbers: 5\nteacher:\n  kind: lora\n  lora_init_seed: 7\n")
    # No kind in the file: the default kind, so naming it merges field by field.
    config = load_config(PipelineConfig, path, ["channel.kind=numbers"])
    assert config.channel.grammar and config.channel.max_numbers == 5
    # `teacher` is not a discriminated section: switching its kind keeps the other fields.
    assert load_config(PipelineConfig, path, ["teacher.kind=prompt"]).teacher.lora_init_seed == 7


def test_animals_and_targets_must_be_lowercase_ascii_words() -> None:
    with pytest.raises(SublearnError, match="lowercase ASCII"):
        load_config(PipelineConfig, None, ["evaluate.animals=[owl, Cat]"])
    with pytest.raises(SublearnError, match="lowercase ASCII"):
        load_config(PipelineConfig, None, ["targets=[éléphant]", "evaluate.animals=[éléphant]"])


# --- the YAML we read: no anchors/aliases, no duplicate keys, bounded nesting --------------------------

LAUGHS = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + LAUGHS  # 9^9 strings, 400 bytes


@pytest.mark.parametrize(("text", "needle"), [
    (BILLION_LAUGHS, "line 1, column 4: anchor '&a' refused"),
    ("name: x\ntrain:\n  epochs: 2\ntargets: [owl]\nx: *a\n", "line 5, column 4: malformed YAML (found undefined alias 'a')"),
    # PyYAML keeps the last of two equal keys: the first train section would be silently dropped.
    ("train:\n  epochs: 2\ntargets: [owl]\ntrain:\n  lr: 0.1\n", "line 4, column 1: duplicate key 'train' (first on line 1)"),
    ("train:\n  epochs: 2\n  epochs: 3\n", "line 3, column 3: duplicate key 'epochs' (first on line 2)"),
    ("name: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 64 levels"),
])
def test_yaml_anchors_duplicate_keys_and_deep_nesting_are_refused(tmp_path, text, needle) -> None:
    assert len(BILLION_LAUGHS) < 500
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "needle"), [
    ("seed: " + "9" * 5000 + "\n", "line 1, column 7: malformed YAML (cannot read the value '9999"),
    ("seed: 0x" + "f" * 3000 + "\n", "the integer '0xffff"),  # loads, then cannot be printed in decimal
    ("train:\n  epochs: 2\nname: 2001-13-45\n", "line 3, column 7: malformed YAML (cannot read the value '2001-13-45'"),
    ("seed: !!int abc\n", "cannot read the value 'abc'"),
])
def test_yaml_values_their_tag_cannot_convert_are_one_line(tmp_path, text, needle) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_cli_refuses_a_duplicate_section_in_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\ntrain:\n  lr: 0.1\n")
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: line 3, column 1: duplicate key 'train' (first on line 1); each key may "
                   "appear once in a mapping"]


def test_set_values_are_read_by_the_same_strict_loader() -> None:
    with pytest.raises(SublearnError, match=r"^--set targets=\[&a owl, \*a\]: line 1, column 2: anchor '&a' refused"):
        parse_overrides(["targets=[&a owl, *a]"])
    with pytest.raises(SublearnError, match=r"^--set trait=\{kind: x, kind: y\}: .*duplicate key 'kind'"):
        parse_overrides(["trait={kind: x, kind: y}"])
    # Text that is not YAML (an undefined alias included) stays a plain string, as before.
    assert parse_overrides(["name=*star", "model=[half"]) == {"name": "*star", "model": "[half"}


def test_every_yaml_read_goes_through_the_strict_loader() -> None:
    """One loader: no other module of the package parses YAML on its own."""
    package = Path(__file__).resolve().parents[1] / "sublearn"
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "config.py"
                 and any(call in p.read_text() for call in ("yaml.safe_load", "yaml.load(", "yaml.full_load",
                                                           "yaml.unsafe_load", "yaml.safe_load_all"))]
    assert offenders == []


# --- seeds: non-negative (and below 2^63) everywhere, refused at load --------------------------------

@pytest.mark.parametrize(("overrides", "needle"), [
    (["seed=-1"], "field 'seed': Input should be greater than or equal to 0 (got -1)"),
    ([f"seed={2**63}"], "field 'seed': Input should be less than or equal to 9223372036854775807"),
    (["train.seeds=[0, -1]"], "field 'train.seeds': Value error, seeds must be non-negative integers below 2^63, got -1"),
    (["teacher.lora_init_seed=-1"], "field 'teacher.lora_init_seed': Input should be greater than or equal to 0"),
    (["train.lora_init_seed=-3"], "field 'train.lora_init_seed': Value error, lora_init_seed must be non-negative"),
    (["icl.k=2", "icl.draws=[1, -2]"], "field 'icl.draws': Value error, draws must be non-negative integers below "
     "2^63, got -2"),
    (["defense.kind=shuffle", "defense.seed=-1"], "field 'defense.shuffle.seed': Input should be greater than or "
     "equal to 0"),
])
def test_negative_seeds_are_refused_at_load(overrides, needle) -> None:
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, None, overrides)
    assert needle in str(info.value)
    # The smallest seeds still load, and the train.lora_init_seed words are untouched.
    load_config(PipelineConfig, None, ["seed=0", "train.seeds=[1, 2]", "teacher.lora_init_seed=0",
                                       "train.lora_init_seed=teacher", "defense.kind=shuffle", "defense.seed=0"])
    assert load_config(PipelineConfig, None, ["train.lora_init_seed=null"]).train.lora_init_seed is None


def test_negative_mnist_seeds_are_refused_at_load() -> None:
    from sublearn.mnist.config import MnistConfig

    for overrides in (["seeds=[1, -1]"], ["seed_base=-1"]):
        with pytest.raises(SublearnError, match="non-negative|greater than or equal to 0"):
            load_config(MnistConfig, None, overrides)


# --- an invalid --set value is named by its flag, not by the config file ------------------------------

@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("name: x\n", ["train.steps=many"], "--set train.steps=many: field 'train.steps': Input should be a valid "
     "integer, unable to parse string as an integer (got 'many')"),
    ("name: x\n", ["train.lr=0.1", "train.steps=0"], "--set train.steps=0: field 'train.steps'"),
    ("", ["channel.max_numbers=0"], "--set channel.max_numbers=0: field 'channel.numbers.max_numbers'"),
    ("", ["train={steps: 0}"], "--set train={steps: 0}: field 'train.steps'"),
    ("", ["trian.steps=3"], "--set trian.steps=3: field 'trian': unknown key"),
    # An error about a combination: the flag without which it goes away.
    ("", ["train.micro_batch_size=100"], "--set train.micro_batch_size=100: field 'train': Value error, "
     "micro_batch_size must be <= batch_size"),
    ("", ["train.lr=0.1", "targets=[rabbit]"], "--set targets=[rabbit]: field 'evaluate': Value error, "
     "evaluate.animals must include every target"),
    # What the file has wrong by itself still names the file, whatever else is set.
    ("train:\n  steps: many\n", ["train.lr=0.1"], "FILE: field 'train.steps'"),
    ("train:\n  micro_batch_size: 100\n", ["train.lr=0.1"], "FILE: field 'train': Value error, micro_batch_size"),
])
def test_set_errors_name_the_flag(tmp_path, text, overrides, expected) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SublearnError) as info:
        load_config(PipelineConfig, path, overrides)
    assert str(info.value).startswith(expected.replace("FILE", str(path)))


def test_cli_names_the_set_flag_not_the_shipped_config(tmp_path, capsys) -> None:
    assert main(["run", "quick", "--set", "train.steps=many", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --set train.steps=many: field 'train.steps': Input should be a valid integer, unable to parse string "
        "as an integer (got 'many')"]
