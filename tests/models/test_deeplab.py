import pytest
import torch
from torchvision.models import segmentation as tvseg

from seglab import interop, models
from seglab.models.deeplab import ASPP_S, ASPPSum

TV_BUILDERS = {"fcn_resnet50": tvseg.fcn_resnet50, "fcn_resnet101": tvseg.fcn_resnet101,
               "deeplabv3_resnet50": tvseg.deeplabv3_resnet50, "deeplabv3_resnet101": tvseg.deeplabv3_resnet101}
# torchvision's documented parameter counts (21 classes, with the auxiliary head).
TV_PARAMS = {"fcn_resnet50": 35_322_218, "fcn_resnet101": 54_314_346, "deeplabv3_resnet50": 42_004_074,
             "deeplabv3_resnet101": 60_996_202}


@pytest.mark.parametrize("name", sorted(TV_BUILDERS))
def test_parameter_count_equals_torchvisions_documented_count(name):
    assert models.count_parameters(name, 21, aux=True) == TV_PARAMS[name]


@pytest.mark.parametrize("name,aux", [("fcn_resnet50", True), ("deeplabv3_resnet50", False),
                                      ("deeplabv3_resnet50", True), ("deeplabv3_resnet101", True),
                                      ("fcn_resnet101", False)])
def test_from_torchvision_gives_the_same_logits(name, aux):
    torch.manual_seed(1)
    tv = TV_BUILDERS[name](weights=None, weights_backbone=None, num_classes=6, aux_loss=aux).eval()
    ours = interop.from_torchvision(tv).eval()
    for height, width in [(64, 64), (71, 53)]:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            expected, got = tv(x), ours(x)
        assert set(got) == set(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)


def test_create_with_weights_loads_a_torchvision_checkpoint_from_disk(tmp_path):
    tv = tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    torch.save(tv.state_dict(), tmp_path / "dlv3.pth")
    ours = models.create("deeplabv3_resnet50", 4, aux=True, weights=str(tmp_path / "dlv3.pth")).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], tv(x)["out"], rtol=0, atol=1e-5)


def test_from_torchvision_rejects_other_models():
    import torchvision

    with pytest.raises(ValueError, match="FCN or DeepLabV3"):
        interop.from_torchvision(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None))


def test_deeplabv3_paper_settings_are_options():
    model = models.create("deeplabv3_resnet50", 3, output_stride=16, multi_grid=(1, 2, 4), extra_conv=False,
                          width_mult=0.0625)
    aspp = model.classifier[0]
    assert [branch[0].dilation[0] for branch in aspp.convs[1:4]] == [6, 12, 18]
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [2, 4, 8]
    assert len(model.classifier) == 2  # ASPP, then the 1x1 classifier (no extra 3x3 conv)
    default = models.create("deeplabv3_resnet50", 3, width_mult=0.0625)
    assert [branch[0].dilation[0] for branch in default.classifier[0].convs[1:4]] == [12, 24, 36]


def aspp_dropout(model) -> float:
    return model.classifier[0].project[-1].p


def test_deeplabv3_aspp_dropout_is_the_official_codes_in_paper_mode_and_torchvisions_otherwise():
    """Paper layout (no extra conv): 0.1, tensorflow/models deeplab's keep_prob 0.9 after the ASPP projection;
    torchvision's layout keeps its 0.5; an explicit ``aspp_dropout`` wins in both."""
    paper = dict(output_stride=16, multi_grid=(1, 2, 4), extra_conv=False, width_mult=0.0625)
    assert aspp_dropout(models.create("deeplabv3_resnet50", 3, **paper)) == 0.1
    assert aspp_dropout(models.create("deeplabv3_resnet101", 3, **paper)) == 0.1
    assert aspp_dropout(models.create("deeplabv3_resnet50", 3, width_mult=0.0625)) == 0.5
    assert aspp_dropout(models.create("deeplabv3_resnet50", 3, aspp_dropout=0.3, **paper)) == 0.3
    assert aspp_dropout(models.create("deeplabv3_resnet50", 3, aspp_dropout=0.0, width_mult=0.0625)) == 0.0
    tv = tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3)
    assert aspp_dropout(interop.from_torchvision(tv)) == tv.classifier[0].project[-1].p == 0.5


def test_deeplabv2_sums_one_atrous_conv_per_rate_from_res5():
    model = models.create("deeplabv2_resnet101", 5, width_mult=0.0625).eval()
    aspp = model.classifier
    assert isinstance(aspp, ASPPSum) and [b.dilation[0] for b in aspp.branches] == [6, 12, 18, 24]
    assert model.backbone.strides["layer4"] == 8
    features = torch.randn(1, model.backbone.channels["layer4"], 9, 7)
    with torch.no_grad():
        expected = sum(torch.nn.functional.conv2d(features, b.weight, b.bias, padding=b.dilation, dilation=b.dilation)
                       for b in aspp.branches)
        torch.testing.assert_close(aspp(features), expected)
    small = models.create("deeplabv2_resnet101", 5, aspp_rates=ASPP_S, width_mult=0.0625)
    assert [b.dilation[0] for b in small.classifier.branches] == [2, 4, 8, 12]
    expected_params = 4 * (2048 * 9 * 21 + 21)  # four 3x3 branches, 2048 -> 21 classes
    full = models.count_parameters("deeplabv2_resnet101", 21) - models.count_parameters("fcn_resnet101", 21)
    fcn_head = 2048 * 512 * 9 + 2 * 512 + 512 * 21 + 21
    assert full == expected_params - fcn_head


def test_deeplabv3plus_decoder_fuses_layer1_at_stride_4():
    model = models.create("deeplabv3plus_resnet50", 3, width_mult=0.0625).eval()
    assert model.backbone.strides["layer4"] == 16
    seen = {}
    model.classifier.classifier.register_forward_hook(lambda m, i, o: seen.__setitem__("scores", o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 67, 45))["out"]
    assert out.shape == (1, 3, 67, 45)
    assert seen["scores"].shape[-2:] == (17, 12)  # layer1: stride 4
    assert model.classifier.reduce[0].out_channels == 3  # 48 x 0.0625


def test_deeplabv1_largefov_parameters_match_the_papers_layer_shapes():
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    expected = sum(9 * i * o + o for i, o in convs)
    expected += 9 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 21 + 21  # fc6 (3x3, rate 12), fc7, fc8
    assert models.count_parameters("deeplabv1_vgg16", 21) == expected
    assert round(expected / 1e6, 1) == 20.5  # Table 2 of arXiv:1412.7062: "20.5M" for DeepLab-LargeFOV


def test_deeplabv1_head_is_dilated_and_logits_align_corners():
    model = models.create("deeplabv1_vgg16", 3, width_mult=0.0625).eval()
    assert model.classifier.fc6[0].dilation == (12, 12) and model.classifier.fc6[0].kernel_size == (3, 3)
    assert model.backbone.strides["pool5"] == 8 and model.align_corners
    seen = {}
    model.classifier.register_forward_hook(lambda m, i, o: seen.__setitem__("scores", o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 41))["out"]
    scores = seen["scores"]
    assert scores.shape[-2:] == (9, 6)  # ceil((H - 1) / 8) + 1
    torch.testing.assert_close(out[..., 0, 0], scores[..., 0, 0])  # corner logits are the scores themselves
    torch.testing.assert_close(out[..., 64, 0], scores[..., 8, 0])


def test_deeplabv2_vgg16_parameters_are_four_largefov_branches_on_the_same_backbone():
    """DeepLab v2's ASPP on VGG-16: per rate one fc6 (3×3, 1024) → fc7 (1×1, 1024) → fc8 (1×1, classes)."""
    branch = 9 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 21 + 21
    largefov = models.count_parameters("deeplabv1_vgg16", 21)
    for rates in ((6, 12, 18, 24), ASPP_S):
        assert models.count_parameters("deeplabv2_vgg16", 21, aspp_rates=rates) == largefov + 3 * branch


def test_deeplabv2_vgg16_sums_dilated_branches_read_from_pool5():
    """Each branch recomputed in float64 with plain convolutions at its own rate; the head's output is their sum
    (no pool5a average pool, unlike DeepLab-LargeFOV)."""
    torch.manual_seed(0)
    model = models.create("deeplabv2_vgg16", 3, aspp_rates=ASPP_S, width_mult=0.0625, dropout=0.0).eval().double()
    assert [b.fc6[0].dilation[0] for b in model.classifier.branches] == list(ASPP_S)
    x = torch.randn(1, 3, 97, 81, dtype=torch.float64)
    seen = {}
    model.classifier.register_forward_hook(lambda m, i, o: seen.update(features=i[0], scores=o))
    with torch.no_grad():
        model(x)
        features, expected = seen["features"], 0
        for rate, branch in zip(ASPP_S, model.classifier.branches):
            fc6, fc7, fc8 = branch.fc6[0], branch.fc7[0], branch.fc8
            h = torch.relu(torch.nn.functional.conv2d(features, fc6.weight, fc6.bias, padding=rate, dilation=rate))
            h = torch.relu(torch.nn.functional.conv2d(h, fc7.weight, fc7.bias))
            expected = expected + torch.nn.functional.conv2d(h, fc8.weight, fc8.bias)
    torch.testing.assert_close(seen["scores"], expected)
    assert features.shape[-2:] == (13, 11)  # output stride 8
