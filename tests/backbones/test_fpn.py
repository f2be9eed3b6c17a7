import pytest
import torch
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from seglab.backbones.fpn import BasicResNet, resnet_fpn_backbone


@pytest.mark.parametrize("depth,frozen_bn", [(18, False), (50, True)])
def test_fpn_features_match_torchvision_resnet_fpn_backbone(depth, frozen_bn):
    torch.manual_seed(depth)
    norm = FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
    tv = tv_resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, norm_layer=norm,
                                trainable_layers=5).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that loading them is checked too
        for name, buffer in tv.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(1.0, 2.0)
    ours = resnet_fpn_backbone(depth, frozen_bn=frozen_bn, trainable_layers=5)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 75, 97)
    with torch.no_grad():
        expected, got = tv(x), ours.eval()(x)
    assert list(got) == list(expected) == ["0", "1", "2", "3", "pool"]
    for name in expected:
        scale = expected[name].abs().max()
        torch.testing.assert_close(got[name] / scale, expected[name] / scale, rtol=0, atol=1e-5)
    assert {k: v.shape[1] for k, v in got.items()} == ours.channels
    assert ours.strides == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    assert got["pool"].shape[-2:] == (2, 2)  # ceil(75/64), ceil(97/64): subsampled with stride 2


@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_trainable_layers_freeze_what_torchvision_freezes(trainable):
    with torch.device("meta"):
        tv = tv_resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d,
                                    trainable_layers=trainable)
        ours = resnet_fpn_backbone(18, frozen_bn=False, trainable_layers=trainable)
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == \
        {n: p.requires_grad for n, p in tv.named_parameters()}


def test_frozen_bn_is_explicit_and_weights_load_from_disk(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "r18.pth")
    backbone = resnet_fpn_backbone(18, weights_backbone=str(tmp_path / "r18.pth"))
    assert torch.equal(backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    assert isinstance(resnet_fpn_backbone(18, frozen_bn=False).body.bn1, torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="depth"):
        BasicResNet(50)
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_fpn_backbone(18, trainable_layers=6)
