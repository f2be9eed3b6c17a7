"""ImageNet initialisation by weight name (``weights_backbone="IMAGENET1K_V1"``) for the models torchvision does not
publish, done as each paper's released code did: FCN's fc6/fc7 reshaped, DeepLab-LargeFOV's fc6/fc7 decimated, the
dilation front-end's layers as they are, the ResNet models' backbones.

No network: torchvision's weights API reads ``$TORCH_HOME/hub/checkpoints/<file>`` when it exists, so each module
fixture plants seeded random torchvision state dicts there once, under the exact file names of the enum members.
"""
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from seglab import hub, models
from seglab.models.deeplab import decimate_vgg16_fc

KEPT_TAPS = (0, 3, 6)  # every third tap of VGG16's 7×7 fc6


def random_state(arch: str, seed: int) -> dict:
    """A torchvision ``arch`` state dict of seeded random values (running variances positive, counters zero)."""
    with torch.device("meta"):
        shapes = getattr(torchvision.models, arch)(weights=None).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in shapes.items():
        if not meta.is_floating_point():
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif key.endswith("running_var"):
            state[key] = torch.rand(meta.shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(meta.shape, generator=generator) * 0.05
    return state


def plant(state: dict, arch: str, name: str) -> str:
    """Save ``state`` where torch's hub cache keeps torchvision's ``arch`` weights ``name``; returns the path."""
    path = hub.cache_path(hub.weights(arch, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        yield


@pytest.fixture(scope="module")
def vgg16(torch_home):
    """The planted ``vgg16`` IMAGENET1K_V1 state dict and its path, plus IMAGENET1K_FEATURES: the same features with
    an all-NaN classifier of the real shapes, as torchvision publishes it (stored as expanded views: small files)."""
    state = random_state("vgg16", seed=0)
    path = plant(state, "vgg16", "IMAGENET1K_V1")
    nan_classifier = {k: torch.tensor(float("nan")).expand(v.shape) for k, v in state.items()
                      if k.startswith("classifier.")}
    plant({**{k: v for k, v in state.items() if k.startswith("features.")}, **nan_classifier},
          "vgg16", "IMAGENET1K_FEATURES")
    return state, path


@pytest.fixture(scope="module")
def resnet(torch_home):
    """The planted ``resnet50`` and ``resnet101`` IMAGENET1K_V1 state dicts, by depth."""
    states = {depth: random_state(f"resnet{depth}", seed=depth) for depth in (50, 101)}
    for depth, state in states.items():
        plant(state, f"resnet{depth}", "IMAGENET1K_V1")
    return states


def assert_vgg16_convs_loaded(features, state):
    for index in (0, 14, 28):  # conv1_1, conv3_3, conv5_3
        assert torch.equal(features[index].weight, state[f"features.{index}.weight"])
        assert torch.equal(features[index].bias, state[f"features.{index}.bias"])


def test_fcn8s_by_weight_name_holds_vgg16s_convs_and_its_fc_layers_as_equivalent_convolutions(vgg16):
    state, _ = vgg16
    model = models.create("fcn8s_vgg16", 21, weights_backbone="IMAGENET1K_V1")
    assert_vgg16_convs_loaded(model.backbone.features, state)
    fc6, fc7 = model.backbone.classifier[0], model.backbone.classifier[3]
    assert torch.equal(fc7.weight.flatten(1), state["classifier.3.weight"])
    assert torch.equal(fc7.bias, state["classifier.3.bias"]) and torch.equal(fc6.bias, state["classifier.0.bias"])
    # fc6 as a valid 7×7 convolution over a pool5 window is torchvision's Linear on that window flattened (C, H, W).
    window = torch.randn(2, 512, 7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    linear = window.flatten(1) @ state["classifier.0.weight"].double().T + state["classifier.0.bias"].double()
    conv = F.conv2d(window, fc6.weight.double(), fc6.bias.double())
    torch.testing.assert_close(conv.flatten(1), linear, rtol=1e-10, atol=1e-10)
    assert not model.score_fr.weight.any()  # FCN's scoring layers start at zero (§4.1), untouched by the weights


@pytest.mark.parametrize("source", ["IMAGENET1K_V1", "path"])
def test_deeplabv1_fc6_sees_vgg16s_every_third_tap_at_rate_12_with_every_fourth_filter(vgg16, source):
    state, path = vgg16
    model = models.create("deeplabv1_vgg16", 21, weights_backbone=path if source == "path" else source)
    assert_vgg16_convs_loaded(model.backbone.features, state)
    fc6 = model.classifier.fc6[0]
    assert fc6.dilation == (12, 12) and fc6.weight.shape == (1024, 512, 3, 3)
    # Float64 re-computation from torchvision's Linear fc6 (4096, 512·7·7): in the stride-8 atrous net, VGG16's
    # pool5 pixels are 4 apart, so its tap (i, j) of the 7×7 window sits at offset (4(i−3), 4(j−3)); LargeFOV's
    # filter k is VGG16's filter 4k restricted to the taps i, j ∈ {0, 3, 6}.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 25, 25))
    linear = state["classifier.0.weight"].double().numpy().reshape(4096, 512, 7, 7)
    bias = state["classifier.0.bias"].double().numpy()
    filters = [0, 1, 511, 1023]
    expected = np.array([bias[4 * k] + sum(linear[4 * k, :, i, j] @ x[:, 12 + 4 * (i - 3), 12 + 4 * (j - 3)]
                                           for i in KEPT_TAPS for j in KEPT_TAPS) for k in filters])
    with torch.no_grad():
        response = F.conv2d(torch.from_numpy(x)[None], fc6.weight.double(), fc6.bias.double(), dilation=12)
    np.testing.assert_allclose(response[0, filters, 0, 0].numpy(), expected, rtol=1e-9, atol=1e-9)
    # fc7: filter k reads the kept fc6 filters m, with VGG16's fc7 weight of filter 4k on fc6 filter 4m.
    fc7, vgg_fc7 = model.classifier.fc7[0], state["classifier.3.weight"].double().numpy()
    h = rng.standard_normal(1024)
    fc7_bias = state["classifier.3.bias"].double().numpy()
    expected = np.array([fc7_bias[4 * k] +
                         sum(vgg_fc7[4 * k, 4 * m] * h[m] for m in range(1024)) for k in filters])
    with torch.no_grad():
        response = F.conv2d(torch.from_numpy(h).reshape(1, 1024, 1, 1), fc7.weight.double(), fc7.bias.double())
    np.testing.assert_allclose(response.flatten()[filters].numpy(), expected, rtol=1e-9, atol=1e-9)


def test_decimate_vgg16_fc_picks_filter_4k_and_taps_0_3_6_of_a_numbered_kernel():
    # Each weight holds its own index: fc6[o, c, i, j] = 1000·o + 49·c + 7·i + j (two input channels suffice),
    # fc7[o, m] = 4096·o + m; exact in float64.
    o, c, i, j = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (4096, 2, 7, 7)), indexing="ij")
    fc7 = torch.arange(4096 * 4096, dtype=torch.float64).reshape(4096, 4096)
    state = {"classifier.0.weight": (1000 * o + 49 * c + 7 * i + j).reshape(4096, 98),
             "classifier.0.bias": torch.arange(4096.0), "classifier.3.weight": fc7,
             "classifier.3.bias": -torch.arange(4096.0)}
    (w6, b6), (w7, b7) = decimate_vgg16_fc(state)
    assert w6.shape == (1024, 2, 3, 3) and w7.shape == (1024, 1024, 1, 1)
    assert w6[5, 1, 2, 1].item() == 1000 * 20 + 49 + 7 * 6 + 3
    assert w6[1023, 0, 1, 2].item() == 1000 * 4092 + 7 * 3 + 6
    assert w7[3, 7, 0, 0].item() == 4096 * 12 + 28 and b6[3].item() == 12 and b7[1023].item() == -4092
    (w6, _), _ = decimate_vgg16_fc(state, width=2048, kernel=4)  # the paper's 4×4 variant: taps 0, 2, 4, 6
    assert w6.shape == (2048, 2, 4, 4) and w6[1, 0, 3, 1].item() == 1000 * 2 + 7 * 6 + 2
    assert decimate_vgg16_fc({k: v for k, v in state.items() if not k.startswith("classifier.3")}) is None
    with pytest.raises(ValueError, match="1000 must divide 4096"):
        decimate_vgg16_fc(state, width=1000)


def test_deeplabv1_with_imagenet1k_features_keeps_fresh_fc6_fc7_and_loads_the_convs(vgg16, caplog):
    state, _ = vgg16
    torch.manual_seed(3)
    fresh = models.create("deeplabv1_vgg16", 21)
    torch.manual_seed(3)
    with caplog.at_level(logging.INFO, logger="seglab"):
        model = models.create("deeplabv1_vgg16", 21, weights_backbone="IMAGENET1K_FEATURES")
    assert_vgg16_convs_loaded(model.backbone.features, state)
    for name in ("fc6", "fc7"):
        assert torch.equal(getattr(model.classifier, name)[0].weight, getattr(fresh.classifier, name)[0].weight)
    assert not torch.equal(model.classifier.fc6[0].weight[:, :, 0, 0],
                           state["classifier.0.weight"].reshape(4096, 512, 7, 7)[::4, :, 0, 0])
    assert "non-finite" in caplog.text


def test_deeplabv1_with_imagenet_weights_and_width_mult_fails_with_the_shape_error(vgg16):
    with pytest.raises(ValueError, match=r"does not fit the model: features\.0\.weight has shape"):
        models.create("deeplabv1_vgg16", 21, width_mult=0.5, weights_backbone="IMAGENET1K_V1")


def test_dilation_frontend_by_weight_name_holds_vgg16s_layers_as_they_are(vgg16):
    state, _ = vgg16
    torch.manual_seed(4)
    fresh = models.create("dilation_vgg16", 21)
    torch.manual_seed(4)
    model = models.create("dilation_vgg16", 21, weights_backbone="IMAGENET1K_V1")
    frontend = model.backbone
    assert_vgg16_convs_loaded(frontend.features, state)
    fc6, fc7 = frontend.classifier[0], frontend.classifier[3]
    assert fc6.dilation == (4, 4) and fc6.kernel_size == (7, 7)  # the reference's fc6: 7×7, 4096, dilation 4
    assert torch.equal(fc6.weight, state["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(fc7.weight.flatten(1), state["classifier.3.weight"])
    assert torch.equal(fc7.bias, state["classifier.3.bias"])
    # ``final`` and the context module keep their own initialisations (N(0, 0.001²); identity).
    assert torch.equal(model.classifier.final.weight, fresh.classifier.final.weight)
    assert all(torch.equal(a, b) for a, b in zip(model.classifier.context.state_dict().values(),
                                                 fresh.classifier.context.state_dict().values()))


@pytest.mark.parametrize("name,prefix", [("deeplabv3_resnet50", "backbone."), ("deeplabv3plus_resnet50", "backbone."),
                                         ("gcn_resnet50", "backbone."), ("fcis_resnet50", "backbone."),
                                         ("maskxrcnn_resnet50_fpn", "backbone.body."),
                                         ("deeplabv2_resnet101", "backbone.")])
def test_resnet_models_by_weight_name_hold_the_planted_imagenet_backbone(resnet, name, prefix):
    state = resnet[101 if "resnet101" in name else 50]
    loaded = models.create(name, 5, weights_backbone="IMAGENET1K_V1").state_dict()
    # conv1, layer4's last conv and the stem's BatchNorm statistics (frozen ones included: FCIS, Mask^X).
    for key in ("conv1.weight", "layer4.2.conv3.weight", "bn1.running_var", "layer4.2.bn3.bias"):
        assert torch.equal(loaded[prefix + key], state[key]), key
