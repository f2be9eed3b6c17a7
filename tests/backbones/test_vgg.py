"""The atrous VGG16 variants: the layer stacks of their papers, their output geometry and torchvision weights."""
import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.backbones import VGG16, deeplab_vgg16_backbone, dilation_vgg16_frontend
from seglab.backbones.vgg import scaled

WIDTH = 0.0625
ODD_SIZES = [(33, 47), (65, 64), (41, 17), (96, 89)]


def torchvision_features(width_mult: float, batch_norm: bool) -> nn.Sequential:
    """torchvision's VGG16 ``features`` (configuration D) at a reduced width."""
    cfg = [v if v == "M" else scaled(v, width_mult) for v in
           (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")]
    return make_layers(cfg, batch_norm=batch_norm)


def rewire(features: nn.Sequential, pools, conv5_dilation: int) -> nn.Sequential:
    """A copy of ``features`` with its five 2×2 pools replaced by ``pools`` and conv5_x dilated ("same")."""
    layers = list(copy.deepcopy(features))
    indices = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    for i, pool in zip(indices, pools):
        layers[i] = pool
    for m in layers[indices[3] + 1:]:
        if isinstance(m, nn.Conv2d):
            m.dilation, m.padding = (conv5_dilation,) * 2, (conv5_dilation,) * 2
    return nn.Sequential(*layers)


def features_state(backbone: VGG16) -> dict:
    return {k.removeprefix("features."): v for k, v in backbone.state_dict().items() if k.startswith("features.")}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_deeplab_backbone_matches_the_largefov_prototxt_layer_stack(batch_norm):
    """DeepLab-LargeFOV prototxt: pool1–5 MAX 3×3 pad 1 (Caffe rounds up), strides 2,2,2,1,1; conv5 dilation 2."""
    torch.manual_seed(0)
    ours = deeplab_vgg16_backbone(width_mult=WIDTH, batch_norm=batch_norm).eval()
    pools = [nn.MaxPool2d(3, s, 1, ceil_mode=True) for s in (2, 2, 2, 1, 1)]
    reference = rewire(torchvision_features(WIDTH, batch_norm), pools, 2).eval()
    reference.load_state_dict(features_state(ours))
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["pool5"], reference(x), rtol=0, atol=0)
    assert ours.classifier is None  # no fc6/fc7: DeepLab-LargeFOV brings its own
    assert set(ours(x)) == {"pool3", "pool4", "pool5"}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_frontend_matches_the_paper_layer_stack(batch_norm):
    """Yu & Koltun §4: pool4 and pool5 removed, conv5 dilation 2, fc6 7×7 dilation 4, fc7 1×1."""
    torch.manual_seed(0)
    ours = dilation_vgg16_frontend(width_mult=WIDTH, batch_norm=batch_norm).eval()
    pools = [nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2), nn.Identity(), nn.Identity()]
    features = rewire(torchvision_features(WIDTH, batch_norm), pools, 2)
    channels, width = scaled(512, WIDTH), scaled(4096, WIDTH)
    reference = nn.Sequential(features, nn.Conv2d(channels, width, 7, padding=12, dilation=4), nn.ReLU(),
                              nn.Conv2d(width, width, 1), nn.ReLU()).eval()
    features.load_state_dict(features_state(ours))
    for index, ours_index in [(1, 0), (3, 3)]:
        reference[index].load_state_dict(ours.classifier[ours_index].state_dict())
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["fc7"], reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("size", ODD_SIZES)
def test_atrous_output_sizes_follow_the_documented_formulas(size):
    deeplab = deeplab_vgg16_backbone(width_mult=WIDTH).eval()
    frontend = dilation_vgg16_frontend(width_mult=WIDTH).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        caffe = deeplab(x)
        same = frontend(x)
    expected_caffe = tuple(-(-(n - 1) // 8) + 1 for n in size)  # ceil((n − 1)/8) + 1
    assert {tuple(v.shape[-2:]) for v in caffe.values()} == {expected_caffe}
    assert {tuple(v.shape[-2:]) for v in same.values()} == {tuple(n // 8 for n in size)}
    assert caffe["pool5"].shape[1] == deeplab.channels["pool5"] == scaled(512, WIDTH)
    assert same["fc7"].shape[1] == frontend.channels["fc7"] == scaled(4096, WIDTH)


def test_deeplab_backbone_gives_k_plus_1_rows_for_8k_plus_1_inputs():
    backbone = deeplab_vgg16_backbone(width_mult=WIDTH).eval()
    with torch.no_grad():
        for k in (2, 5, 8, 11):
            assert backbone(torch.randn(1, 3, 8 * k + 1, 8 * k + 1))["pool5"].shape[-2:] == (k + 1, k + 1)


def _centre_map(modules) -> tuple[float, float]:
    """Compose x_in = a·x_out + b over convolutions and pools: x_in = s·x_out + d·(k − 1)/2 − p."""
    a, b = 1.0, 0.0
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p, d = [v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding, m.dilation)]
            a, b = a * s, a * (d * (k - 1) / 2 - p) + b
    return a, b


def test_atrous_backbones_have_output_stride_8_from_their_layer_geometry():
    deeplab = deeplab_vgg16_backbone(width_mult=WIDTH)
    frontend = dilation_vgg16_frontend(width_mult=WIDTH)
    assert _centre_map(deeplab.features) == (8, 0)  # output pixel i centred on input pixel 8i
    assert _centre_map([*frontend.features, *frontend.classifier]) == (8, 3.5)  # on 8i + 3.5
    assert set(deeplab.strides.values()) == set(frontend.strides.values()) == {8}
    assert VGG16(width_mult=WIDTH).strides == {"pool3": 8, "pool4": 16, "pool5": 32, "fc7": 32}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_atrous_backbones_keep_torchvision_parameter_names_and_sizes(batch_norm):
    with torch.device("meta"):
        tv = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None)
        deeplab = deeplab_vgg16_backbone(batch_norm=batch_norm)
        frontend = dilation_vgg16_frontend(batch_norm=batch_norm)
    reference = {k: v.numel() for k, v in tv.state_dict().items() if not k.startswith("classifier.6.")}
    assert {k: v.numel() for k, v in frontend.state_dict().items()} == reference
    assert {k: v.numel() for k, v in deeplab.state_dict().items()} == \
        {k: n for k, n in reference.items() if k.startswith("features.")}


def test_torchvision_vgg16_weights_land_in_both_atrous_backbones(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None)
    path = str(tmp_path / "vgg16.pth")
    torch.save(tv.state_dict(), path)
    deeplab = deeplab_vgg16_backbone(weights_backbone=path)
    frontend = dilation_vgg16_frontend(weights_backbone=path)
    for backbone in (deeplab, frontend):
        for index in (0, 14, 28):  # conv1_1, conv3_3, conv5_3
            assert torch.equal(backbone.features[index].weight, tv.features[index].weight)
            assert torch.equal(backbone.features[index].bias, tv.features[index].bias)
    assert torch.equal(frontend.classifier[0].weight, tv.classifier[0].weight.view(4096, 512, 7, 7))
    assert torch.equal(frontend.classifier[3].weight.flatten(1), tv.classifier[3].weight)


def test_frozen_bn_option_freezes_the_atrous_backbones():
    for build in (deeplab_vgg16_backbone, dilation_vgg16_frontend):
        kinds = {type(m) for m in build(width_mult=WIDTH, batch_norm=True, frozen_bn=True).modules()}
        assert FrozenBatchNorm2d in kinds and nn.BatchNorm2d not in kinds


@pytest.mark.parametrize("options,match", [({"pool_kernel": 4}, "pool_kernel"),
                                           ({"pool_strides": (2, 2, 2, 2)}, "pool_strides"),
                                           ({"pool_strides": (2, 2, 2, 1, 1)}, "half a pixel"),
                                           ({"dilations": (1, 2)}, "dilations")])
def test_vgg16_rejects_inconsistent_pool_and_dilation_options(options, match):
    with pytest.raises(ValueError, match=match):
        VGG16(width_mult=WIDTH, **options)
