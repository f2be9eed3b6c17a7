"""``registry.options``: every registered builder lists its options with defaults, and an unknown one is refused."""
import inspect

import pytest
import torch

from seglab import models
from seglab.models import registry


@pytest.mark.parametrize("name", models.names())
def test_every_model_lists_its_options_with_defaults_and_refuses_unknown_ones(name):
    options = registry.options(name)
    assert options and "num_classes" not in options
    assert all(default is not inspect.Parameter.empty for default in options.values()), options
    assert list(options) == [n for n in inspect.signature(registry.entry(name).builder).parameters if n in options]
    with torch.device("meta"), pytest.raises(ValueError, match="does not take that option"):
        models.create(name, 3, no_such_option=1)


def test_options_are_the_paper_defaults_of_the_forwarded_functions():
    assert registry.options("fcn8s_vgg16")["width_mult"] == 1.0
    assert registry.options("deeplabv2_resnet101")["aspp_rates"] == (6, 12, 18, 24)
    mask_x = registry.options("maskxrcnn_resnet50_fpn")
    assert mask_x["transfer_input"] == "cls+box" and mask_x["min_size"] == 800 and mask_x["bn_eps"] is None
    assert "mask_predictor" not in mask_x and "box_roi_pool" not in registry.options("maskrcnn_resnet50_fpn")
    fcis = registry.options("fcis_resnet101")
    assert fcis["output_stride"] == 16 and fcis["box_nms_thresh"] == 0.3 and fcis["min_size"] == 600
