"""Every shipped config loads and builds its model (on the meta device: full size, no memory)."""
from pathlib import Path

import pytest
import torch

from seglab import models
from seglab.engine.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_is_a_config_for_every_semantic_model():
    named = {load_config(path).model for path in CONFIGS}
    assert set(models.names("semantic")) <= named


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_builds_its_model(path):
    config = load_config(path)
    num_classes = config.num_classes or (5 if config.data == "shapes" else 21)
    with torch.device("meta"):
        model = models.create(config.model, num_classes, **config.model_kwargs())
    assert sum(p.numel() for p in model.parameters()) > 0
