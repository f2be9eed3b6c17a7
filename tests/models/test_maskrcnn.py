"""Mask R-CNN against torchvision: stage by stage on a converted ResNet-50-FPN (random weights, eval), training
losses under the same seed on a small ResNet-18-FPN, and the pieces (anchors, matching, mask loss, pasting)
against torchvision's own functions or a hand computation (the shared parts: tests/models/detection)."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN as TVMaskRCNN
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection import anchor_utils, backbone_utils, faster_rcnn, mask_rcnn
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste_masks_in_image
from torchvision.ops import FrozenBatchNorm2d, box_iou

from seglab import interop, models
from seglab.models.detection import paste_masks_in_image
from seglab.models.maskrcnn import mask_loss

SMALL = dict(fpn_channels=128, representation_size=256, mask_layers=(64, 64), anchor_sizes=(8, 16, 32, 64, 128),
             box_batch_size_per_image=128, min_size=64, max_size=64, frozen_bn=False, trainable_backbone_layers=5)


def random_targets(generator, sizes, num_classes, per_image=3):
    """Rectangles with a random elliptic mask inside each, boxes = the masks' extents."""
    targets = []
    for height, width in sizes:
        boxes, masks = [], []
        for _ in range(per_image):
            x0, y0 = (torch.rand(2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])).long().tolist()
            w, h = (torch.rand(2, generator=generator) * torch.tensor([width * 0.3, height * 0.3]) + 8).long().tolist()
            yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            mask = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1
            ys, xs = torch.where(mask)
            boxes.append(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
            masks.append(mask.to(torch.uint8))
        targets.append({"boxes": torch.stack(boxes), "masks": torch.stack(masks),
                        "labels": torch.randint(1, num_classes, (per_image,), generator=generator)})
    return targets


def capture(model, names):
    """Forward hooks recording the outputs of the named submodules on the next call."""
    outputs = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    return outputs


@pytest.fixture
def no_tf32():
    """float32 on both sides of a CUDA-vs-CPU comparison: TF32 off for cuDNN convolutions and matmuls."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield
    torch.set_float32_matmul_precision(precision)


def assert_close_scaled(got, expected, tol):
    """|got − expected| ≤ tol · max|expected| (features here reach ~10²: an absolute 1e-5 is below their ulp)."""
    scale = expected.abs().max().clamp(min=1)
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=tol)


def matched_detections(ours, theirs, score_tol=1e-4):
    """Index pairs (ours, theirs) of detections with the same label and IoU > 0.99, greedy by our order.

    Tie-breaking: our RoIAlign (seglab.ops, embedding-bag gathers) and torchvision's C++ kernel sum in
    different orders, so class scores differ by ~1e-6 (measured 1.2e-6). Two detections scoring closer than
    that may swap ranks, and one may cross the ``detections_per_img`` cut; so detections are matched by box
    and label, not by rank, and an unmatched one must score within ``score_tol`` of the cut (the lowest kept
    score). In the run here all detections match, in the same order.
    """
    iou = box_iou(ours["boxes"], theirs["boxes"])
    iou[ours["labels"][:, None] != theirs["labels"][None, :]] = 0
    pairs, used = [], set()
    for i in range(len(iou)):
        j = int(iou[i].argmax()) if len(theirs["boxes"]) else -1
        if j >= 0 and iou[i, j] > 0.99 and j not in used:
            pairs.append((i, j))
            used.add(j)
    cut = theirs["scores"].min()
    for side, kept in (("ours", {i for i, _ in pairs}), ("theirs", used)):
        scores = (ours if side == "ours" else theirs)["scores"]
        for k in set(range(len(scores))) - kept:
            assert abs(scores[k] - cut) < score_tol, f"unmatched detection {k} of {side} scores {scores[k]}"
    return torch.tensor(pairs).T


@pytest.fixture(scope="module")
def r50():
    """torchvision's Mask R-CNN R50-FPN (random weights, eval, score threshold 0; 50 detections per image
    rather than 100 halve the mask head's time), the converted seglab model, and every stage's output of
    both on the same two images (one forward each, recorded by hooks)."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=320,
                                                            max_size=480, box_score_thresh=0.0,
                                                            box_detections_per_img=50).eval()
    ours = interop.from_torchvision(tv).eval()
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 240, 320, generator=generator), torch.rand(3, 200, 260, generator=generator)]
    stages = ["transform", "backbone", "rpn", "roi_heads"]
    tv_out, our_out = capture(tv, stages), capture(ours, stages)
    with torch.no_grad():
        tv_out["final"], our_out["final"] = tv(images), ours(images)
    return tv, ours, images, tv_out, our_out


def test_converted_model_carries_torchvisions_settings(r50):
    tv, ours, *_ = r50
    assert ours.transform.min_size == (320,) and ours.transform.max_size == 480
    assert (ours.roi_heads.score_thresh, ours.roi_heads.nms_thresh, ours.roi_heads.detections_per_img) == (0.0, 0.5, 50)
    assert ours.rpn.post_nms_top_n == {"training": 2000, "testing": 1000}
    assert ours.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert isinstance(ours.backbone.body.bn1, nn.BatchNorm2d)  # torchvision without weights: plain BatchNorm
    assert all(p.requires_grad for p in ours.parameters())  # ... and every layer trains
    assert list(ours.state_dict()) == list(tv.state_dict())


def test_transform_matches_torchvision(r50):
    _, _, _, tv_out, our_out = r50
    (image_list, _), (batch, sizes, _) = tv_out["transform"], our_out["transform"]
    assert sizes == [tuple(s) for s in image_list.image_sizes] == [(320, 426), (320, 416)]
    assert batch.shape == image_list.tensors.shape == (2, 3, 320, 448)
    torch.testing.assert_close(batch, image_list.tensors, rtol=0, atol=0)


def test_backbone_features_match_torchvision(r50):
    _, _, _, tv_out, our_out = r50
    assert list(our_out["backbone"]) == list(tv_out["backbone"])
    for name, expected in tv_out["backbone"].items():
        assert_close_scaled(our_out["backbone"][name], expected, 1e-5)


def test_anchors_match_torchvision(r50):
    tv, ours, _, tv_out, _ = r50
    image_list, _ = tv_out["transform"]
    features = list(tv_out["backbone"].values())
    expected = tv.rpn.anchor_generator(image_list, features)
    got = ours.rpn.anchor_generator(tuple(image_list.tensors.shape[-2:]), [f.shape[-2:] for f in features])
    assert got.shape == (3 * sum(f.shape[-2] * f.shape[-1] for f in features), 4)
    for anchors in expected:
        torch.testing.assert_close(got, anchors, rtol=0, atol=0)


def test_rpn_proposals_match_torchvision(r50):
    # The backbone and RPN run the same float operations in the same order (bit-equal features and logits),
    # so top-k and NMS keep the same boxes in the same order: no tie can break differently.
    _, _, _, tv_out, our_out = r50
    (expected, _), (got, _) = tv_out["rpn"], our_out["rpn"]
    assert [len(p) for p in got] == [len(p) for p in expected] == [1000, 1000]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-4)


def test_box_head_outputs_match_torchvision_on_the_same_proposals(r50):
    tv, ours, _, tv_out, _ = r50
    image_list, _ = tv_out["transform"]
    features, proposals = tv_out["backbone"], tv_out["rpn"][0][1:]  # the second image's (smaller: faster)
    sizes, heads = image_list.image_sizes[1:], tv.roi_heads
    with torch.no_grad():
        expected = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))
        got = ours.roi_heads.box_predictions(features, proposals, sizes)
    for g, e in zip(got, expected):
        assert_close_scaled(g, e, 1e-5)


def test_detections_and_masks_match_torchvision(r50):
    _, _, _, tv_out, our_out = r50
    for ours, theirs in zip(our_out["final"], tv_out["final"]):
        assert len(ours["boxes"]) > 0 and len(theirs["boxes"]) > 0
        i, j = matched_detections(ours, theirs)
        assert len(i) >= len(theirs["boxes"]) - 1
        # measured: 7.6e-5 px at most (≈ 2 float32 ulps of coordinates up to 480)
        torch.testing.assert_close(ours["boxes"][i], theirs["boxes"][j], rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(ours["scores"][i], theirs["scores"][j], rtol=0, atol=1e-4)
        assert torch.equal(ours["labels"][i], theirs["labels"][j])
        assert ours["masks"].shape[1:] == theirs["masks"].shape[1:]
        torch.testing.assert_close(ours["masks"][i], theirs["masks"][j], rtol=0, atol=1e-4)


def test_masks_match_torchvision_for_the_same_boxes(r50):
    tv, ours, images, tv_out, _ = r50
    image_list, _ = tv_out["transform"]
    features, sizes = tv_out["backbone"], image_list.image_sizes
    detections, _ = tv_out["roi_heads"]
    boxes = [d["boxes"][:20] for d in detections]  # 20 per image keep the test short
    labels = torch.cat([d["labels"][:20] for d in detections])
    heads = tv.roi_heads
    with torch.no_grad():
        expected = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, sizes)))
        got = ours.roi_heads.mask_logits(features, boxes, sizes)
    assert_close_scaled(got, expected, 1e-5)
    # pasted into the (resized) first image: our probabilities and paste against torchvision's
    size, first = tuple(sizes[0]), slice(0, len(boxes[0]))
    probs = [logits[first][torch.arange(len(boxes[0])), labels[first]][:, None].sigmoid() for logits in (got, expected)]
    torch.testing.assert_close(paste_masks_in_image(probs[0], boxes[0], size),
                               tv_paste_masks_in_image(probs[1], boxes[0], size), rtol=0, atol=1e-4)


def test_mask_loss_uses_only_the_ground_truth_class():
    generator = torch.Generator().manual_seed(6)
    gt_masks = [(torch.rand(2, 20, 24, generator=generator) > 0.5).to(torch.uint8)]
    gt_labels = [torch.tensor([3, 1])]
    proposals = [torch.tensor([[2.0, 3.0, 15.0, 18.0], [0.0, 0.0, 24.0, 20.0], [5.5, 4.5, 9.0, 12.0]])]
    matched = [torch.tensor([1, 0, 1])]
    logits = torch.randn(3, 4, 6, 6, generator=generator, requires_grad=True)
    loss = mask_loss(logits, proposals, gt_masks, gt_labels, matched)
    rois = torch.cat([matched[0][:, None].float(), proposals[0]], 1)
    targets = torchvision.ops.roi_align(gt_masks[0][:, None].float(), rois, (6, 6), 1.0)[:, 0]
    x = logits.detach()[torch.arange(3), torch.tensor([1, 3, 1])]  # the class of each proposal's ground truth
    by_hand = -(targets * F.logsigmoid(x) + (1 - targets) * F.logsigmoid(-x)).mean()
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)
    loss.backward()
    gradient_used = logits.grad.abs().sum((2, 3)) > 0
    assert gradient_used.tolist() == [[False, True, False, False], [False, False, False, True],
                                      [False, True, False, False]]


def tv_small_maskrcnn(num_classes, norm_layer=nn.BatchNorm2d, **options):
    """torchvision's MaskRCNN assembled with the small configuration's modules (ResNet-18, FPN 128, ...)."""
    body = torchvision.models.resnet18(weights=None, norm_layer=norm_layer)
    backbone = backbone_utils.BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                                              [64, 128, 256, 512], 128)
    anchors = anchor_utils.AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    return TVMaskRCNN(backbone, None, min_size=64, max_size=64, rpn_anchor_generator=anchors,
                      box_head=faster_rcnn.TwoMLPHead(128 * 7 * 7, 256),
                      box_predictor=faster_rcnn.FastRCNNPredictor(256, num_classes),
                      mask_head=mask_rcnn.MaskRCNNHeads(128, [64, 64], 1),
                      mask_predictor=mask_rcnn.MaskRCNNPredictor(64, 64, num_classes), box_batch_size_per_image=128,
                      **options)


def test_small_model_converts_and_trains_like_torchvision_under_the_same_seed():
    torch.manual_seed(7)
    tv = tv_small_maskrcnn(5)
    ours = interop.from_torchvision(tv)
    assert ours.rpn.anchor_generator.sizes[0] == (8,) and ours.backbone.out_channels == 128
    generator = torch.Generator().manual_seed(8)
    sizes = [(64, 64), (56, 72)]
    images = [torch.rand(3, *size, generator=generator) for size in sizes]
    targets = random_targets(generator, sizes, 5)
    torch.manual_seed(9)
    image_list, tv_targets = tv.transform.train()(images, targets)
    torch.manual_seed(9)
    batch, _, our_targets = ours.transform.train()(images, targets)
    torch.testing.assert_close(batch, image_list.tensors, rtol=0, atol=0)
    for got, expected in zip(our_targets, tv_targets):
        assert all(torch.equal(got[key], expected[key]) for key in ("boxes", "labels", "masks"))
    losses = {}
    for name, model in (("tv", tv), ("ours", ours)):
        torch.manual_seed(9)  # the same draws: transform size choice, then RPN and RoI sampling
        losses[name] = model.train()(images, targets)
    assert set(losses["ours"]) == set(losses["tv"]) == {"loss_classifier", "loss_box_reg", "loss_mask",
                                                        "loss_objectness", "loss_rpn_box_reg"}
    for key, expected in losses["tv"].items():  # measured: ≤ 2.4e-7 apart
        torch.testing.assert_close(losses["ours"][key], expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(10)  # the sampling is random: another seed gives another classifier loss
    assert ours(images, targets)["loss_classifier"] != losses["ours"]["loss_classifier"]
    sum(losses["ours"].values()).backward()
    assert [n for n, p in ours.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_from_torchvision_carries_frozen_bn_eps_and_frozen_stages():
    torch.manual_seed(14)
    tv = tv_small_maskrcnn(3, norm_layer=FrozenBatchNorm2d, box_score_thresh=0.0)
    tv_utils.overwrite_eps(tv, 0.0)  # what torchvision does for its COCO weights
    for name, parameter in tv.backbone.body.named_parameters():
        parameter.requires_grad_(name.startswith(("layer3", "layer4")))
    ours = interop.from_torchvision(tv)
    assert isinstance(ours.backbone.body.bn1, FrozenBatchNorm2d) and ours.backbone.body.layer4[0].bn2.eps == 0.0
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == \
        {n: p.requires_grad for n, p in tv.named_parameters()}
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(15))]
    with torch.no_grad():
        expected, got = tv.eval()(images)[0], ours.eval()(images)[0]
    assert len(expected["labels"]) > 0 and torch.equal(got["labels"], expected["labels"])
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(got["masks"], expected["masks"], rtol=0, atol=1e-4)


def test_resnet18_small_configuration_forward_backward_on_64px_images():
    torch.manual_seed(10)
    model = models.create("maskrcnn_resnet18_fpn", 4, **SMALL)
    print(f"maskrcnn_resnet18_fpn, small configuration: {sum(p.numel() for p in model.parameters()):,} parameters")
    generator = torch.Generator().manual_seed(11)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(2)]
    losses = model.train()(images, random_targets(generator, [(64, 64)] * 2, 4, per_image=2))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with torch.no_grad():
        detections = model.eval()(images)
    assert [d["masks"].shape[1:] for d in detections] == [(1, 64, 64)] * 2
    assert all(((d["masks"] >= 0) & (d["masks"] <= 1)).all() for d in detections)


def test_images_without_objects_train_and_no_detections_give_empty_masks():
    torch.manual_seed(16)
    model = models.create("maskrcnn_resnet18_fpn", 3, **SMALL, box_score_thresh=1.0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 70)]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, *image.shape[-2:], dtype=torch.uint8)} for image in images]
    losses = model.train()(images, empty)
    assert losses["loss_mask"] == losses["loss_box_reg"] == losses["loss_rpn_box_reg"] == 0
    sum(losses.values()).backward()
    with torch.no_grad():
        detections = model.eval()(images)
    assert [d["masks"].shape for d in detections] == [(0, 1, 64, 64), (0, 1, 48, 70)]
    with pytest.raises(ValueError, match="positive width"):
        model.train()(images[:1], [dict(empty[0], boxes=torch.tensor([[5.0, 5.0, 5.0, 9.0]]),
                                        labels=torch.tensor([1]))])


def test_roi_pool_type_pool_runs_and_differs_from_align():
    torch.manual_seed(12)
    align = models.create("maskrcnn_resnet18_fpn", 3, **SMALL, box_score_thresh=0.0).eval()
    pool = models.create("maskrcnn_resnet18_fpn", 3, **SMALL, box_score_thresh=0.0, roi_pool_type="pool").eval()
    pool.load_state_dict(align.state_dict())
    assert pool.roi_heads.box_roi_pool.mode == pool.roi_heads.mask_roi_pool.mode == "pool"
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(13))]
    with torch.no_grad():
        features = align.backbone(align.transform(images)[0])
        boxes = [torch.tensor([[3.2, 5.7, 40.1, 33.3], [10.5, 12.5, 60.0, 58.2]])]
        by_align = align.roi_heads.box_roi_pool(features, boxes, [(64, 64)])
        by_pool = pool.roi_heads.box_roi_pool(features, boxes, [(64, 64)])
        out = pool(images)
    assert by_pool.shape == by_align.shape and not torch.allclose(by_pool, by_align)
    assert len(out[0]["boxes"]) > 0


def test_registry_lists_both_and_counts_torchvisions_parameters():
    assert {"maskrcnn_resnet50_fpn", "maskrcnn_resnet18_fpn"} <= set(models.names("instance"))
    with torch.device("meta"):
        tv_plain = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        body = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
        tv_frozen = TVMaskRCNN(backbone_utils._resnet_fpn_extractor(body, 3), 91)
    # torchvision's documented count (its COCO weights: FrozenBatchNorm2d, whose affine terms are buffers)
    assert models.count_parameters("maskrcnn_resnet50_fpn", 91, trainable_backbone_layers=5) == 44_401_393
    # torchvision without weights: plain BatchNorm, everything trains
    assert models.count_parameters("maskrcnn_resnet50_fpn", 91, frozen_bn=False, trainable_backbone_layers=5) \
        == sum(p.numel() for p in tv_plain.parameters()) == 44_454_513
    # the default (frozen BatchNorm, conv1 and layer1 frozen) trains what torchvision trains with ImageNet weights
    assert models.count_parameters("maskrcnn_resnet50_fpn", 91) \
        == sum(p.numel() for p in tv_frozen.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="does not take"):
        models.create("maskrcnn_resnet18_fpn", 3, no_such_option=1)


def test_bn_eps_option_sets_the_backbone_batch_norm_eps():
    """Loading torchvision's COCO_V1 checkpoint from disk needs eps 0, as torchvision sets it."""
    with torch.device("meta"):
        model = models.create("maskrcnn_resnet18_fpn", 3, bn_eps=0.0)
    eps = {m.eps for m in model.backbone.body.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))}
    assert eps == {0.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_stage_by_stage_and_trains(no_tf32):
    check_device_matches_cpu(torch.device("cuda"))


def check_device_matches_cpu(device):
    """The small model on ``device`` against a CPU copy: features, box-head outputs and mask logits for the
    same proposals, eval detections on the device, and a training step with gradients for every parameter."""
    torch.manual_seed(12)
    cpu = models.create("maskrcnn_resnet18_fpn", 4, **SMALL).eval()
    other = copy.deepcopy(cpu).to(device)
    generator = torch.Generator().manual_seed(13)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(2)]
    with torch.no_grad():
        batch, sizes, _ = cpu.transform(images)
        features, other_features = cpu.backbone(batch), other.backbone(batch.to(device))
        for name in features:
            assert_close_scaled(other_features[name].cpu(), features[name], 1e-4)
        proposals = [p[:50] for p in cpu.rpn(features, batch.shape[-2:], sizes)[0]]
        other_proposals = [p.to(device) for p in proposals]
        for ours, theirs in zip(other.roi_heads.box_predictions(other_features, other_proposals, sizes),
                                cpu.roi_heads.box_predictions(features, proposals, sizes)):
            assert_close_scaled(ours.cpu(), theirs, 1e-4)
        assert_close_scaled(other.roi_heads.mask_logits(other_features, other_proposals, sizes).cpu(),
                            cpu.roi_heads.mask_logits(features, proposals, sizes), 1e-4)
        detections = other([image.to(device) for image in images])
    assert all(d["masks"].device.type == device.type and d["masks"].shape[1:] == (1, 64, 64) for d in detections)
    targets = [{k: v.to(device) for k, v in t.items()} for t in random_targets(generator, [(64, 64)] * 2, 4, 2)]
    losses = other.train()([image.to(device) for image in images], targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None and p.grad.device.type == device.type for p in other.parameters())
