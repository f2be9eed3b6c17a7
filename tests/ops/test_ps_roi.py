"""Position-sensitive RoIAlign against torchvision.ops.ps_roi_align (forward and input gradients, float64),
the finer-than-cells output against torchvision on explicitly repeated channels, a hand-worked channel
mapping, gradcheck and bad shapes; position-sensitive RoI pooling against the FCIS reference kernel
transcribed in Python."""
import math

import pytest
import torch
import torchvision
from test_roi import random_boxes

from seglab.ops import PSRoIAlign, ps_roi_align, ps_roi_pool
from seglab.ops import roi as roi_module


def score_maps(out_channels, cells, generator, batch=2, height=13, width=17):
    return torch.randn(batch, out_channels * cells, height, width, generator=generator, dtype=torch.float64)


def backpropagate(outputs, generator):
    """The same random upstream gradient through each output."""
    upstream = torch.randn(outputs[0].shape, generator=generator, dtype=outputs[0].dtype).to(outputs[0].device)
    for out in outputs:
        (out * upstream).sum().backward()


def without_empty_bins(theirs, boxes, output_size, spatial_scale, sampling_ratio):
    """torchvision's output with 0 where it divides 0 by 0 (an adaptive grid over an empty box: ours gives 0),
    after checking that NaN appears only there."""
    if sampling_ratio > 0:
        return theirs
    pooled = torch.tensor(output_size if isinstance(output_size, tuple) else (output_size,) * 2)
    size = (boxes[:, [4, 3]] - boxes[:, [2, 1]]) * spatial_scale
    empty = (torch.ceil(size / pooled) == 0).any(1)
    assert torch.equal(theirs.isnan().flatten(1).any(1), empty)
    return torch.nan_to_num(theirs, nan=0.0)


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("output_size", [7, (3, 5), 1])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25])
def test_ps_roi_align_equals_torchvision_forward_and_gradient(sampling_ratio, output_size, spatial_scale):
    g = torch.Generator().manual_seed(0)
    pooled = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    x = score_maps(3, pooled[0] * pooled[1], g)
    boxes = random_boxes(40, 13, 17, spatial_scale, g)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = ps_roi_align(ours, boxes, output_size, spatial_scale, sampling_ratio)
    b = torchvision.ops.ps_roi_align(theirs, boxes, output_size, spatial_scale, sampling_ratio)
    assert a.shape == b.shape == (40, 3, *pooled)
    torch.testing.assert_close(a, without_empty_bins(b.detach(), boxes, output_size, spatial_scale, sampling_ratio),
                               rtol=0, atol=1e-10)
    backpropagate([a, b], g)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-10)


def repeated_per_bin(x, group, pooled):
    """The input torchvision needs for a (ph, pw) output from (kh, kw) cells: for each output channel, the
    channels of cell (i·kh // ph, j·kw // pw) copied to bin (i, j)'s slot c·ph·pw + i·pw + j."""
    (kh, kw), (ph, pw) = group, pooled
    batch, channels, height, width = x.shape
    cells = x.view(batch, channels // (kh * kw), kh, kw, height, width)
    rows = [i * kh // ph for i in range(ph)]
    cols = [j * kw // pw for j in range(pw)]
    return cells[:, :, rows][:, :, :, cols].reshape(batch, -1, height, width)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("group, pooled", [(7, 21), (3, (7, 5)), ((2, 3), 4)])
def test_finer_output_equals_torchvision_on_channels_repeated_per_bin(sampling_ratio, group, pooled):
    g = torch.Generator().manual_seed(1)
    group_hw = group if isinstance(group, tuple) else (group, group)
    pooled_hw = pooled if isinstance(pooled, tuple) else (pooled, pooled)
    x = score_maps(2, group_hw[0] * group_hw[1], g)
    boxes = random_boxes(25, 13, 17, 0.5, g)
    ours = x.clone().requires_grad_()
    repeated = repeated_per_bin(x, group_hw, pooled_hw).requires_grad_()
    a = ps_roi_align(ours, boxes, pooled, 0.5, sampling_ratio, group_size=group)
    b = torchvision.ops.ps_roi_align(repeated, boxes, pooled, 0.5, sampling_ratio)
    torch.testing.assert_close(a, without_empty_bins(b.detach(), boxes, pooled_hw, 0.5, sampling_ratio),
                               rtol=0, atol=1e-10)
    backpropagate([a, b], g)
    leaf = x.clone().requires_grad_()
    repeated_per_bin(leaf, group_hw, pooled_hw).backward(repeated.grad)  # a cell's gradient: the sum over its copies
    torch.testing.assert_close(ours.grad, leaf.grad, rtol=0, atol=1e-10)


def test_hand_example_each_bin_reads_its_own_cell():
    """Constant maps, channel q filled with q: a box inside the map samples only constants, so bin (i, j) of
    output channel c is c·kh·kw + cell(i, j). 2×2 cells assembled into 4×4: cell (i // 2, j // 2)."""
    x = torch.arange(8.0, dtype=torch.float64).view(1, 8, 1, 1).expand(1, 8, 6, 6).contiguous()
    box = torch.tensor([[0.0, 1.0, 1.0, 5.0, 5.0]], dtype=torch.float64)
    cells = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(ps_roi_align(x, box, 2)[0], torch.stack([cells, cells + 4]))
    finer = cells.repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(ps_roi_align(x, box, 4, group_size=2)[0], torch.stack([finer, finer + 4]))


def test_float32_list_boxes_module_chunks_and_empty_boxes(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = score_maps(2, 9, g).float()
    per_image = [random_boxes(6, 13, 17, 0.5, g)[:, 1:].float() for _ in range(2)]
    torch.testing.assert_close(PSRoIAlign(3, 0.5, 2)(x, per_image),
                               torchvision.ops.PSRoIAlign(3, 0.5, 2)(x, per_image), rtol=0, atol=1e-5)
    assert "group_size=None" in repr(PSRoIAlign(3, 0.5, 2))
    assert ps_roi_align(x, torch.zeros(0, 5), 3).shape == (0, 2, 3, 3)
    boxes = random_boxes(30, 13, 17, 0.5, g)
    whole = ps_roi_align(x.double(), boxes, 9, 0.5, group_size=3)
    monkeypatch.setattr(roi_module, "_CHUNK_ENTRIES", 500)
    leaf = x.double().requires_grad_()
    chunked = ps_roi_align(leaf, boxes, 9, 0.5, group_size=3)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    chunked.sum().backward()  # checkpointed chunks rebuild their indices in backward
    assert leaf.grad.abs().sum() > 0


def test_gradcheck_ps_roi_align():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0.3, 0.7, 4.6, 5.1], [0, 2.2, 1.4, 6.9, 3.3]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ps_roi_align(t, boxes, 2, 1.0, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: ps_roi_align(t, boxes, (4, 3), 1.0, 2, group_size=(2, 1)), (x,))


def test_bad_shapes_are_refused():
    x = torch.zeros(1, 10, 5, 5)
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match="multiple of the 3×3 cells"):
        ps_roi_align(x, box, 3)
    with pytest.raises(ValueError, match="multiple of the 2×2 cells"):
        ps_roi_align(torch.zeros(1, 6, 5, 5), box, 7, group_size=2)
    with pytest.raises(ValueError, match="positive"):
        ps_roi_align(x, box, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ps_roi_align(x[0], box, 1)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        ps_roi_align(x, box[:, 1:], 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_torchvision():
    g = torch.Generator().manual_seed(4)
    x = score_maps(3, 49, g).float().cuda()
    boxes = random_boxes(40, 13, 17, 0.25, g)[4:].float().cuda()  # no empty boxes: torchvision gives NaN there
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = ps_roi_align(ours, boxes, 7, 0.25, -1)
    b = torchvision.ops.ps_roi_align(theirs, boxes, 7, 0.25, -1)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    backpropagate([a, b], g)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-5)
    finer = ps_roi_align(x.double(), boxes.double(), 21, 0.25, 2, group_size=7)
    torch.testing.assert_close(finer.cpu(), ps_roi_align(x.double().cpu(), boxes.double().cpu(), 21, 0.25, 2,
                                                         group_size=7), rtol=0, atol=1e-10)


def reference_psroi_pooling(x, rois, pooled, spatial_scale, group):
    """The FCIS reference's PSROIPoolForwardKernel (msracver/FCIS psroi_pooling.cu), transcribed loop by loop
    in float64 (math.floor/ceil; C's round() is half away from zero). Autograd through it is the
    reference's backward: each covered pixel gets the bin's gradient over its area."""
    def c_round(v):
        return math.copysign(math.floor(abs(v) + 0.5), v)

    height, width = x.shape[2:]
    out_dim = x.shape[1] // (group * group)
    out = []
    for roi in rois.tolist():
        n = int(roi[0])
        start_w, start_h = c_round(roi[1]) * spatial_scale, c_round(roi[2]) * spatial_scale
        end_w, end_h = (c_round(roi[3]) + 1.0) * spatial_scale, (c_round(roi[4]) + 1.0) * spatial_scale
        bin_h, bin_w = max(end_h - start_h, 0.1) / pooled, max(end_w - start_w, 0.1) / pooled
        bins = []
        for ctop in range(out_dim):
            for ph in range(pooled):
                for pw in range(pooled):
                    hs = min(max(math.floor(ph * bin_h + start_h), 0), height)
                    he = min(max(math.ceil((ph + 1) * bin_h + start_h), 0), height)
                    ws = min(max(math.floor(pw * bin_w + start_w), 0), width)
                    we = min(max(math.ceil((pw + 1) * bin_w + start_w), 0), width)
                    gh = min(max(math.floor(ph * group / pooled), 0), group - 1)
                    gw = min(max(math.floor(pw * group / pooled), 0), group - 1)
                    c = (ctop * group + gh) * group + gw
                    empty = he <= hs or we <= ws
                    bins.append(x.new_zeros(()) if empty else x[n, c, hs:he, ws:we].mean())
        out.append(torch.stack(bins).view(out_dim, pooled, pooled))
    return torch.stack(out)


@pytest.mark.parametrize("pooled, group, spatial_scale", [(7, 7, 1.0), (21, 7, 0.25), (6, 3, 0.5), (3, 3, 1 / 16)])
def test_ps_roi_pool_equals_the_fcis_reference_forward_and_gradient(pooled, group, spatial_scale):
    """Random boxes (zero-size, inverted, outside, beyond the map, corners on .5 for the rounding) against
    the transcribed reference kernel, values and input gradients, float64."""
    g = torch.Generator().manual_seed(7)
    x = score_maps(2, group * group, g)
    boxes = random_boxes(12, 13, 17, spatial_scale, g)
    boxes[5:8, 1:] = boxes[5:8, 1:].floor() + 0.5
    boxes[8, 1:] = torch.tensor([-8.0, -8.0, 20.0, 16.0], dtype=torch.float64) / spatial_scale
    ours_in, theirs_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = ps_roi_pool(ours_in, boxes, pooled, spatial_scale, group_size=group)
    theirs = reference_psroi_pooling(theirs_in, boxes, pooled, spatial_scale, group)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    backpropagate([ours, theirs], g)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=0, atol=1e-12)


def test_ps_roi_pool_is_not_torchvisions_and_takes_float32_lists():
    """torchvision's ps_roi_pool rounds the scaled box instead (and has no +1 end): on the same input the
    two differ. float32 maps with per-image box lists give the float64 result to float32 precision."""
    g = torch.Generator().manual_seed(8)
    x = score_maps(2, 9, g)
    boxes = random_boxes(10, 13, 17, 0.5, g)
    ours, theirs = ps_roi_pool(x, boxes, 3, 0.5), torchvision.ops.ps_roi_pool(x, boxes, 3, 0.5)
    assert (ours - theirs).abs().max() > 0.1
    per_image = [boxes[boxes[:, 0] == i, 1:].float() for i in range(2)]
    single = ps_roi_pool(x.float(), per_image, 3, 0.5)
    order = torch.cat([torch.where(boxes[:, 0] == i)[0] for i in range(2)])
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), ours[order], rtol=0, atol=1e-5)
    assert ps_roi_pool(x, torch.zeros(0, 5, dtype=torch.float64), 3).shape == (0, 2, 3, 3)
    with pytest.raises(ValueError, match="multiple of the 2×2 cells"):
        ps_roi_pool(torch.zeros(1, 6, 5, 5), boxes[:1], 7, group_size=2)
