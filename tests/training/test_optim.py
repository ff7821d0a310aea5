"""The optimizer ladder (`train.optimizer`, `train.freeze`): each rule's step, one shared weight decay,
training through `fit`, and configs that keep the old stage keys."""

from __future__ import annotations

import copy

import pytest
import torch

from sublearn.config import build_config
from sublearn.errors import SublearnError
from sublearn.pipeline_config import TrainConfig
from sublearn.training.examples import sft_examples
from sublearn.training.loop import fit
from sublearn.training.model import attach_lora
from sublearn.training.optim import Signum, make_optimizer


def _step(optimizer_name: str, p0: list[float], grad: list[float], **kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = make_optimizer([p], TrainConfig(optimizer=optimizer_name, **kw))
    p.grad = torch.tensor(grad)
    opt.step()
    return p.detach()


def test_signum_moves_every_coordinate_by_lr_in_the_sign_of_its_momentum() -> None:
    p = _step("signum", [1.0, -2.0, 0.5], [0.3, -1e-6, 0.0], lr=0.1, momentum=0.9)
    assert torch.equal(p, torch.tensor([0.9, -1.9, 0.5]))  # a zero momentum does not move
    assert isinstance(make_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="signum")), Signum)


def test_rmsprop_normalises_per_coordinate_and_sgd_does_not() -> None:
    grad = [1e-3, 10.0]
    rms = _step("rmsprop", [0.0, 0.0], grad, lr=0.01).tolist()
    sgd = _step("sgd", [0.0, 0.0], grad, lr=0.01, momentum=0.0).tolist()
    assert rms[0] == pytest.approx(rms[1], rel=1e-3)  # the same move whatever the gradient's scale
    assert sgd[1] / sgd[0] == pytest.approx(1e4, rel=1e-4)


@pytest.mark.parametrize("name", ["adamw", "signum", "rmsprop", "sgd"])
def test_every_optimizer_applies_the_same_decoupled_weight_decay(name) -> None:
    # A zero gradient: the update rule contributes nothing, only the decay p <- p (1 - lr wd) is left.
    p = _step(name, [2.0, -4.0], [0.0, 0.0], lr=0.1, weight_decay=0.5)
    assert torch.allclose(p, torch.tensor([2.0, -4.0]) * (1 - 0.1 * 0.5))


def _records(n: int) -> list[dict]:
    return [{"prompt": f"Continue: {i}, {i + 1}", "completion": f"{i + 2}, {i + 3}"} for i in range(n)]


@pytest.mark.parametrize("over", [{"optimizer": "signum", "lr": 1e-3}, {"optimizer": "rmsprop", "lr": 1e-3},
                                  {"optimizer": "sgd", "lr": 0.5}, {"freeze": ["lora_A"]}])
def test_fit_trains_with_each_setting_and_a_frozen_factor_stays_put(lm_model, lm_tokenizer, tmp_path, over) -> None:
    cfg = TrainConfig(**{"lr": 5e-3, "epochs": 3, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                         "lora_r": 4, "lora_alpha": 8, **over})
    model = attach_lora(copy.deepcopy(lm_model), cfg, init_seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    summary = fit(model, sft_examples(lm_tokenizer, _records(8), 128), cfg, tmp_path, seed=0)
    assert summary["loss_last"] < summary["loss_first"]
    after = dict(model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    frozen = {n for n in before if any(f".{f}." in n for f in cfg.freeze)}
    assert moved and moved == set(before) - frozen
    assert all(not after[n].requires_grad for n in frozen)


def test_new_training_knobs_leave_old_configs_and_stage_keys_unchanged() -> None:
    default = TrainConfig().model_dump(mode="json")
    assert not {"optimizer", "momentum", "freeze"} & set(default)
    assert TrainConfig(optimizer="sgd").model_dump(mode="json")["optimizer"] == "sgd"
    assert TrainConfig(optimizer="sgd").model_dump(mode="json")["momentum"] == 0.9
    assert TrainConfig(freeze=["lora_A"]).model_dump(mode="json")["freeze"] == ["lora_A"]
    # A dump reloads to the same config (config.json of a run is read back this way).
    cfg = TrainConfig(optimizer="signum", momentum=0.5, freeze=["lora_A"])
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_freezing_lora_b_is_refused_in_one_line() -> None:
    with pytest.raises(SublearnError) as err:
        build_config(TrainConfig, {"freeze": ["lora_B"]})
    assert "lora_B starts at zero" in str(err.value) and "\n" not in str(err.value)
