"""Mask^X R-CNN: the weight transfer τ (the reference's layers, fills and Table 2 options), the stop-gradient,
partial mask supervision, the MLP branch, parameter counts, the class-agnostic baseline, and a checkpoint round
trip through training and resume."""
import pytest
import torch

from seglab import models
from seglab.models import registry
from seglab.io import safe_load as load_checkpoint
from seglab.engine.config import TrainConfig
from seglab.engine.train import Trainer, train
from seglab.models.maskrcnn import FastRCNNPredictor
from seglab.models.maskxrcnn import MaskXPredictor, WeightTransfer, detection_weights

from test_maskrcnn import random_targets

TINY = dict(fpn_channels=32, representation_size=48, mask_layers=[16], anchor_sizes=[8, 16, 32, 64, 128],
            min_size=64, max_size=64, frozen_bn=False, trainable_backbone_layers=5, box_batch_size_per_image=32)


def test_detection_weights_are_the_class_rows_of_the_box_predictor():
    predictor = FastRCNNPredictor(6, 3)
    cls, box = predictor.cls_score.weight, predictor.bbox_pred.weight
    assert torch.equal(detection_weights(predictor, "cls"), cls)
    assert torch.equal(detection_weights(predictor, "box")[2], box[8:12].flatten())  # class 2: rows 8..11
    both = detection_weights(predictor, "cls+box")
    assert both.shape == (3, 30) and torch.equal(both[1], torch.cat([cls[1], box[4:8].flatten()]))
    with pytest.raises(ValueError, match="transfer input"):
        detection_weights(predictor, "mask")


def test_weight_transfer_defaults_to_the_references_two_layers_with_leaky_relu_slope_0_1():
    transfer = WeightTransfer(10, 4, hidden=7)
    assert [name for name, _ in transfer.named_children()] == ["fc1", "act1", "fc2"]
    assert isinstance(transfer.act1, torch.nn.LeakyReLU) and transfer.act1.negative_slope == 0.1


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation, slope", [("relu", 0.0), ("leaky_relu", 0.1)])
def test_weight_transfer_depth_and_activation_follow_table_2(depth, activation, slope):
    torch.manual_seed(1)
    transfer = WeightTransfer(10, 4, hidden=6, depth=depth, activation=activation)
    layers = [transfer.get_submodule(f"fc{i}") for i in range(1, depth + 1)]
    widths = [10] + [6] * (depth - 1) + [4]  # depth 1: one linear map, no hidden layer
    assert [tuple(layer.weight.shape) for layer in layers] == list(zip(widths[1:], widths))
    assert sum(p.numel() for p in transfer.parameters()) == sum(o * i + o for o, i in zip(widths[1:], widths))
    x = torch.randn(5, 10)
    expected = x
    for i, layer in enumerate(layers):
        expected = expected @ layer.weight.T + layer.bias
        if i < depth - 1:
            expected = torch.where(expected > 0, expected, slope * expected)
    torch.testing.assert_close(transfer(x), expected)


def test_weight_transfer_is_msra_filled_with_zero_biases_like_caffe2():
    torch.manual_seed(2)
    transfer = WeightTransfer(5120, 256, hidden=256)  # R50-FPN widths: cls+box in, the mask head's 256 out
    for layer in (transfer.fc1, transfer.fc2):  # Caffe2 MSRAFill: N(0, 2 / fan_out), fan_out = out_features
        assert layer.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.03)
        assert abs(layer.weight.mean().item()) < 0.003 and torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_mask_loss_trains_tau_and_reaches_the_detection_weights_only_without_stop_gradient(stop_gradient):
    torch.manual_seed(1)
    box = FastRCNNPredictor(12, 4)
    predictor = MaskXPredictor(8, 8, 5 * 12, stop_gradient=stop_gradient)
    logits = predictor(torch.randn(3, 8, 14, 14), box)
    assert logits.shape == (3, 4, 28, 28)
    logits.sum().backward()
    assert predictor.transfer.fc1.weight.grad.abs().sum() > 0 and predictor.conv5_mask.weight.grad.abs().sum() > 0
    reached = box.cls_score.weight.grad is not None and box.cls_score.weight.grad.abs().sum() > 0
    assert reached != stop_gradient
    assert (box.bbox_pred.weight.grad is not None) != stop_gradient


def test_logits_are_the_transferred_1x1_convolution_without_a_bias():
    torch.manual_seed(2)
    box = FastRCNNPredictor(12, 4)
    predictor = MaskXPredictor(8, 6, 12, transfer_input="cls")
    assert {name.split(".")[0] for name, _ in predictor.named_parameters()} == {"conv5_mask", "transfer"}
    x = torch.randn(2, 8, 14, 14)
    features = torch.relu(predictor.conv5_mask(x))
    fcn = torch.nn.functional.conv2d(features, predictor.transfer(box.cls_score.weight)[:, :, None, None])
    torch.testing.assert_close(predictor(x, box), fcn)


def test_mlp_branch_is_one_fc_layer_on_the_deconvolved_features_tiled_over_classes():
    torch.manual_seed(3)
    box = FastRCNNPredictor(12, 4)
    predictor = MaskXPredictor(8, 6, 12, transfer_input="cls", mlp_branch=True)
    assert predictor.mlp.weight.shape == (28 * 28, 6 * 28 * 28)  # (2m)² logits from dim_reduced·(2m)² features
    assert predictor.mlp.weight.std().item() == pytest.approx(0.001, rel=0.02)  # the reference's GaussianFill
    assert torch.count_nonzero(predictor.mlp.bias) == 0
    x = torch.randn(2, 8, 14, 14)
    features = torch.relu(predictor.conv5_mask(x))
    fcn = torch.nn.functional.conv2d(features, predictor.transfer(box.cls_score.weight)[:, :, None, None])
    mlp = (features.flatten(1) @ predictor.mlp.weight.T + predictor.mlp.bias).view(2, 1, 28, 28)
    logits = predictor(x, box)
    torch.testing.assert_close(logits, fcn + mlp.repeat(1, 4, 1, 1))
    added = logits - fcn
    assert added.abs().max() > 0 and torch.allclose(added, added[:, :1].expand_as(added), atol=1e-6)


def test_parameter_counts_follow_from_the_layer_shapes():
    """R50-FPN, 21 classes: Mask R-CNN's 1×1 class logits (256·21 + 21) give way to τ (5120 → 256 → 256, the
    reference's widths); the MLP branch adds 256·28² → 28²."""
    tau = (5 * 1024 * 256 + 256) + (256 * 256 + 256)
    mlp = 256 * 28 ** 2 * 28 ** 2 + 28 ** 2
    for depth, expected in ((50, 45_173_624), (18, 32_213_880)):
        mask_rcnn = models.count_parameters(f"maskrcnn_resnet{depth}_fpn")
        assert models.count_parameters(f"maskxrcnn_resnet{depth}_fpn") == mask_rcnn - (256 * 21 + 21) + tau == expected
        assert models.count_parameters(f"maskxrcnn_resnet{depth}_fpn", mlp_branch=True) == expected + mlp
    assert mlp == 157_352_720
    three_layers = models.count_parameters("maskxrcnn_resnet50_fpn", transfer_depth=3)
    one_layer = models.count_parameters("maskxrcnn_resnet50_fpn", transfer_depth=1)
    assert three_layers - 45_173_624 == 256 * 256 + 256 and 45_173_624 - one_layer == 256 * 256 + 256


def test_transfer_options_reach_the_builder_through_the_registry():
    options = registry.options("maskxrcnn_resnet18_fpn")
    assert options["transfer_depth"] == 2 and options["transfer_activation"] == "leaky_relu"
    assert options["transfer_hidden"] is None and options["mlp_branch"] is False
    model = models.create("maskxrcnn_resnet18_fpn", 5, **TINY, transfer_depth=3, transfer_activation="relu",
                          transfer_hidden=12)
    transfer = model.roi_heads.mask_predictor.transfer
    assert [type(m).__name__ for m in transfer] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert transfer.fc1.weight.shape == (12, 5 * 48) and transfer.fc3.weight.shape == (16, 12)
    assert model.meta["options"]["transfer_depth"] == 3
    default = models.create("maskxrcnn_resnet18_fpn", 5, **TINY).roi_heads.mask_predictor.transfer
    assert default.fc1.weight.shape == (16, 5 * 48)  # hidden width: the mask head's (TINY: 16)


def losses_of(model, labels, seed=3):
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(generator, [(64, 64)] * 2, 5, per_image=3)
    for target in targets:
        target["labels"] = torch.tensor(labels)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(2)]
    return model.train()(images, targets)


def test_set_b_objects_give_an_exactly_zero_mask_loss_and_set_a_objects_do_not():
    torch.manual_seed(4)
    model = models.create("maskxrcnn_resnet18_fpn", 5, **TINY, mask_classes=[1, 2])
    only_b = losses_of(model, [3, 4, 3])
    assert only_b["loss_mask"].item() == 0.0 and only_b["loss_classifier"] > 0
    sum(only_b.values()).backward()  # the graph stays connected: no error, no NaN
    assert losses_of(model, [1, 3, 4])["loss_mask"] > 0


def test_every_class_gets_masks_at_inference_and_the_baseline_is_class_agnostic():
    torch.manual_seed(5)
    model = models.create("maskxrcnn_resnet18_fpn", 5, **TINY, mask_classes=[1], box_score_thresh=0.0).eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 64)])[0]
    assert len(detections["labels"]) > 0 and detections["masks"].shape[1:] == (1, 64, 64)
    heads = model.roi_heads
    weights = heads.mask_predictor.class_weights(heads.box_predictor)
    assert weights.shape == (5, 16) and torch.unique(weights, dim=0).shape[0] == 5  # a mask for every class
    baseline = models.create("maskrcnn_resnet18_fpn", 5, **TINY, class_agnostic_masks=True, mask_classes=[1, 2])
    assert baseline.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 1
    assert torch.isfinite(sum(losses_of(baseline, [1, 2, 4]).values()))


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="mask_classes is empty"):
        models.create("maskxrcnn_resnet18_fpn", 5, **TINY, mask_classes=[])
    with pytest.raises(ValueError, match="transfer_input must be one of"):
        models.create("maskxrcnn_resnet18_fpn", 5, **TINY, transfer_input="masks")
    with pytest.raises(ValueError, match="transfer_depth must be at least 1"):
        models.create("maskxrcnn_resnet18_fpn", 5, **TINY, transfer_depth=0)
    with pytest.raises(ValueError, match="transfer_activation must be one of"):
        models.create("maskxrcnn_resnet18_fpn", 5, **TINY, transfer_activation="gelu")


def tiny_config(tmp_path, **overrides):
    values = dict(model="maskxrcnn_resnet18_fpn", model_options=TINY, data="shapes", image_size=64, num_train=8,
                  val_split=None, batch_size=2, iters=4, ckpt_every=2, lr=0.01, out=str(tmp_path / "run"),
                  mask_classes=["circle", "square"])
    return TrainConfig(**(values | overrides))


def test_mask_classes_names_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown: \\['hexagon'\\]"):
        Trainer(tiny_config(tmp_path, mask_classes=["circle", "hexagon"]))
    with pytest.raises(ValueError, match="instance models only"):
        Trainer(tiny_config(tmp_path, model="fcn32s_vgg16", model_options={}))


def test_mask_x_trains_saves_and_resumes_through_the_standard_checkpoint(tmp_path):
    train(tiny_config(tmp_path, out=str(tmp_path / "straight")))
    train(tiny_config(tmp_path, out=str(tmp_path / "resumed"), stop_at=2))
    train(tiny_config(tmp_path, out=str(tmp_path / "resumed"), resume=True))
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["meta"]["options"]["mask_classes"] == [1, 2] and a["step"] == b["step"] == 4
    assert any(key.startswith("roi_heads.mask_predictor.transfer.") for key in a["model"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    model = models.load(tmp_path / "straight")
    assert isinstance(model.roi_heads.mask_predictor, MaskXPredictor)


@pytest.mark.parametrize("name, options", [("maskxrcnn_resnet18_fpn", TINY),
                                           ("fcis_resnet50", dict(width_mult=0.125, reduce_channels=16,
                                                                  min_size=64, max_size=64))])
def test_a_ground_truth_box_of_zero_area_is_a_clear_error(name, options):
    model = models.create(name, 5, **options).train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 10.0, 30.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="no positive width and height"):
        model([torch.rand(3, 64, 64)], [target])


def test_the_old_maskrcnn_names_are_aliases_for_one_release():
    from seglab.models import maskrcnn as old
    assert old.MaskXPredictor is MaskXPredictor and old.detection_weights is detection_weights
    assert old.maskxrcnn_resnet50_fpn is models.entry("maskxrcnn_resnet50_fpn").builder
