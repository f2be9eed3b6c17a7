import pytest
import torch
import torchvision
from torch import nn

from seglab import models
from seglab.backbones import VGG16, load_torchvision_weights
from seglab.models.fcn import CAFFE_OFFSETS

FCN_NAMES = ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16"]
VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def expected_fcn_parameters(num_classes: int, skips: int) -> int:
    """FCN parameters from the paper's layer shapes (arXiv:1411.4038 §4 and the reference nets)."""
    convs = sum(3 * 3 * cin * cout + cout for cin, cout in VGG16_CONVS)
    fc6 = 7 * 7 * 512 * 4096 + 4096
    fc7 = 4096 * 4096 + 4096
    score_fr = 4096 * num_classes + num_classes
    score_pool4 = 512 * num_classes + num_classes
    score_pool3 = 256 * num_classes + num_classes
    upscore2x = num_classes * num_classes * 4 * 4  # learnable 2x deconvolution, no bias
    total = convs + fc6 + fc7 + score_fr
    if skips >= 1:
        total += score_pool4 + upscore2x
    if skips == 2:
        total += score_pool3 + upscore2x
    return total  # the final 32x/16x/8x upsampling is fixed: no parameters


@pytest.mark.parametrize("skips,name", list(enumerate(FCN_NAMES)))
def test_fcn_parameter_count_matches_paper_layer_shapes(skips, name):
    expected = expected_fcn_parameters(21, skips)
    assert models.count_parameters(name, 21) == expected
    if name == "fcn8s_vgg16":
        assert 134_000_000 < expected < 135_000_000  # "about 134 M"


@pytest.mark.parametrize("padding", ["caffe", "same"])
@pytest.mark.parametrize("name", FCN_NAMES)
def test_fcn_output_size_equals_input_size_including_odd_sizes(name, padding):
    model = models.create(name, num_classes=3, width_mult=0.0625, padding=padding).eval()
    for height, width in [(32, 32), (33, 47), (63, 64), (97, 35), (129, 101)]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, height, width))["out"]
        assert out.shape == (2, 3, height, width)


def _coordinate_map(layers):
    """Compose x_in = a·x_out + b over layers given as (kind, kernel, stride, padding); returns (a, b)."""
    a, b = 1.0, 0.0
    for kind, k, s, p in layers:
        if kind == "conv":  # x_in = s·x_out + (k−1)/2 − p
            a, b = a * s, a * ((k - 1) / 2 - p) + b
        else:  # transposed conv: x_out = s·x_in + (k−1)/2 − p
            a, b = a / s, b - a * ((k - 1) / 2 - p) / s
    return a, b


def _layer_geometry(modules):
    geometry = []
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = [v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding)]
            geometry.append(("conv", k, s, p))
        elif isinstance(m, nn.ConvTranspose2d):
            geometry.append(("deconv", m.kernel_size[0], m.stride[0], m.padding[0]))
    return geometry


def test_caffe_crop_offsets_follow_from_the_layer_geometry():
    """Offsets align each map's coordinate frame with the input: recomputed from the built layers."""
    model = models.create("fcn8s_vgg16", num_classes=2, width_mult=0.0625, padding="caffe")
    feats = list(model.backbone.features)
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    pool3 = _layer_geometry(feats[:pools[2] + 1])
    pool4 = _layer_geometry(feats[:pools[3] + 1])
    fr = _layer_geometry(feats + [model.backbone.classifier[0]])
    up2 = fr + _layer_geometry([model.upscore2])
    a4, b4 = _coordinate_map(pool4)
    a, b = _coordinate_map(up2)
    assert a == a4 and (b - b4) / a4 == CAFFE_OFFSETS["pool4"]  # score_pool4 crop
    fused4 = up2 + _layer_geometry([model.upscore_pool4])  # same frame as pool4 after the crop
    a3, b3 = _coordinate_map(pool3)
    a, b = _coordinate_map(fused4)
    assert a == a3 and (b - b3) / a3 == CAFFE_OFFSETS["pool3"]
    for factor, chain in [(8, fused4), (16, up2), (32, fr)]:
        a, b = _coordinate_map(chain + [("deconv", 2 * factor, factor, 0)])
        assert a == 1 and -b == CAFFE_OFFSETS[factor]  # final crop: output pixel o ↔ input o + offset


@pytest.mark.parametrize("batch_norm", [False, True])
def test_torchvision_vgg16_state_dict_loads_and_fc7_matches_torchvision(tmp_path, batch_norm):
    torch.manual_seed(0)
    tv = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(tv.state_dict(), path)
    backbone = VGG16(batch_norm=batch_norm)
    load_torchvision_weights(backbone, str(path))
    backbone.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = backbone(x)["fc7"].flatten(1)
        reference = tv.classifier[:5](torch.flatten(tv.avgpool(tv.features(x)), 1))  # fc6, relu, drop, fc7, relu
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_fcn_builder_loads_backbone_weights_and_rejects_wrong_width(tmp_path):
    path = tmp_path / "vgg16.pth"
    tv = torchvision.models.vgg16(weights=None)
    torch.save(tv.state_dict(), path)
    model = models.create("fcn8s_vgg16", num_classes=21, weights_backbone=str(path))
    assert torch.equal(model.backbone.features[28].weight, tv.features[28].weight)
    with pytest.raises(ValueError, match=r"does not fit the model: features\.0\.weight has shape \(64, 3, 3, 3\)"):
        models.create("fcn8s_vgg16", num_classes=21, width_mult=0.5, weights_backbone=str(path))


def test_at_once_scales_pool4_and_pool3_before_scoring():
    model = models.create("fcn8s_vgg16", num_classes=3, width_mult=0.0625, at_once=True).eval()
    seen = {}
    model.score_pool4.register_forward_hook(lambda m, inp, out: seen.__setitem__("pool4", inp[0]))
    model.score_pool3.register_forward_hook(lambda m, inp, out: seen.__setitem__("pool3", inp[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        features = model.backbone(x)
    torch.testing.assert_close(seen["pool4"], features["pool4"] * 0.01)
    torch.testing.assert_close(seen["pool3"], features["pool3"] * 0.0001)


def test_frozen_bn_is_applied_when_asked():
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = models.create("fcn8s_vgg16", num_classes=3, width_mult=0.0625, batch_norm=True, frozen_bn=True)
    kinds = {type(m) for m in model.modules()}
    assert FrozenBatchNorm2d in kinds and nn.BatchNorm2d not in kinds


def test_fcn_gradients_reach_every_trainable_parameter():
    model = models.create("fcn8s_vgg16", num_classes=3, width_mult=0.0625, batch_norm=True, padding="same")
    nn.init.normal_(model.score_fr.weight, std=0.1)  # zero-initialised scores would block the backbone
    nn.init.normal_(model.score_pool4.weight, std=0.1)
    nn.init.normal_(model.score_pool3.weight, std=0.1)
    out = model(torch.randn(2, 3, 45, 61))["out"]
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 45, 61))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_registry_rejects_unknown_model_with_known_names():
    with pytest.raises(ValueError, match="fcn8s_vgg16"):
        models.create("fcn9s_vgg16", num_classes=3)


def test_staged_training_loads_fcn32s_into_fcn16s_and_keeps_the_new_layers(tmp_path):
    """FCN's staged training (§4.2): FCN-16s starts from FCN-32s' weights, its new pool4 scores at their zero init;
    weights that do not fit (a key the model lacks, another shape) are refused, naming the file and the key."""
    from seglab.io import save_checkpoint
    from seglab.models.base import load_part

    torch.manual_seed(0)
    coarse = models.create("fcn32s_vgg16", 3, width_mult=0.0625)
    for parameter in coarse.parameters():
        torch.nn.init.normal_(parameter)
    save_checkpoint({"model": coarse.state_dict()}, tmp_path / "fcn32s.pt")
    finer = models.create("fcn16s_vgg16", 3, width_mult=0.0625)
    upscore2 = finer.upscore2.weight.clone()
    assert load_part(finer, tmp_path / "fcn32s.pt") == len(coarse.state_dict())
    for key, value in coarse.state_dict().items():
        torch.testing.assert_close(finer.state_dict()[key], value, rtol=0, atol=0)
    assert finer.score_pool4.weight.abs().sum() == 0 and torch.equal(finer.upscore2.weight, upscore2)
    with pytest.raises(ValueError, match="fcn16s.pt.*score_pool4.weight is not in the model"):
        save_checkpoint({"model": finer.state_dict()}, tmp_path / "fcn16s.pt")
        load_part(models.create("fcn32s_vgg16", 3, width_mult=0.0625), tmp_path / "fcn16s.pt")
    with pytest.raises(ValueError, match="fcn32s.pt does not fit the model: .* has shape"):
        load_part(models.create("fcn16s_vgg16", 3, width_mult=0.125), tmp_path / "fcn32s.pt")
