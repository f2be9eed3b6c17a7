"""FCIS: the instance I/O convention in training and eval on 64-pixel images, the joint formulation and the box
branch against a numpy computation, mask voting and OHEM against hand examples, gradients, images without
objects, the paper's layout (dilated conv5, map widths) and the registry."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_maskrcnn import assert_close_scaled, no_tf32, random_targets  # noqa: F401 (a fixture)

from seglab import models
from seglab.models.detection import label_proposals
from seglab.models.fcis import FCISRoIHeads, PSScoreMaps, mask_voting

SMALL = dict(width_mult=0.25, reduce_channels=64, min_size=64, max_size=64, anchor_sizes=(16, 32, 64),
             rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=200,
             rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, frozen_bn=False, trainable_backbone_layers=5)
NUM_CLASSES = 4  # with the background
EXPECTED_TRAINABLE_101 = 62_107_650  # fcis_resnet101 at 81 classes, defaults (computed here; 62,435,394 in all)


def roi_heads(num_classes, spatial_scale, group_size, **options):
    """Heads on given maps: their score-map convs (unused here) are a token 8-channel pair."""
    return FCISRoIHeads(PSScoreMaps(8, num_classes, group_size, 8), num_classes, spatial_scale, group_size=group_size,
                        **options)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return models.create("fcis_resnet50", NUM_CLASSES, **SMALL)


def test_train_returns_losses_and_eval_returns_instances_at_64px(small_model):
    g = torch.Generator().manual_seed(0)
    sizes = [(64, 64), (56, 72)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    torch.manual_seed(1)
    losses = small_model.train()(images, random_targets(g, sizes, NUM_CLASSES, per_image=2))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses.values())
    with torch.no_grad():
        detections = small_model.eval()(images)
    for detection, (height, width) in zip(detections, sizes):
        count = len(detection["boxes"])
        assert detection["boxes"].shape == (count, 4) and detection["scores"].shape == (count,)
        assert detection["labels"].dtype == torch.int64 and bool(((detection["labels"] >= 1)
                                                                  & (detection["labels"] < NUM_CLASSES)).all())
        assert detection["masks"].shape == (count, 1, height, width)
        assert bool(((detection["masks"] >= 0) & (detection["masks"] <= 1)).all())
        assert bool((detection["scores"][:-1] >= detection["scores"][1:]).all())
    assert sum(len(d["boxes"]) for d in detections) > 0


def test_joint_formulation_and_box_branch_match_numpy():
    """Constant maps make assembling exact: bin (i, j) of class c and side s holds the value of cell
    (i·k // m, j·k // m). Mask = softmax over (inside, outside) per pixel; class likelihood = mean over the
    RoI of max(inside, outside), softmaxed over classes; deltas = the k×k box cells averaged."""
    k, m, classes = 2, 4, 3
    rng = np.random.default_rng(0)
    values, box_values = rng.normal(size=(classes, 2, k, k)), rng.normal(size=(4, k, k))

    def constant_maps(v):
        return torch.from_numpy(v.reshape(-1))[None, :, None, None].expand(1, -1, 10, 10).contiguous()

    heads = roi_heads(classes, 0.5, k, mask_size=m)
    box = [torch.tensor([[4.0, 4.0, 14.0, 16.0]], dtype=torch.float64)]
    class_logits, mask_logits = heads.assemble(constant_maps(values), box)
    cells = np.arange(m) * k // m
    inside, outside = values[:, 0][:, cells][:, :, cells], values[:, 1][:, cells][:, :, cells]
    likelihood = np.maximum(inside, outside).mean((1, 2))
    np.testing.assert_allclose(F.softmax(class_logits, -1)[0].numpy(), np.exp(likelihood) / np.exp(likelihood).sum(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(mask_logits[0].sigmoid().numpy(), np.exp(inside) / (np.exp(inside) + np.exp(outside)),
                               rtol=0, atol=1e-12)
    deltas = heads.regress(constant_maps(box_values), box)
    np.testing.assert_allclose(deltas[0].numpy(), box_values.mean((1, 2)), rtol=0, atol=1e-12)


def test_mask_voting_hand_example():
    """Detection 0 = box (0,0,4,4), class 1, 2×2 masks (cell centres x, y ∈ {1, 3}). Voters of class 1 with
    IoU ≥ 0.5: itself (score 0.6, mask [[1, .5], [.25, 0]]) and box (1,0,5,4) (IoU 12/20 = 0.6, score 0.2,
    mask [[.8, .4], [.6, .2]] centred at x ∈ {2, 4}): read at x = 1 it is half its first column and half the
    zero outside, at x = 3 the mean of its columns → [[.4, .6], [.3, .4]]. Box (2,0,6,4) (IoU 1/3) and the
    class-2 candidate do not vote. Voted: (0.6·own + 0.2·resampled) / 0.8. Detection 1 (class 2) keeps its own.
    """
    d = torch.float64
    pool_boxes = torch.tensor([[0, 0, 4, 4], [1, 0, 5, 4], [0, 0, 4, 4], [2, 0, 6, 4]], dtype=d)
    pool_labels = torch.tensor([1, 1, 2, 1])
    pool_scores = torch.tensor([0.6, 0.2, 0.9, 0.5], dtype=d)
    pool_masks = torch.tensor([[[1, 0.5], [0.25, 0]], [[0.8, 0.4], [0.6, 0.2]], [[0.3, 0.7], [0.9, 0.1]],
                               [[1, 1], [1, 1]]], dtype=d)
    voted = mask_voting(pool_boxes[[0, 2]], pool_labels[[0, 2]], pool_boxes, pool_labels, pool_scores, pool_masks)
    expected = (0.6 * pool_masks[0] + 0.2 * torch.tensor([[0.4, 0.6], [0.3, 0.4]], dtype=d)) / 0.8
    torch.testing.assert_close(voted[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(voted[1], pool_masks[2], rtol=0, atol=1e-12)
    none = mask_voting(pool_boxes[:0], pool_labels[:0], pool_boxes, pool_labels, pool_scores, pool_masks)
    assert none.shape == (0, 2, 2)


def test_ohem_losses_are_the_means_over_the_selected_rois():
    """The heads' OHEM losses equal the reductions of their per-RoI losses over the 4 highest-loss RoIs."""
    g = torch.Generator().manual_seed(2)
    heads = roi_heads(NUM_CLASSES, 1 / 8, 3, mask_size=6, batch_size_per_image=4, ohem=True).train()
    score_maps = torch.randn(1, NUM_CLASSES * 2 * 9, 8, 8, generator=g, dtype=torch.float64)
    box_maps = torch.randn(1, 4 * 9, 8, 8, generator=g, dtype=torch.float64)
    targets = random_targets(g, [(64, 64)], NUM_CLASSES, per_image=2)
    targets[0]["boxes"] = targets[0]["boxes"].double()
    corner = torch.rand(12, 2, generator=g, dtype=torch.float64) * 40
    proposals = [torch.cat([corner, corner + 8 + torch.rand(12, 2, generator=g, dtype=torch.float64) * 24], 1)]
    losses = heads.loss(score_maps, box_maps, proposals, targets)
    rois, labels, matched = label_proposals(proposals, targets, heads.fg_iou_thresh, heads.bg_iou_thresh)
    per_roi = heads.per_roi_losses(*heads.assemble(score_maps, rois), heads.regress(box_maps, rois), rois, labels,
                                   matched, targets)
    top = sum(per_roi.values()).topk(4).indices
    positives = (labels[0][top] > 0).sum().clamp(min=1)
    torch.testing.assert_close(losses["loss_classifier"], per_roi["classifier"][top].mean())
    torch.testing.assert_close(losses["loss_box_reg"], per_roi["box_reg"][top].sum() / 4)
    torch.testing.assert_close(losses["loss_mask"], per_roi["mask"][top].sum() / positives)


def test_roi_stage_fits_free_score_maps():
    """The RoI stage alone (assembling, joint formulation, targets, losses) trained on free, learnable maps at
    image resolution: jittered ground-truth boxes become confidently classified, boxed and masked. A
    misaligned assembling or target would keep the mask loss near its start, log 2."""
    g = torch.Generator().manual_seed(5)
    targets = random_targets(g, [(48, 48)] * 2, NUM_CLASSES, per_image=2)
    heads = roi_heads(NUM_CLASSES, 1.0, 3, mask_size=12, batch_size_per_image=64).train()
    score_maps = torch.zeros(2, NUM_CLASSES * 2 * 9, 48, 48, requires_grad=True)
    box_maps = torch.zeros(2, 4 * 9, 48, 48, requires_grad=True)
    optimizer = torch.optim.Adam([score_maps, box_maps], lr=0.05)
    for _ in range(150):
        proposals = []
        for target in targets:
            boxes = target["boxes"].repeat(8, 1)
            sizes = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            corner = torch.rand(16, 2, generator=g) * 30
            background = torch.cat([corner, corner + 4 + torch.rand(16, 2, generator=g) * 14], 1)
            proposals.append(torch.cat([boxes + 0.1 * sizes * torch.randn(boxes.shape, generator=g), background]))
        losses = heads.loss(score_maps, box_maps, proposals, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert losses["loss_classifier"] < 0.2 and losses["loss_box_reg"] < 0.1 and losses["loss_mask"] < 0.2, losses


def test_score_map_init_options():
    """"normal": the reference's N(0, 0.01²); "kaiming": He normal (std √(2/fan-in) before the ReLU,
    √(1/fan-in) for the linear map convs); anything else is refused."""
    torch.manual_seed(6)
    normal, kaiming = PSScoreMaps(256, 3, 3, 512), PSScoreMaps(256, 3, 3, 512, init="kaiming")
    for conv in (normal.conv_new_1, normal.fcis_cls_seg, normal.fcis_bbox):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05) and not conv.bias.any()
    assert kaiming.conv_new_1.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    for conv in (kaiming.fcis_cls_seg, kaiming.fcis_bbox):
        assert conv.weight.std().item() == pytest.approx((1 / 512) ** 0.5, rel=0.05) and not conv.bias.any()
    with pytest.raises(ValueError, match="'normal' or 'kaiming'"):
        PSScoreMaps(8, 3, 3, 8, init="xavier")


def test_gradients_reach_every_parameter(small_model):
    g = torch.Generator().manual_seed(3)
    small_model.train().zero_grad()
    torch.manual_seed(3)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    sum(small_model(images, random_targets(g, [(64, 64)] * 2, NUM_CLASSES, per_image=2)).values()).backward()
    missing = [name for name, p in small_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_images_without_objects_train_and_no_detections_give_empty_masks(small_model):
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    torch.manual_seed(4)
    losses = small_model.train()([torch.rand(3, 64, 64)], [empty])
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0
    small_model.roi_heads.score_thresh = 1.0  # nothing scores above 1
    try:
        with torch.no_grad():
            detection = small_model.eval()([torch.rand(3, 64, 48)])[0]
    finally:
        small_model.roi_heads.score_thresh = 0.05
    assert detection["boxes"].shape == (0, 4) and detection["masks"].shape == (0, 1, 64, 48)


def test_paper_layout_dilated_conv5_and_score_map_widths():
    """ResNet-101 at output stride 16 with every conv5 unit dilated 2; 2·k²·(C+1) = 2·49·81 inside/outside maps
    and 4·k² = 196 box maps on a 1024-channel reduction (COCO: 81 classes with the background)."""
    with torch.device("meta"):
        model = models.create("fcis_resnet101", 81)
    assert model.backbone.strides == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16}
    assert [block.conv2.dilation for block in model.backbone.layer4] == [(2, 2)] * 3
    maps = model.roi_heads.score_maps
    assert maps.conv_new_1.out_channels == 1024
    assert maps.fcis_cls_seg.out_channels == 2 * 49 * 81 and maps.fcis_bbox.out_channels == 196
    assert model.rpn.head.cls_logits.in_channels == 1024 and model.rpn.head.cls_logits.out_channels == 12
    with torch.device("meta"):
        finer = models.create("fcis_resnet50", 81, output_stride=8)
    assert finer.backbone.strides == {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}
    assert finer.roi_heads.spatial_scale == 1 / 8 and finer.transform.size_divisible == 8
    assert [block.conv2.dilation for block in finer.backbone.layer4] == [(4, 4)] * 3


def test_registry_lists_both_and_parameter_counts_are_stable():
    """Trainable parameters at 81 classes with the defaults (BatchNorm, conv1 and layer1 frozen); the paper
    publishes no count. All parameters: ResNet-101 without fc, the RPN head on conv4 (1024 wide, 12
    anchors), the 1×1 reduction and the two map convs."""
    assert {"fcis_resnet50", "fcis_resnet101"} <= set(models.names("instance"))
    assert models.count_parameters("fcis_resnet101", 81) == EXPECTED_TRAINABLE_101
    with torch.device("meta"):
        model = models.create("fcis_resnet101", 81, frozen_bn=False, trainable_backbone_layers=5)
    resnet101_without_fc = 44_549_160 - (2048 * 1000 + 1000)
    heads = (1024 * 1024 * 9 + 1024) + (1024 * 12 + 12) + (1024 * 48 + 48)  # RPN: 3×3 conv, objectness, deltas
    heads += (2048 * 1024 + 1024) + (1024 * 7938 + 7938) + (1024 * 196 + 196)  # conv_new_1, fcis_cls_seg, fcis_bbox
    assert sum(p.numel() for p in model.parameters()) == resnet101_without_fc + heads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_trains(no_tf32):
    """The small model on CUDA against a CPU copy (float32, TF32 off): conv5 score and box maps, the assembled
    class and mask logits and the deltas of the same proposals; then eval detections and a training step with
    gradients for every parameter on CUDA."""
    torch.manual_seed(12)
    cpu = models.create("fcis_resnet50", NUM_CLASSES, **SMALL).eval()
    gpu = copy.deepcopy(cpu).cuda()
    g = torch.Generator().manual_seed(13)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    heads, gpu_heads = cpu.roi_heads, gpu.roi_heads
    with torch.no_grad():
        batch, sizes, _ = cpu.transform(images)
        features, gpu_features = cpu.backbone(batch), gpu.backbone(batch.cuda())
        maps, gpu_maps = heads.score_maps(features["layer4"]), gpu_heads.score_maps(gpu_features["layer4"])
        for ours, theirs in zip(gpu_maps, maps):
            assert_close_scaled(ours.cpu(), theirs, 1e-4)
        proposals = [p[:50] for p in cpu.rpn(features, batch.shape[-2:], sizes)[0]]
        gpu_proposals = [p.cuda() for p in proposals]
        for ours, theirs in zip(gpu_heads.assemble(gpu_maps[0], gpu_proposals), heads.assemble(maps[0], proposals)):
            assert_close_scaled(ours.cpu(), theirs, 1e-4)
        assert_close_scaled(gpu_heads.regress(gpu_maps[1], gpu_proposals).cpu(), heads.regress(maps[1], proposals), 1e-4)
        detections = gpu([image.cuda() for image in images])
    assert all(d["masks"].is_cuda and d["masks"].shape[1:] == (1, 64, 64) for d in detections)
    targets = [{k: v.cuda() for k, v in t.items()} for t in random_targets(g, [(64, 64)] * 2, NUM_CLASSES, 2)]
    losses = gpu.train()([image.cuda() for image in images], targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None and p.grad.is_cuda for p in gpu.parameters())
