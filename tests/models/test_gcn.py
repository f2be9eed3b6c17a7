import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from seglab import models
from seglab.models.gcn import BoundaryRefinement, GlobalConv
from seglab.ops import bilinear_kernel

TINY = {"width_mult": 0.0625}


def gcn_parameters(in_channels, classes, k):
    """Fig. 2 B: two branches of (k·C_in·C + k·C·C) weights, a bias per convolution."""
    return 2 * (k * in_channels * classes + k * classes * classes) + 4 * classes


def test_gcn_module_equals_the_sum_of_its_four_separable_convolutions():
    g = torch.Generator().manual_seed(0)
    module = GlobalConv(5, 4, kernel_size=7).double()
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64)
    (l1, l2), (r1, r2) = module.left, module.right
    assert sum(p.numel() for p in module.parameters()) == gcn_parameters(5, 4, 7)
    for size in [(11, 9), (3, 5), (16, 1)]:  # odd, smaller than k, a single column
        x = torch.randn(2, 5, *size, generator=g, dtype=torch.float64)
        left = F.conv2d(F.conv2d(x, l1.weight, l1.bias, padding=(3, 0)), l2.weight, l2.bias, padding=(0, 3))
        right = F.conv2d(F.conv2d(x, r1.weight, r1.bias, padding=(0, 3)), r2.weight, r2.bias, padding=(3, 0))
        out = module(x)
        assert out.shape == (2, 4, *size)
        torch.testing.assert_close(out, left + right)


def test_gcn_with_kernel_1_is_a_single_1x1_convolution():
    torch.manual_seed(0)
    module = GlobalConv(6, 3, kernel_size=1)
    (l1, l2), (r1, r2) = module.left, module.right
    w = {name: conv.weight.flatten(1) for name, conv in [("l1", l1), ("l2", l2), ("r1", r1), ("r2", r2)]}
    weight = w["l2"] @ w["l1"] + w["r2"] @ w["r1"]  # (C_out, C_in): the composed 1×1 kernels
    bias = w["l2"] @ l1.bias + l2.bias + w["r2"] @ r1.bias + r2.bias
    x = torch.randn(2, 6, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(module(x), F.conv2d(x, weight[..., None, None], bias))


@pytest.mark.parametrize("k", [0, 4, 14])
def test_gcn_rejects_kernel_sizes_that_are_not_positive_and_odd(k):
    with pytest.raises(ValueError, match="odd"):
        GlobalConv(4, 2, kernel_size=k)


def test_boundary_refinement_is_a_residual_and_identity_when_its_second_conv_is_zero():
    torch.manual_seed(0)
    block = BoundaryRefinement(3)
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        expected = x + F.conv2d(F.relu(F.conv2d(x, block.conv1.weight, block.conv1.bias, padding=1)),
                                block.conv2.weight, block.conv2.bias, padding=1)
        torch.testing.assert_close(block(x), expected)
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_full_size_parameter_count_follows_from_the_layer_shapes(depth):
    classes, k = 21, 15
    with torch.device("meta"):
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    width = resnet.fc.in_features  # 512 with basic blocks, 2048 with bottlenecks
    backbone = sum(p.numel() for p in resnet.parameters()) - (width * 1000 + 1000)  # minus fc
    gcns = sum(gcn_parameters(c, classes, k) for c in (width // 8, width // 4, width // 2, width))
    brs = 9 * 2 * (classes * classes * 9 + classes)  # 4 on the stages + 5 in the decoder
    deconvs = 5 * classes * classes * 4 * 4  # 4×4 kernels, no bias
    assert models.count_parameters(f"gcn_resnet{depth}", classes) == backbone + gcns + brs + deconvs


@pytest.mark.parametrize("name", ["gcn_resnet18", "gcn_resnet50", "gcn_resnet101"])
def test_without_boundary_refinement_the_nine_br_blocks_and_their_parameters_are_gone(name):
    """The BR ablation: the registry option reaches the builder, 9·2·(C·C·9 + C) parameters fewer (full size),
    every br/br_fuse an Identity, and the output keeps the input size."""
    classes = 21
    assert models.options(name)["boundary_refinement"] is True
    brs = 9 * 2 * (classes * classes * 9 + classes)
    assert models.count_parameters(name, classes) - models.count_parameters(
        name, classes, boundary_refinement=False) == brs
    model = models.create(name, 3, boundary_refinement=False, **TINY).eval()
    assert model.meta["options"]["boundary_refinement"] is False
    assert all(isinstance(m, torch.nn.Identity) for m in [*model.br, *model.br_fuse])
    assert not any(isinstance(m, BoundaryRefinement) for m in model.modules())
    with_br = models.create(name, 3, **TINY)
    assert sum(isinstance(m, BoundaryRefinement) for m in with_br.modules()) == 9
    assert sum(p.numel() for p in with_br.parameters()) - sum(p.numel() for p in model.parameters()) == \
        9 * 2 * (3 * 3 * 9 + 3)
    for height, width in [(33, 47), (64, 64)]:
        with torch.no_grad():
            assert model(torch.randn(2, 3, height, width))["out"].shape == (2, 3, height, width)


def test_pipeline_has_figure_2s_blocks_on_an_output_stride_32_resnet():
    model = models.create("gcn_resnet50", 5, **TINY)
    assert [model.backbone.strides[f"layer{i}"] for i in range(1, 5)] == [4, 8, 16, 32]
    assert [m.left[0].in_channels for m in model.gcn] == [model.backbone.channels[f"layer{i}"] for i in range(1, 5)]
    assert (len(model.gcn), len(model.br), len(model.deconv), len(model.br_fuse)) == (4, 4, 5, 5)
    assert all(m.left[1].out_channels == 5 for m in model.gcn)


def test_output_has_input_size_and_skips_are_cropped_for_odd_inputs():
    model = models.create("gcn_resnet50", 3, **TINY).eval()
    seen = []
    for block in model.br_fuse:
        block.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    for height, width in [(33, 47), (65, 64), (97, 35)]:
        seen.clear()
        with torch.no_grad():
            out = model(torch.randn(2, 3, height, width))["out"]
        assert out.shape == (2, 3, height, width)
        # the backbone rounds up: stride s has ceil(H/s) rows; strides 2 and 1 are 2× and 4× stride 4
        expected = [(math.ceil(height / s) * n, math.ceil(width / s) * n)
                    for s, n in [(16, 1), (8, 1), (4, 1), (4, 2), (4, 4)]]
        assert seen == expected


def test_kernel_size_is_configurable():
    default = models.create("gcn_resnet50", 4, **TINY)
    assert default.gcn[3].left[0].weight.shape[-2:] == (15, 1)
    model = models.create("gcn_resnet50", 4, kernel_size=7, **TINY)
    in_channels = model.backbone.channels["layer4"]
    left, right = model.gcn[3].left, model.gcn[3].right
    assert (left[0].weight.shape, left[1].weight.shape) == ((4, in_channels, 7, 1), (4, 4, 1, 7))
    assert (right[0].weight.shape, right[1].weight.shape) == ((4, in_channels, 1, 7), (4, 4, 7, 1))
    with pytest.raises(ValueError, match="odd"):
        models.create("gcn_resnet50", 4, kernel_size=8, **TINY)


def test_decoder_deconvolutions_start_bilinear_and_double_the_size():
    model = models.create("gcn_resnet50", 3, **TINY)
    for deconv in model.deconv:
        assert deconv.stride == (2, 2) and deconv.bias is None
        torch.testing.assert_close(deconv.weight[1, 1], bilinear_kernel(2), rtol=0, atol=0)
        assert deconv.weight[0, 1].abs().sum() == 0
        assert deconv(torch.randn(1, 3, 5, 6)).shape == (1, 3, 10, 12)


def test_dilated_backbone_adds_equal_stride_stages_without_deconvolution():
    model = models.create("gcn_resnet50", 3, output_stride=8, **TINY).eval()
    assert [type(d).__name__ for d in model.deconv] == ["Identity", "Identity"] + ["ConvTranspose2d"] * 3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 38))["out"].shape == (1, 3, 45, 38)


def test_create_with_weights_loads_a_saved_state_dict(tmp_path):
    torch.manual_seed(0)
    model = models.create("gcn_resnet50", 3, kernel_size=5, **TINY).eval()
    torch.save(model.state_dict(), tmp_path / "gcn.pt")
    loaded = models.create("gcn_resnet50", 3, kernel_size=5, weights=str(tmp_path / "gcn.pt"), **TINY).eval()
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], model(x)["out"], rtol=0, atol=0)
