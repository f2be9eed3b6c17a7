import pytest
import torch
import torchvision

from seglab.backbones import BasicResNet, ResNet, load_torchvision_weights

DILATIONS = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet_matches_torchvision_with_its_weights(depth, output_stride, tmp_path):
    torch.manual_seed(depth + output_stride)
    ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
    tv = ctor(weights=None, replace_stride_with_dilation=DILATIONS[output_stride]).eval()
    torch.save(tv.state_dict(), tmp_path / "resnet.pth")
    ours = ResNet(depth, output_stride)
    load_torchvision_weights(ours, str(tmp_path / "resnet.pth"))
    x = torch.randn(1, 3, 57, 41)
    with torch.no_grad():
        features = ours.eval()(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for name in ["layer1", "layer2", "layer3", "layer4"]:
            y = getattr(tv, name)(y)
            torch.testing.assert_close(features[name], y, rtol=0, atol=1e-5)
    assert ours.strides["layer4"] == output_stride
    assert features["layer4"].shape[-2:] == (-(-57 // output_stride), -(-41 // output_stride))


@pytest.mark.parametrize("output_stride,base", [(16, 2), (8, 4)])
def test_multi_grid_sets_layer4_unit_rates(output_stride, base):
    model = ResNet(50, output_stride, multi_grid=(1, 2, 4), width_mult=0.0625)
    assert [b.conv2.dilation[0] for b in model.layer4] == [base, 2 * base, 4 * base]
    assert [b.conv2.padding[0] for b in model.layer4] == [base, 2 * base, 4 * base]
    out = model(torch.randn(1, 3, 64, 64))["layer4"]
    assert out.shape[-2:] == (64 // output_stride, 64 // output_stride)
    with pytest.raises(ValueError, match="multi_grid"):
        ResNet(50, 16, multi_grid=(1, 2))


def test_width_mult_scales_declared_channels():
    model = ResNet(50, 8, width_mult=0.25)
    assert model.channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    out = model(torch.randn(2, 3, 33, 35))
    assert {k: v.shape[1] for k, v in out.items()} == model.channels


def test_bad_depth_and_stride_are_errors():
    with pytest.raises(ValueError, match="depth"):
        ResNet(34)
    with pytest.raises(ValueError, match="output_stride"):
        ResNet(50, 4)


@pytest.mark.parametrize("depth, output_stride", [(18, 16), (18, 8), (34, 16)])
def test_dilated_basic_resnet_is_the_hole_algorithm_on_torchvisions_network(depth, output_stride):
    """torchvision's resnet18/34 weights in a BasicResNet at output stride 16 or 8: every (32 / OS)-th row and
    column of layer4 (and of layer3 at OS 8) is torchvision's own output, the hole algorithm's identity."""
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    ours = BasicResNet(depth, output_stride).eval()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        features = ours(x)
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            stem = getattr(reference, name)(stem)
            expected[name] = stem
    assert ours.strides == {"layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
    for name, tv_stride in (("layer3", 16), ("layer4", 32)):
        step = tv_stride // ours.strides[name]
        scale = expected[name].abs().max()
        torch.testing.assert_close(features[name][..., ::step, ::step] / scale, expected[name] / scale, rtol=0,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="output_stride"):
        BasicResNet(18, 4)
