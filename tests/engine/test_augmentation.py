"""--color-jitter and --rotate (issue 16 point 3): config checks, a run from the command line, exact resume."""
import pytest
import torch
import yaml

from seglab.cli import main
from seglab.engine.config import TrainConfig
from seglab.engine.train import train
from seglab.io import safe_load as load_checkpoint

AUGMENT = dict(color_jitter=[0.2, 0.2, 0.2, 0.05], rotate=15.0)


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="fcn8s_vgg16", width_mult=0.0625, batch_norm=True, model_options={"padding": "same"},
                  data="shapes", image_size=32, num_train=6, num_val=2, batch_size=2, iters=4, log_every=1,
                  ckpt_every=2, val_split=None, out=str(tmp_path / "run"), **AUGMENT)
    return TrainConfig(**(values | overrides))


@pytest.mark.parametrize("values, message", [
    (dict(color_jitter=[0.4, 0.4, 0.4]), r"^color_jitter must be 4 non-negative numbers .* got \[0\.4, 0\.4, 0\.4\]$"),
    (dict(color_jitter=[0.4, -0.1, 0.4, 0.1]), r"^color_jitter must be a list of numbers, each a non-negative number, "
                                               r"got \[0\.4, -0\.1, 0\.4, 0\.1\]$"),
    (dict(color_jitter=[0.4, 0.4, 0.4, 0.6]), r"^color_jitter must .* hue <= 0\.5, got \[0\.4, 0\.4, 0\.4, 0\.6\]$"),
    (dict(color_jitter=["a", 1, 1, 1]), r"^color_jitter must be a list of numbers, .* got \['a', 1, 1, 1\]$"),
    (dict(rotate=-5.0), r"^rotate must be a non-negative number, got -5\.0$"),
])
def test_bad_augmentation_options_are_one_line_errors_naming_the_option_and_value(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)
    assert TrainConfig(color_jitter=["0.4", 0, 0, "0.5"]).color_jitter == [0.4, 0.0, 0.0, 0.5]


def test_training_from_the_command_line_with_color_jitter_and_rotation(tmp_path):
    run = tmp_path / "run"
    main(["train", "--model", "fcn8s_vgg16", "--width-mult", "0.0625", "--model-option", "padding=same",
          "--data", "shapes", "--image-size", "32", "--num-train", "4", "--num-val", "2", "--batch-size", "2",
          "--iters", "2", "--color-jitter", "0.2", "0.2", "0.2", "0.05", "--rotate", "15", "--device", "cpu",
          "--out", str(run)])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["color_jitter"] == [0.2, 0.2, 0.2, 0.05] and saved["rotate"] == 15.0
    assert load_checkpoint(run / "last.pt")["step"] == 2


def test_resume_with_augmentation_gives_the_same_weights_as_training_straight(tmp_path):
    train(tiny_config(tmp_path, out=str(tmp_path / "straight")))
    train(tiny_config(tmp_path, out=str(tmp_path / "resumed"), stop_at=2))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 2
    train(tiny_config(tmp_path, out=str(tmp_path / "resumed"), resume=True))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
