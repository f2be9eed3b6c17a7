"""DeepLab v1 trimap (boundary band) metrics against a brute-force float64 numpy re-computation."""
import math

import numpy as np
import pytest
import torch

from seglab.metrics import SegmentationMetrics
from seglab.metrics.boundary import BoundaryBandMetrics, boundary_band

IGNORE = 255
C = 4


# ---------------------------------------------------------------- brute-force reference (plain numpy)

def ref_boundary(target, ignore_index=IGNORE):
    """Boundary pixels with explicit loops: void, or a label different from a 4-neighbour in the image."""
    H, W = target.shape
    out = np.zeros((H, W), dtype=bool)
    for y in range(H):
        for x in range(W):
            if target[y, x] == ignore_index:
                out[y, x] = True
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and target[yy, xx] != target[y, x]:
                    out[y, x] = True
    return out


def ref_band(target, width, ignore_index=IGNORE):
    """Band via, for every pixel, the chessboard distance to the nearest boundary pixel."""
    boundary = ref_boundary(target, ignore_index)
    points = [(y, x) for y in range(target.shape[0]) for x in range(target.shape[1]) if boundary[y, x]]
    out = np.zeros(target.shape, dtype=bool)
    for y in range(target.shape[0]):
        for x in range(target.shape[1]):
            dist = min((max(abs(y - by), abs(x - bx)) for by, bx in points), default=math.inf)
            out[y, x] = dist <= width
    return out


def ref_metrics(preds, targets, width, num_classes=C, ignore_index=IGNORE):
    """Confusion matrix of the band pixels, then pixel accuracy and mIoU, all in float64 by hand."""
    n = np.zeros((num_classes, num_classes), dtype=np.float64)
    for pred, target in zip(preds, targets):
        band = ref_band(target, width, ignore_index)
        for y in range(target.shape[0]):
            for x in range(target.shape[1]):
                if band[y, x] and target[y, x] != ignore_index:
                    n[target[y, x], pred[y, x]] += 1.0
    ious = []
    for i in range(num_classes):
        union = n[i, :].sum() + n[:, i].sum() - n[i, i]
        if union > 0:
            ious.append(n[i, i] / union)
    total = n.sum()
    pixel_acc = sum(n[i, i] for i in range(num_classes)) / total if total > 0 else math.nan
    miou = sum(ious) / len(ious) if ious else math.nan
    return n, pixel_acc, miou


def random_pair(seed, H=13, W=17, cell=(4, 5), ignore_frac=0.06, flip_frac=0.3):
    """Blocky label map (so the band is not the whole image) with some void pixels, and a noisy pred."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, C, size=(-(-H // cell[0]), -(-W // cell[1])))
    target = np.repeat(np.repeat(coarse, cell[0], axis=0), cell[1], axis=1)[:H, :W].astype(np.int64)
    target[rng.random((H, W)) < ignore_frac] = IGNORE
    # a thick void block: its interior pixels are boundary pixels by the void rule only
    y, x = rng.integers(0, H - 3), rng.integers(0, W - 4)
    target[y:y + 3, x:x + 4] = IGNORE
    pred = np.where(target == IGNORE, rng.integers(0, C, size=(H, W)), target)
    flip = rng.random((H, W)) < flip_frac
    pred[flip] = rng.integers(0, C, size=int(flip.sum()))
    return pred.astype(np.int64), target


# ---------------------------------------------------------------- band mask

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("width", [0, 1, 3])
def test_band_matches_brute_force(seed, width):
    _, target = random_pair(seed)
    band = boundary_band(torch.from_numpy(target), width)
    assert band.dtype == torch.bool and band.shape == (13, 17)
    expected = ref_band(target, width)
    np.testing.assert_array_equal(band.numpy(), expected)
    # the test data are meaningful: the band is neither empty nor the whole image at width 0 and 1
    if width <= 1:
        assert 0 < expected.sum() < expected.size


def test_square_object_band_area():
    # 12x12 background with a 4x4 object at rows/cols 4..7.
    # Boundary pixels: the object's outer ring (16 - 4 interior = 12) and the 4 background pixels
    # 4-adjacent to each side (4 * 4 = 16; the diagonal corners (3,3) etc. are not 4-adjacent): 28.
    # Width 2: the ring dilated by 2 covers rows/cols 2..9 entirely (8 * 8 = 64); each side's outer
    # neighbours (e.g. row 3, cols 4..7) add one more row/col of 8 (row 1, cols 2..9): 4 * 8 = 32.
    # Pixels like (1, 1) are at distance 3 from (3, 4). Total 64 + 32 = 96.
    target = torch.zeros(12, 12, dtype=torch.int64)
    target[4:8, 4:8] = 1
    assert int(boundary_band(target, 0).sum()) == 28
    band = boundary_band(target, 2)
    assert int(band.sum()) == 96
    assert bool(band[1, 2]) and bool(band[10, 9]) and not bool(band[1, 1]) and not bool(band[0, 5])
    np.testing.assert_array_equal(band.numpy(), ref_band(target.numpy(), 2))


def test_void_pixels_are_boundary_and_borders_are_not():
    target = torch.full((9, 9), 2, dtype=torch.int64)
    assert not boundary_band(target, 3).any()  # constant image: no boundary, the border is none either
    target[4, 4] = IGNORE
    band0 = boundary_band(target, 0)
    assert int(band0.sum()) == 5  # the void pixel and its 4 differing neighbours
    assert int(boundary_band(target, 1).sum()) == 21  # 5x5 square minus its 4 corners
    # another ignore_index: 255 is then an ordinary label, same boundary here by the label rule
    assert torch.equal(boundary_band(target, 0, ignore_index=-1), band0)
    target[4, 4] = 2
    target[0, 0] = IGNORE  # a corner void pixel: only in-image neighbours count
    assert boundary_band(target, 0).nonzero().tolist() == [[0, 0], [0, 1], [1, 0]]


def test_void_interior_is_boundary():
    # a 5x5 void block in a constant image: its inner 3x3 pixels have only void neighbours and are
    # boundary pixels by the void rule alone. Width 0: the block (25) + 5 outer neighbours per side (20).
    target = torch.zeros(11, 11, dtype=torch.int64)
    target[3:8, 3:8] = IGNORE
    band = boundary_band(target, 0)
    assert int(band.sum()) == 45
    assert band[3:8, 3:8].all()
    # the same block as an ordinary label (ignore_index elsewhere): its interior is not boundary
    assert int(boundary_band(target, 0, ignore_index=-1).sum()) == 45 - 9


def test_large_width_covers_image():
    target = torch.zeros(5, 7, dtype=torch.int64)
    target[0, 0] = 1
    # boundary pixels (0, 0), (0, 1), (1, 0): every pixel (y, 6) of the last column is at distance
    # max(y, 5) = 5 of (0, 1) (and 6 of the other two), all others at most 4
    assert boundary_band(target, 5).all()
    assert (~boundary_band(target, 4)).nonzero().tolist() == [[y, 6] for y in range(5)]
    assert boundary_band(target, 10**6).all()


def test_tiny_and_empty_images():
    assert not boundary_band(torch.zeros(1, 1, dtype=torch.int64), 3).any()
    assert boundary_band(torch.full((1, 1), IGNORE), 3).all()
    assert boundary_band(torch.zeros(2, 0, 5, dtype=torch.int64), 1).shape == (2, 0, 5)


@pytest.mark.parametrize("width", [-1, 1.5, True, "2", None])
def test_bad_width_raises(width):
    target = torch.zeros(4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="width"):
        boundary_band(target, width)
    with pytest.raises(ValueError, match="width"):
        BoundaryBandMetrics(C, width)


def test_bad_target_raises():
    with pytest.raises(ValueError):
        boundary_band(torch.zeros(4, 4), 1)  # float
    with pytest.raises(ValueError):
        boundary_band(torch.zeros(1, 1, 4, 4, dtype=torch.int64), 1)  # 4-D


def test_batch_equals_per_image():
    pairs = [random_pair(seed) for seed in (10, 11, 12)]
    targets = torch.from_numpy(np.stack([t for _, t in pairs]))
    preds = torch.from_numpy(np.stack([p for p, _ in pairs]))
    band = boundary_band(targets, 2)
    assert band.shape == targets.shape
    for i in range(3):
        assert torch.equal(band[i], boundary_band(targets[i], 2))
    # images must not bleed into each other: a constant image next to busy ones keeps an empty band
    mixed = targets.clone()
    mixed[1] = 0
    assert not boundary_band(mixed, 3)[1].any()

    batched = BoundaryBandMetrics(C, 2)
    batched.update(preds, targets)
    single = BoundaryBandMetrics(C, 2)
    for i in range(3):
        single.update(preds[i], targets[i])
    assert torch.equal(batched.confusion, single.confusion)
    assert batched.compute() == single.compute()


# ---------------------------------------------------------------- band metrics

@pytest.mark.parametrize("width", [0, 1, 3])
def test_band_metrics_match_brute_force(width):
    pairs = [random_pair(seed) for seed in (20, 21, 22, 23)]
    metric = BoundaryBandMetrics(C, width)
    for pred, target in pairs:
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    n, pixel_acc, miou = ref_metrics([p for p, _ in pairs], [t for _, t in pairs], width)
    np.testing.assert_array_equal(metric.confusion.numpy(), n)
    result = metric.compute()
    assert abs(result["pixel_acc"] - pixel_acc) <= 1e-12
    assert abs(result["miou"] - miou) <= 1e-12
    # the band restriction matters: whole-image metrics differ
    full = SegmentationMetrics(C)
    for pred, target in pairs:
        full.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert full.confusion.sum() > metric.confusion.sum()


def test_pixels_outside_band_not_counted():
    target = torch.zeros(12, 12, dtype=torch.int64)
    target[4:8, 4:8] = 1
    pred = target.clone()
    pred[0, :] = 1  # wrong, but outside the width-2 band (row 0 is at distance 3)
    metric = BoundaryBandMetrics(2, 2)
    metric.update(pred, target)
    result = metric.compute()
    assert result["pixel_acc"] == 1.0 and result["miou"] == 1.0
    assert int(metric.confusion.sum()) == 96
    pred[1, 5] = 1  # inside the band: now one error out of 96
    metric.reset()
    metric.update(pred, target)
    assert metric.compute()["pixel_acc"] == pytest.approx(95 / 96, abs=1e-12)


def test_logits_equal_argmax():
    pairs = [random_pair(seed) for seed in (30, 31)]
    targets = torch.from_numpy(np.stack([t for _, t in pairs]))
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 13, 17, generator=generator, dtype=torch.float64)
    from_logits = BoundaryBandMetrics(C, 1)
    from_logits.update(logits, targets)
    from_ids = BoundaryBandMetrics(C, 1)
    from_ids.update(logits.argmax(dim=1), targets)
    assert from_logits.confusion.sum() > 0
    assert torch.equal(from_logits.confusion, from_ids.confusion)
    assert from_logits.compute() == from_ids.compute()


def test_empty_band_gives_nan_and_reset():
    metric = BoundaryBandMetrics(C, 1)
    metric.update(torch.zeros(5, 5, dtype=torch.int64), torch.ones(5, 5, dtype=torch.int64))
    assert int(metric.confusion.sum()) == 0
    assert math.isnan(metric.compute()["miou"])
    pred, target = random_pair(40)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert int(metric.confusion.sum()) > 0
    metric.reset()
    assert int(metric.confusion.sum()) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pred, target = random_pair(50)
    cpu = boundary_band(torch.from_numpy(target), 2)
    gpu = boundary_band(torch.from_numpy(target).cuda(), 2)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    metric = BoundaryBandMetrics(C, 2)
    metric.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
    reference = BoundaryBandMetrics(C, 2)
    reference.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert torch.equal(metric.confusion.cpu(), reference.confusion)
