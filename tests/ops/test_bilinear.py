import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.ops import FixedBilinearUpsample, bilinear_conv_transpose, bilinear_kernel, upsampling_padding


def reference_upsample_filt(size):
    """The FCN reference code's ``surgery.upsample_filt`` (numpy, float64)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def test_bilinear_kernel_factor2_is_the_papers_table():
    a, b, c = 0.0625, 0.1875, 0.5625
    expected = torch.tensor([[a, b, b, a], [b, c, c, b], [b, c, c, b], [a, b, b, a]])
    assert torch.equal(bilinear_kernel(2), expected)


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5, 8, 16, 32])
def test_bilinear_kernel_matches_reference_upsample_filt(factor):
    size = 2 * factor - factor % 2
    kernel = bilinear_kernel(factor, torch.float64)
    assert kernel.shape == (size, size)
    np.testing.assert_allclose(kernel.numpy(), reference_upsample_filt(size), rtol=0, atol=1e-15)


def test_bilinear_kernel_rejects_factor_below_one():
    with pytest.raises(ValueError, match="factor"):
        bilinear_kernel(0)


def test_bilinear_conv_transpose_is_diagonal_with_bilinear_kernel():
    layer = bilinear_conv_transpose(5, 2)
    assert layer.bias is None and layer.weight.shape == (5, 5, 4, 4)
    for i in range(5):
        for j in range(5):
            expected = bilinear_kernel(2) if i == j else torch.zeros(4, 4)
            assert torch.equal(layer.weight[i, j].detach(), expected)


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_bilinear_upsampling_equals_interpolate_away_from_borders(factor):
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(factor), dtype=torch.float64)
    layer = bilinear_conv_transpose(3, factor, upsampling_padding(factor)).double()
    with torch.no_grad():
        ours = layer(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape == (2, 3, 9 * factor, 11 * factor)
    m = factor  # the first and last input cell see zero padding instead of edge replication
    torch.testing.assert_close(ours[..., m:-m, m:-m], reference[..., m:-m, m:-m], rtol=0, atol=1e-12)


@pytest.mark.parametrize("factor,padding", [(2, 0), (8, 4), (32, 16), (3, 1)])
def test_fixed_upsample_equals_frozen_conv_transpose_and_has_no_parameters(factor, padding):
    x = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    fixed = FixedBilinearUpsample(4, factor, padding)
    learnable = bilinear_conv_transpose(4, factor, padding)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), learnable(x), rtol=1e-6, atol=1e-6)
    assert list(fixed.parameters()) == [] and fixed.state_dict() == {}
