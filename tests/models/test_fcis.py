"""FCIS: the instance I/O convention in training and eval on 64-pixel images, the joint formulation and the box
branch against a numpy computation, mask voting and OHEM against hand examples, gradients, images without
objects, the paper's layout (dilated conv5, map widths) and the registry."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from test_maskrcnn import assert_close_scaled, no_tf32, random_targets  # noqa: F401 (a fixture)

from seglab import models
from seglab.models.detection import label_proposals, mask_targets
from seglab.models.fcis import FCISRoIHeads, PSScoreMaps, mask_voting
from seglab.ops import ps_roi_pool

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


@pytest.mark.parametrize("assemble", ["pool", "align"])
def test_joint_formulation_and_box_branch_match_numpy(assemble):
    """Constant maps make assembling exact: bin (i, j) of class c and side s holds the value of cell
    (i·k // m, j·k // m). Side 0 is "outside", 1 "inside" (the reference's softmax labels). Mask =
    softmax over (outside, inside) per pixel; class likelihood = mean over the RoI of max(inside, outside),
    softmaxed over classes; deltas = the assembled box bins averaged. "separate" takes the class logits
    from its own k²·C detection maps instead, R-FCN's mean of the assembled cells."""
    k, m, classes = 2, 4, 3
    rng = np.random.default_rng(0)
    values, box_values, cls_values = rng.normal(size=(classes, 2, k, k)), rng.normal(size=(4, k, k)), \
        rng.normal(size=(classes, k, k))

    def constant_maps(v):
        return torch.from_numpy(v.reshape(-1))[None, :, None, None].expand(1, -1, 10, 10).contiguous()

    heads = roi_heads(classes, 0.5, k, mask_size=m, assemble=assemble)
    box = [torch.tensor([[4.0, 4.0, 14.0, 16.0]], dtype=torch.float64)]
    class_logits, mask_logits = heads.score_rois({"cls_seg": constant_maps(values)}, box)
    cells = np.arange(m) * k // m
    outside, inside = values[:, 0][:, cells][:, :, cells], values[:, 1][:, cells][:, :, cells]
    likelihood = np.maximum(inside, outside).mean((1, 2))
    np.testing.assert_allclose(F.softmax(class_logits, -1)[0].numpy(), np.exp(likelihood) / np.exp(likelihood).sum(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(mask_logits[0].sigmoid().numpy(), np.exp(inside) / (np.exp(inside) + np.exp(outside)),
                               rtol=0, atol=1e-12)
    deltas = heads.regress({"bbox": constant_maps(box_values)}, box)
    np.testing.assert_allclose(deltas[0].numpy(), box_values.mean((1, 2)), rtol=0, atol=1e-12)
    separate, _ = heads.score_rois({"cls_seg": constant_maps(values), "cls": constant_maps(cls_values)}, box)
    np.testing.assert_allclose(separate[0].numpy(), cls_values.mean((1, 2)), rtol=0, atol=1e-12)


def test_box_maps_are_the_foreground_half_of_the_references_class_agnostic_box_conv():
    """The reference's ``fcis_bbox`` has 8·k² channels, (reg class·4 + coord)·k² + cell with reg class 0 the
    background; its bbox_pred is the 21×21 PSROIPooling of them averaged, of which it uses 4:8. Its
    channels 4k²..8k² loaded into seglab's 4·k² conv give those deltas."""
    k, m = 3, 6
    g = torch.Generator().manual_seed(9)
    features = torch.randn(1, 16, 9, 9, generator=g, dtype=torch.float64)
    reference = torch.randn(8 * k * k, 16, 1, 1, generator=g, dtype=torch.float64)
    boxes = [torch.tensor([[3.0, 2.0, 30.0, 25.0], [10.0, 12.0, 20.0, 33.0]], dtype=torch.float64)]
    theirs = ps_roi_pool(F.conv2d(features, reference), boxes, m, 0.25, group_size=k).mean((2, 3))[:, 4:]
    heads = roi_heads(NUM_CLASSES, 0.25, k, mask_size=m).double()
    ours = heads.regress({"bbox": F.conv2d(features, reference[4 * k * k:])}, boxes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def voted_by_hand(boxes, labels, pool_boxes, pool_scores, pool_masks, image_size, voting, iou=0.5, thresh=0.4):
    """The reference's mask_aggregation (msracver/FCIS lib/mask/mask_transform.py) re-done one detection at a
    time with torchvision's mask pasting: normalised class scores of every overlapping candidate, masks
    (the class's, or the candidate's top class's binarised at 0.4) summed in the image, ≥ 0.4, tight box,
    cropped and resized to m×m."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste
    m = pool_masks.shape[-1]
    masks, out_boxes = [], []
    for box, label in zip(boxes, labels):
        voters = torch.where(torchvision.ops.box_iou(box[None], pool_boxes)[0] >= iou)[0]
        weights = pool_scores[voters, label] / pool_scores[voters, label].sum()
        if voting == "paper":
            own = pool_masks[voters, label]
        else:
            own = (pool_masks[voters, pool_scores[voters].argmax(1)] >= thresh).double()
        pasted = tv_paste(own[:, None], pool_boxes[voters], image_size, padding=1)[:, 0]
        canvas = (pasted * weights[:, None, None]).sum(0)
        rows, cols = torch.where(canvas >= thresh)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        inside = (canvas[y0:y1, x0:x1] >= thresh).double()[None, None]
        masks.append(F.interpolate(inside, size=(m, m), mode="bilinear", align_corners=False)[0, 0])
        out_boxes.append(torch.tensor([x0, y0, x1, y1], dtype=torch.float64))
    return torch.stack(masks), torch.stack(out_boxes)


@pytest.mark.parametrize("voting", ["paper", "reference"])
def test_mask_voting_follows_the_reference_aggregation(voting):
    """Random candidates around two objects in a 40×48 image, three classes with the background: the voted
    masks and tight boxes equal the one-detection-at-a-time re-computation."""
    g = torch.Generator().manual_seed(10)
    centres = torch.tensor([[12.0, 14.0, 26.0, 30.0], [24.0, 8.0, 44.0, 22.0]], dtype=torch.float64)
    pool_boxes = centres.repeat(6, 1) + torch.randn(12, 4, generator=g, dtype=torch.float64) * 1.5
    pool_scores = torch.softmax(torch.randn(12, 3, generator=g, dtype=torch.float64) * 2, 1)
    pool_masks = torch.rand(12, 3, 6, 6, generator=g, dtype=torch.float64)
    boxes, labels = pool_boxes[:2], torch.tensor([1, 2])
    masks, voted_boxes, kept = mask_voting(boxes, labels, pool_boxes, pool_scores, pool_masks, (40, 48),
                                           voting=voting)
    expected_masks, expected_boxes = voted_by_hand(boxes, labels, pool_boxes, pool_scores, pool_masks, (40, 48),
                                                   voting)
    assert kept.tolist() == [0, 1]
    torch.testing.assert_close(voted_boxes, expected_boxes, rtol=0, atol=0)
    torch.testing.assert_close(masks, expected_masks, rtol=0, atol=1e-12)


@pytest.mark.parametrize("voting", ["paper", "reference"])
def test_mask_voting_counts_every_overlapping_candidate_and_drops_empty_votes(voting):
    """A candidate with IoU ≥ 0.5 votes whatever its top class and however low its score (taking it out of the
    pool changes the vote); one below 0.5 never does (taking it out changes nothing); a detection whose voted
    mask is empty is dropped."""
    d = torch.float64
    pool_boxes = torch.tensor([[0, 0, 16, 16], [1, 0, 17, 16], [8, 0, 24, 16]], dtype=d)  # IoU 1, 0.88 and 0.33
    pool_scores = torch.tensor([[0.6, 0.3, 0.1], [0.7, 0.25, 0.05], [0.0, 1.0, 0.0]], dtype=d)
    pool_masks = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(11), dtype=d)
    detection = (torch.tensor([[0, 0, 16, 16]], dtype=d), torch.tensor([1]))

    def vote(keep, masks=pool_masks):
        return mask_voting(*detection, pool_boxes[keep], pool_scores[keep], masks[keep], (20, 30), voting=voting)

    everything = vote([0, 1, 2])
    assert everything[2].tolist() == [0]
    assert not torch.equal(vote([0, 2])[0], everything[0])  # the background-topped, 0.25-scoring voter counts
    for ours, theirs in zip(vote([0, 1]), everything):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    masks, boxes, kept = vote([0, 1, 2], torch.zeros_like(pool_masks))
    assert masks.shape == (0, 4, 4) and boxes.shape == (0, 4) and kept.tolist() == []
    with pytest.raises(ValueError, match="voting"):
        mask_voting(*detection, pool_boxes, pool_scores, pool_masks, (20, 30), voting="mean")


def test_ohem_ranks_and_reduces_as_the_reference():
    """OHEM keeps the 4 RoIs of highest cls + 10·(per-pixel mean mask loss) + box; the losses are cls's mean,
    box's sum / 4 and 10 × the pixel-summed mask loss / 4 over them (LOSS_WEIGHT 1, 10, 1; normalised by the
    RoIs kept). The per-RoI mask loss is the sum over pixels against targets binarised at 0.4."""
    g = torch.Generator().manual_seed(2)
    heads = roi_heads(NUM_CLASSES, 1 / 8, 3, mask_size=6, batch_size_per_image=4, ohem=True).train()
    maps = {"cls_seg": torch.randn(1, NUM_CLASSES * 2 * 9, 8, 8, generator=g, dtype=torch.float64),
            "bbox": torch.randn(1, 4 * 9, 8, 8, generator=g, dtype=torch.float64)}
    targets = random_targets(g, [(64, 64)], NUM_CLASSES, per_image=2)
    targets[0]["boxes"] = targets[0]["boxes"].double()
    corner = torch.rand(12, 2, generator=g, dtype=torch.float64) * 40
    proposals = [torch.cat([corner, corner + 8 + torch.rand(12, 2, generator=g, dtype=torch.float64) * 24], 1)]
    losses = heads.loss(maps, proposals, targets)
    rois, labels, matched = label_proposals(proposals, targets, heads.fg_iou_thresh, heads.bg_iou_thresh)
    class_logits, mask_logits = heads.score_rois(maps, rois)
    per_roi = heads.per_roi_losses(class_logits, mask_logits, heads.regress(maps, rois), rois, labels, matched,
                                   targets)
    top = (per_roi["classifier"] + 10 * per_roi["mask"] / 36 + per_roi["box_reg"]).topk(4).indices
    torch.testing.assert_close(losses["loss_classifier"], per_roi["classifier"][top].mean())
    torch.testing.assert_close(losses["loss_box_reg"], per_roi["box_reg"][top].sum() / 4)
    torch.testing.assert_close(losses["loss_mask"], 10 * per_roi["mask"][top].sum() / 4)
    positive = torch.where(labels[0] > 0)[0][0]
    target = mask_targets(targets[0]["masks"], rois[0][positive][None], matched[0][positive][None], 6)[0] >= 0.4
    by_hand = F.binary_cross_entropy_with_logits(mask_logits[positive, labels[0][positive]], target.double(),
                                                 reduction="sum")
    torch.testing.assert_close(per_roi["mask"][positive], by_hand)


def test_roi_stage_fits_free_score_maps():
    """The RoI stage alone (assembling, joint formulation, targets, losses) trained on free, learnable maps at
    image resolution: jittered ground-truth boxes become confidently classified, boxed and masked (measured:
    classification 1.39 → 0.24, mask 543 → 72 with the reference's weight 10 on the pixel-summed mask loss,
    box 0.10 → 0.007). A misaligned assembling or target would keep the mask loss near its start."""
    g = torch.Generator().manual_seed(5)
    targets = random_targets(g, [(48, 48)] * 2, NUM_CLASSES, per_image=2)
    heads = roi_heads(NUM_CLASSES, 1.0, 3, mask_size=12, batch_size_per_image=64).train()
    maps = {"cls_seg": torch.zeros(2, NUM_CLASSES * 2 * 9, 48, 48, requires_grad=True),
            "bbox": torch.zeros(2, 4 * 9, 48, 48, requires_grad=True)}
    optimizer = torch.optim.Adam(maps.values(), lr=0.05)
    first = None
    for _ in range(150):
        proposals = []
        for target in targets:
            boxes = target["boxes"].repeat(8, 1)
            sizes = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            corner = torch.rand(16, 2, generator=g) * 30
            background = torch.cat([corner, corner + 4 + torch.rand(16, 2, generator=g) * 14], 1)
            proposals.append(torch.cat([boxes + 0.1 * sizes * torch.randn(boxes.shape, generator=g), background]))
        losses = heads.loss(maps, proposals, targets)
        first = first or {name: loss.item() for name, loss in losses.items()}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert losses["loss_classifier"] < 0.25 * first["loss_classifier"], (first, losses)
    assert losses["loss_mask"] < 0.2 * first["loss_mask"] and losses["loss_box_reg"] < 0.1, (first, losses)


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
    assert {"fcis_resnet18", "fcis_resnet50", "fcis_resnet101"} <= set(models.names("instance"))
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
        for name in maps:
            assert_close_scaled(gpu_maps[name].cpu(), maps[name], 1e-4)
        proposals = [p[:50] for p in cpu.rpn(features, batch.shape[-2:], sizes)[0]]
        gpu_proposals = [p.cuda() for p in proposals]
        for ours, theirs in zip(gpu_heads.score_rois(gpu_maps, gpu_proposals), heads.score_rois(maps, proposals)):
            assert_close_scaled(ours.cpu(), theirs, 1e-4)
        assert_close_scaled(gpu_heads.regress(gpu_maps, gpu_proposals).cpu(), heads.regress(maps, proposals), 1e-4)
        detections = gpu([image.cuda() for image in images])
    assert all(d["masks"].is_cuda and d["masks"].shape[1:] == (1, 64, 64) for d in detections)
    targets = [{k: v.cuda() for k, v in t.items()} for t in random_targets(g, [(64, 64)] * 2, NUM_CLASSES, 2)]
    losses = gpu.train()([image.cuda() for image in images], targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None and p.grad.is_cuda for p in gpu.parameters())


def test_reference_defaults_and_options_reach_the_heads():
    """The reference's COCO settings by default (BBOX_STDS 0.2/0.2/0.5/0.5 → weights 5/5/2/2, LOSS_WEIGHT 1/10/1,
    BINARY_THRESH 0.4, PSROIPooling, CONVNEW3: conv_new_1 at 3× the learning rate); options change them."""
    from seglab.engine.config import TrainConfig
    from seglab.engine.optim import build_optimizer

    with torch.device("meta"):
        model = models.create("fcis_resnet50", 81)
        other = models.create("fcis_resnet50", 81, assemble="align", formulation="separate", voting="reference",
                              loss_weights=(1, 1, 1), conv_new_lr_mult=1.0)
    heads = model.roi_heads
    assert heads.box_coder.weights == (5.0, 5.0, 2.0, 2.0) and heads.loss_weights == (1.0, 10.0, 1.0)
    assert heads.binary_thresh == 0.4 and heads.assemble == "pool" and heads.voting == "paper"
    assert heads.score_maps.fcis_cls is None and other.roi_heads.score_maps.fcis_cls.out_channels == 81 * 49
    assert (other.roi_heads.assemble, other.roi_heads.voting, other.roi_heads.loss_weights) == \
        ("align", "reference", (1, 1, 1))
    small = models.create("fcis_resnet50", NUM_CLASSES, **SMALL)
    optimizer = build_optimizer(small, TrainConfig(lr=0.01))
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    conv_new = small.roi_heads.score_maps.conv_new_1
    assert rates[id(conv_new.weight)] == rates[id(conv_new.bias)] == pytest.approx(0.03)
    assert rates[id(small.roi_heads.score_maps.fcis_cls_seg.weight)] == pytest.approx(0.01)
    for bad, match in (({"assemble": "copy"}, "assemble"), ({"formulation": "both"}, "formulation")):
        with pytest.raises(ValueError, match=match):
            models.create("fcis_resnet50", NUM_CLASSES, **SMALL, **bad)


def test_fcis_resnet18_shapes_config_is_within_a_quarter_of_the_small_mask_rcnns_parameters():
    """The comparison's two configs: the same ResNet-18 at full width, parameter counts within ±25%."""
    from seglab.engine.config import load_config

    counts = {}
    for name in ("fcis_resnet18", "maskrcnn_resnet18_fpn"):
        config = load_config(f"configs/{name}_shapes.yaml")
        assert config.model == name and config.iters == 1200 and config.batch_size == 8
        with torch.device("meta"):
            model = models.create(name, 5, **config.model_options)
        counts[name] = sum(p.numel() for p in model.parameters())
        assert [p.shape for n, p in model.backbone.named_parameters() if n.startswith(("body.layer", "layer"))] \
            == [p.shape for n, p in models.create("fcis_resnet18", 5, frozen_bn=False).backbone.named_parameters()
                if n.startswith("layer")]
    assert 0.75 <= counts["fcis_resnet18"] / counts["maskrcnn_resnet18_fpn"] <= 1.25, counts
