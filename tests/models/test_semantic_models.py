"""Checks every registered semantic model passes, in three lines per model: forward on odd sizes,
gradients to every parameter, and a falling loss when trained through the engine on Shapes."""
import json

import pytest
import torch

from seglab import models
from seglab.engine.config import TrainConfig
from seglab.engine.train import train

TINY = {"width_mult": 0.0625}
# VGG models train from scratch here: BatchNorm and the cheap padding keep the smoke test short.
OPTIONS = {"fcn8s_vgg16": TINY | {"batch_norm": True, "padding": "same"},
           "fcn16s_vgg16": TINY | {"batch_norm": True, "padding": "same"},
           "fcn32s_vgg16": TINY | {"batch_norm": True, "padding": "same"}}
SEMANTIC = models.names("semantic")


def tiny(name):
    return OPTIONS.get(name, TINY | ({"batch_norm": True} if "vgg" in name else {}))


@pytest.mark.parametrize("name", SEMANTIC)
def test_output_has_input_size_for_odd_sizes(name):
    model = models.create(name, num_classes=3, **tiny(name)).eval()
    with torch.no_grad():
        for size in [(33, 47), (64, 51)]:
            out = model(torch.randn(2, 3, *size))
            assert out["out"].shape == (2, 3, *size)


@pytest.mark.parametrize("name", SEMANTIC)
def test_backward_reaches_every_parameter(name):
    model = models.create(name, num_classes=3, **tiny(name)).train()
    out = model(torch.randn(2, 3, 40, 40))["out"]
    out.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("name", SEMANTIC)
def test_loss_falls_when_trained_through_the_engine(name, tmp_path):
    options = tiny(name)
    config = TrainConfig(model=name, width_mult=options.pop("width_mult"), batch_norm=options.pop("batch_norm", None),
                         model_options=options, data="shapes", image_size=48, num_train=4, batch_size=4, iters=12,
                         optimizer="adamw", lr=3e-3, scale_range=(1.0, 1.0), hflip=False, val_split=None,
                         log_every=1, out=str(tmp_path / "run"))
    train(config)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) < sum(losses[:3])
