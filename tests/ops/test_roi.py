"""RoIPool / RoIAlign / MultiScaleRoIAlign against torchvision.ops (forward and input gradients), a
hand-worked example, the FPN level rule, and gradcheck."""
import pytest
import torch
import torchvision

from seglab.ops import MultiScaleRoIAlign, RoIAlign, RoIPool, fpn_levels, roi_align, roi_pool
from seglab.ops import roi as roi_module


def random_boxes(k, height, width, scale, generator, batch=2):
    """(K, 5) boxes in image coordinates (feature size / scale) that cross every border, plus tiny,
    zero-size and inverted ones."""
    size = torch.tensor([width / scale, height / scale], dtype=torch.float64)
    corner = torch.rand(k, 2, generator=generator, dtype=torch.float64) * size * 1.2 - 0.1 * size
    extent = torch.rand(k, 2, generator=generator, dtype=torch.float64) * size * 0.6
    boxes = torch.cat([torch.randint(0, batch, (k, 1), generator=generator).double(), corner, corner + extent], 1)
    boxes[0, 3:] = boxes[0, 1:3]                      # zero-size
    boxes[1, 3:] = boxes[1, 1:3] + 0.3                # smaller than a pixel
    boxes[2, 1:] = torch.tensor([5.0, 5.0, 2.0, 3.0])  # inverted (x2 < x1)
    boxes[3, 1:] = torch.tensor([-40.0, -40.0, -20.0, -20.0]) / scale  # entirely outside
    return boxes


@pytest.fixture
def features():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 13, 17, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("output_size", [7, (3, 5)])
def test_roi_align_equals_torchvision_forward_and_gradient(features, aligned, sampling_ratio, output_size):
    x, g = features
    boxes = random_boxes(40, 13, 17, 0.25, g)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = roi_align(ours, boxes, output_size, 0.25, sampling_ratio, aligned)
    b = torchvision.ops.roi_align(theirs, boxes, output_size, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    upstream = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (a * upstream).sum().backward()
    (b * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25, 0.125])
@pytest.mark.parametrize("output_size", [7, (2, 3), 1])
def test_roi_pool_equals_torchvision_forward_and_gradient(features, spatial_scale, output_size):
    x, g = features
    boxes = random_boxes(40, 13, 17, spatial_scale, g)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = roi_pool(ours, boxes, output_size, spatial_scale)
    b = torchvision.ops.roi_pool(theirs, boxes, output_size, spatial_scale)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    upstream = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (a * upstream).sum().backward()
    (b * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_pool_ties_give_torchvision_values_and_gradients_exactly(output_size):
    """Features of three values tie in most bins: the gradient must go to the first maximum in row-major
    order, as torchvision's. Integer upstream gradients make the sums exact in any order."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (2, 6, 40, 48), generator=g).float()
    boxes = random_boxes(60, 40, 48, 0.5, g).float()
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = roi_pool(ours, boxes, output_size, 0.5)
    b = torchvision.ops.roi_pool(theirs, boxes, output_size, 0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    upstream = torch.randint(-4, 5, a.shape, generator=g).float()
    (a * upstream).sum().backward()
    (b * upstream).sum().backward()
    assert (ours.grad != 0).any()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0)


def test_float32_list_boxes_and_modules_match_torchvision(features):
    x, g = features
    x = x.float()
    per_image = [random_boxes(6, 13, 17, 0.5, g)[:, 1:].float() for _ in range(2)]
    torch.testing.assert_close(RoIAlign(5, 0.5, 2, aligned=True)(x, per_image),
                               torchvision.ops.RoIAlign(5, 0.5, 2, aligned=True)(x, per_image), rtol=0, atol=1e-5)
    torch.testing.assert_close(RoIPool((4, 3), 0.5)(x, per_image), torchvision.ops.RoIPool((4, 3), 0.5)(x, per_image))
    empty = torch.zeros(0, 5)
    assert roi_align(x, empty, 7).shape == (0, 5, 7, 7) and roi_pool(x, empty, 7).shape == (0, 5, 7, 7)
    for op in (roi_align, roi_pool):  # no boxes (an FPN level without RoIs) add nothing to the gradient
        leaf = x.clone().requires_grad_()
        (op(leaf, empty, 7).sum() + leaf.sum()).backward()
        torch.testing.assert_close(leaf.grad, torch.ones_like(x), rtol=0, atol=0)


def test_chunked_gathers_give_the_same_result(features, monkeypatch):
    x, g = features
    boxes = random_boxes(30, 13, 17, 0.25, g)
    whole_align, whole_pool = roi_align(x, boxes, 7, 0.25, -1), roi_pool(x, boxes, 7, 0.25)
    monkeypatch.setattr(roi_module, "_CHUNK_ENTRIES", 500)
    monkeypatch.setattr(roi_module, "_POOL_CHUNK", 2000)
    torch.testing.assert_close(roi_align(x, boxes, 7, 0.25, -1), whole_align, rtol=0, atol=1e-12)
    torch.testing.assert_close(roi_pool(x, boxes, 7, 0.25), whole_pool, rtol=0, atol=0)


def test_lecture_example_roipool_quantises_where_roialign_samples():
    """The 8×8 feature map v[y, x] = 8y + x and a region whose corners fall between cells,
    (x1, y1, x2, y2) = (0.8, 1.6, 6.4, 5.2), pooled to 2×2.

    RoIPool rounds the corners to (1, 2, 6, 5): a 6×4-cell region, bins of 3×2 cells (rows 2-3 | 4-5,
    columns 1-3 | 4-6); each bin's maximum is its bottom-right cell: 8·3+3, 8·3+6, 8·5+3, 8·5+6.
    RoIAlign keeps the region: bins of 2.8×1.8, sampled at 1/4 and 3/4 of each bin (sampling_ratio 2):
    x ∈ {1.5, 2.9} | {4.3, 5.7}, y ∈ {2.05, 2.95} | {3.85, 4.75}. On a linear map bilinear interpolation
    is exact, so a bin's value is 8·mean(y) + mean(x): 8·2.5 + 2.2, 8·2.5 + 5.0, 8·4.3 + 2.2, 8·4.3 + 5.0.
    With aligned=True every sample moves by −0.5 pixel in x and y: 8·0.5 + 0.5 = 4.5 less.
    """
    v = (8 * torch.arange(8.0)[:, None] + torch.arange(8.0)[None, :]).view(1, 1, 8, 8).double()
    box = torch.tensor([[0.0, 0.8, 1.6, 6.4, 5.2]], dtype=torch.float64)
    pooled = roi_pool(v, box, 2)[0, 0]
    aligned_false = roi_align(v, box, 2, sampling_ratio=2)[0, 0]
    aligned_true = roi_align(v, box, 2, sampling_ratio=2, aligned=True)[0, 0]
    torch.testing.assert_close(pooled, torch.tensor([[27.0, 30.0], [43.0, 46.0]], dtype=torch.float64))
    torch.testing.assert_close(aligned_false, torch.tensor([[22.2, 25.0], [36.6, 39.4]], dtype=torch.float64))
    torch.testing.assert_close(aligned_true, torch.tensor([[17.7, 20.5], [32.1, 34.9]], dtype=torch.float64))
    torch.testing.assert_close(pooled, torchvision.ops.roi_pool(v, box, 2)[0, 0])
    torch.testing.assert_close(aligned_false, torchvision.ops.roi_align(v, box, 2, sampling_ratio=2)[0, 0])


def test_gradcheck_roi_align_and_roi_pool():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0.3, 0.7, 4.6, 5.1], [0, 2.2, 1.4, 6.9, 3.3]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, boxes, 3, 1.0, -1, True), (x,))
    assert torch.autograd.gradcheck(lambda t: roi_align(t, boxes, (2, 3), 1.0, 2, False), (x,))
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, boxes, 2, 1.0), (x,))


def test_fpn_level_rule():
    """k = ⌊4 + log2(√(wh)/224) + 1e-6⌋ clamped to [2, 5], returned relative to k_min = 2."""
    sides = torch.tensor([224.0, 112.0, 448.0, 223.9, 8.0, 2000.0, 56.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], 1)
    assert fpn_levels(boxes, 2, 5).tolist() == [2, 1, 3, 1, 0, 3, 0]
    assert fpn_levels(torch.tensor([[0.0, 0.0, 448.0, 112.0]]), 2, 5).tolist() == [2]  # √(wh) = 224


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_multiscale_roi_align_equals_torchvision(sampling_ratio):
    g = torch.Generator().manual_seed(0)
    features = {name: torch.randn(2, 4, 320 // s, 288 // s, generator=g)
                for name, s in [("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64)]}
    boxes = []
    for _ in range(2):
        corner = torch.rand(40, 2, generator=g) * 250
        boxes.append(torch.cat([corner, corner + torch.rand(40, 2, generator=g) * 300 + 1], 1))
    boxes[0][:3] = torch.tensor([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 112.0, 112.0], [10.0, 10.0, 458.0, 458.0]])
    shapes = [(320, 288), (300, 280)]
    ours = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio)(features, boxes, shapes)
    theirs = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio)(features, boxes, shapes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    pooled = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio, mode="pool")(features, boxes, shapes)
    assert pooled.shape == ours.shape and not torch.allclose(pooled, ours)
    with pytest.raises(ValueError, match="mode"):
        MultiScaleRoIAlign(["0"], 7, 2, mode="max")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_torchvision(features):
    x, g = features
    boxes = random_boxes(40, 13, 17, 0.25, g)
    x, boxes = x.float().cuda(), boxes.float().cuda()
    torch.testing.assert_close(roi_align(x, boxes, 7, 0.25, -1, True),
                               torchvision.ops.roi_align(x, boxes, 7, 0.25, -1, True), rtol=0, atol=1e-5)
    torch.testing.assert_close(roi_pool(x, boxes, 7, 0.25), torchvision.ops.roi_pool(x, boxes, 7, 0.25))


def test_bad_boxes_are_reported(features):
    x, _ = features
    with pytest.raises(ValueError, match="K, 5"):
        roi_align(x, torch.zeros(3, 4), 7)
    with pytest.raises(ValueError, match="K, 4"):
        roi_pool(x, [torch.zeros(3, 5)], 7)
