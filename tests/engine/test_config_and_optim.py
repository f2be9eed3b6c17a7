import math

import pytest
import torch

from seglab.engine.config import TrainConfig, load_config, save_config
from seglab.engine.optim import build_optimizer, build_scheduler, lr_factor


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\nbatch_size: 4\nmodel_options: {padding: same}\nscale_range: [0.8, 1.2]\n")
    config = load_config(path, {"lr": 0.1})
    assert config.lr == 0.1 and config.batch_size == 4 and config.iters == TrainConfig().iters
    assert config.model_options == {"padding": "same"} and config.scale_range == (0.8, 1.2)
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_an_explicit_none_sets_the_option_as_null_in_the_file_does(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("val_split: train\nnum_classes: 3\n")
    config = load_config(path, {"val_split": None, "num_classes": None})
    assert config.val_split is None and config.num_classes is None


def test_model_option_flags_merge_with_the_yaml_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_options: {fpn_channels: 128, mask_layers: [64, 64]}\n")
    config = load_config(path, {"model_options": {"mask_layers": [32]}})
    assert config.model_options == {"fpn_channels": 128, "mask_layers": [32]}


def test_unknown_config_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(path)


@pytest.mark.parametrize("schedule", ["poly", "cosine", "step"])
def test_schedules_follow_their_formulas(schedule):
    config = TrainConfig(schedule=schedule, warmup=10, lr=1.0)
    total = 110
    assert lr_factor(0, total, config) == pytest.approx(0.1)
    assert lr_factor(9, total, config) == pytest.approx(1.0)
    t = 50 / 100
    expected = {"poly": (1 - t) ** 0.9, "cosine": 0.5 * (1 + math.cos(math.pi * t)), "step": 0.1 ** (50 // 36)}
    assert lr_factor(60, total, config) == pytest.approx(expected[schedule])


def test_scheduler_and_optimizer_follow_the_factor():
    model = torch.nn.Linear(3, 2)
    config = TrainConfig(schedule="poly", lr=0.2, optimizer="sgd")
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, 20, config)
    for step in range(5):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor(step, 20, config))
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # biases are not decayed
    with pytest.raises(ValueError, match="adam"):
        build_optimizer(model, TrainConfig(optimizer="adam"))


def test_lr_mult_of_a_module_scales_its_parameters_rate_and_follows_the_schedule():
    """A module's ``lr_mult`` (the innermost wins) puts its weights and biases in groups at that multiple of the
    rate, still scheduled; everything else keeps the base rate in groups 0 and 1."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    model[1].lr_mult, model[1][1].lr_mult = 3.0, 0.5
    config = TrainConfig(schedule="poly", lr=0.2, optimizer="sgd", weight_decay=1e-4)
    optimizer = build_optimizer(model, config)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(model[0].weight)] == rates[id(model[0].bias)] == pytest.approx(0.2)
    assert rates[id(model[1][0].weight)] == rates[id(model[1][0].bias)] == pytest.approx(0.6)
    assert rates[id(model[1][1].weight)] == rates[id(model[1][1].bias)] == pytest.approx(0.1)
    assert [value for g in optimizer.param_groups for value in (g["lr"], g["weight_decay"])] == pytest.approx(
        [0.2, 1e-4, 0.2, 0.0, 0.1, 1e-4, 0.6, 1e-4, 0.1, 0.0, 0.6, 0.0])
    scheduler = build_scheduler(optimizer, 20, config)
    optimizer.step()
    scheduler.step()
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(model[1][0].weight)] == pytest.approx(0.6 * lr_factor(1, 20, config))
