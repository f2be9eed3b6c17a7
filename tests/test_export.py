"""ONNX export: every semantic family and Mask R-CNN against PyTorch in onnxruntime, seglab's RoI ops as ONNX
ops, `seglab export` and `seglab predict --onnx` end to end, and the errors of bad input."""
import contextlib
import io
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from PIL import Image

import seglab
from seglab.cli import main
from seglab.data import Shapes
from seglab.engine.config import TrainConfig
from seglab.engine.instance import predict_files as predict_instance_files
from seglab.engine.train import train
from seglab.export import OnnxModel, to_onnx
from seglab.ops import batched_nms, ps_roi_align, roi_align, roi_pool

MASKRCNN_SMALL = dict(frozen_bn=False, trainable_backbone_layers=5, fpn_channels=32, representation_size=64,
                      mask_layers=(16, 16), anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_test=200,
                      rpn_post_nms_top_n_test=100, min_size=64, max_size=96, box_score_thresh=0.0)


def well_scaled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with logits of order one, as a trained model has: zero-initialised layers
    (FCN's scores) drawn at random, BatchNorm statistics measured on random images (the default ones let
    ResNet logits grow to 1e5), and each ResNet bottleneck's residual scaled by 0.1 (its last BatchNorm's γ):
    with unit residuals the identity path grows block after block, and float32 rounding with it, to 5e-5 of
    the logits in PyTorch alone."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        for name, norm in norms.items():
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches below
            if name.endswith(".bn3"):
                norm.weight.fill_(0.1)
        if norms:
            model.train()
            for _ in range(2):
                model(torch.randn(8, 3, 64, 64, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "deeplabv1_vgg16", "dilation_vgg16", "deeplabv2_resnet101",
                                  "deeplabv3plus_resnet50", "gcn_resnet50"])
def test_semantic_family_exported_once_matches_pytorch_at_several_sizes(name, tmp_path):
    model = well_scaled(seglab.models.create(name, 5, width_mult=0.0625))
    report = to_onnx(model, tmp_path / "model.onnx", height=40, width=56)
    assert report.exporter == "dynamo" and report.dynamic
    assert [check["shape"] for check in report.checks] == [(1, 3, 40, 56), (2, 3, 32, 45)]
    exported = OnnxModel(tmp_path / "model.onnx")
    images = torch.randn(1, 3, 33, 47, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)["out"]
    got = exported(images)["out"]
    assert got.shape == expected.shape
    assert float(expected.abs().max()) > 0.1  # logits that can differ, not zeros
    for diff, agreement in [(c["max_abs_diff"], c["argmax_agreement"]) for c in report.checks] + \
            [(float((got - expected).abs().max()), float((got.argmax(1) == expected.argmax(1)).float().mean()))]:
        assert diff <= 1e-4 and agreement >= 0.999


def test_maskrcnn_exports_boxes_scores_and_masks_that_match_pytorch_and_predicts_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = seglab.models.create("maskrcnn_resnet18_fpn", 5, **MASKRCNN_SMALL).eval()
    report = to_onnx(model, tmp_path / "maskrcnn.onnx", height=61, width=83)
    assert report.exporter == "torchscript" and not report.dynamic and report.opset == 17
    assert report.checks[0]["detections"] == 100  # score threshold 0: the mask head runs on every detection
    exported = OnnxModel(tmp_path / "maskrcnn.onnx")
    image = torch.randint(0, 256, (3, 61, 83), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    with torch.no_grad():
        expected = model([image / 255])[0]
    got = exported([image / 255])[0]
    assert torch.equal(got["labels"], expected["labels"])
    for key, tolerance in [("boxes", 0.01), ("scores", 1e-4), ("masks", 1e-3)]:
        assert got[key].shape == expected[key].shape
        assert float((got[key] - expected[key]).abs().max()) <= tolerance, key
    for check in report.checks:
        assert check["boxes"] <= 0.01 and check["scores"] <= 1e-4 and check["masks"] <= 1e-3

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    for side, predictor in [("torch", model), ("onnx", exported)]:  # the same writer draws both
        predict_instance_files(predictor, [tmp_path / "scene.png"], tmp_path / side, score_threshold=0.3)
    expected, got = (json.loads((tmp_path / side / "scene.json").read_text()) for side in ("torch", "onnx"))
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        assert a["class"] == b["class"] and abs(a["score"] - b["score"]) <= 2e-4
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 0.011  # JSON rounds to 0.01 px
    assert (tmp_path / "onnx" / "scene_instances.png").is_file()


def _boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    """(K, 5) boxes (batch index 0/1, xyxy) of sides 0.5–60 px, some reaching past a 31×23 map at scale 1/4."""
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([120.0, 90.0]) - 10
    size = torch.rand(count, 2, generator=generator) * 60 + 0.5
    index = torch.randint(0, 2, (count, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], 1)


class _Op(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, *inputs):
        return self.op(*inputs)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("op, channels, onnx_op", [
    (lambda x, b: roi_align(x, b, (7, 5), 0.25, 2, aligned=False), 8, "RoiAlign"),
    (lambda x, b: roi_align(x, b, 7, 0.25, -1, aligned=True), 8, "RoiAlign"),
    (lambda x, b: roi_pool(x, b, (4, 6), 0.25), 8, "MaxRoiPool"),
    (lambda x, b: ps_roi_align(x, b, 3, 0.25, 2), 18, "RoiAlign"),
    (lambda x, b: ps_roi_align(x, b, 7, 0.25, -1, group_size=3), 18, "RoiAlign"),
    (lambda x, b: ps_roi_align(x, b, (5, 4), 0.5, 2, group_size=(3, 2)), 12, "RoiAlign"),
], ids=["roi_align", "roi_align_aligned_adaptive", "roi_pool", "ps_roi_align", "ps_roi_align_group",
        "ps_roi_align_group_2x3"])
def test_roi_ops_export_as_onnx_ops_and_match_on_other_boxes_and_maps(op, channels, onnx_op):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, channels, 23, 31, generator=generator)
    buffer = io.BytesIO()
    torch.onnx.export(_Op(op), (features, _boxes(5, generator)), buffer, dynamo=False, opset_version=17,
                      input_names=["features", "boxes"],
                      dynamic_axes={"features": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "rois"}},
                      autograd_inlining=False)
    assert onnx_op in {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    features, boxes = torch.randn(2, channels, 19, 37, generator=generator), _boxes(40, generator)
    got = session.run(None, {"features": features.numpy(), "boxes": boxes.numpy()})[0]
    np.testing.assert_allclose(got, op(features, boxes).numpy(), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_batched_nms_exports_as_nonmaxsuppression_per_group_and_keeps_torchvisions_boxes():
    def boxes_scores_groups(count: int, generator: torch.Generator):
        corner = torch.rand(count, 2, generator=generator) * 50
        boxes = torch.cat([corner, corner + 5 + torch.rand(count, 2, generator=generator) * 30], 1)
        return boxes, torch.rand(count, generator=generator), torch.randint(0, 4, (count,), generator=generator)

    generator = torch.Generator().manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(_Op(lambda *inputs: batched_nms(*inputs, 0.5, 4)), boxes_scores_groups(30, generator), buffer,
                      dynamo=False, opset_version=17, input_names=["boxes", "scores", "groups"],
                      dynamic_axes={name: {0: "boxes"} for name in ("boxes", "scores", "groups")})
    assert "NonMaxSuppression" in {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    boxes, scores, groups = boxes_scores_groups(300, generator)
    got = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "groups": groups.numpy()})[0]
    expected = torchvision.ops.batched_nms(boxes, scores, groups, 0.5)
    assert 0 < len(expected) < 300 and got.tolist() == expected.tolist()


def _image(path, height: int, width: int, seed: int = 0):
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def _fails(capsys, *argv) -> str:
    """The one-line error of ``seglab ARGV``, which must exit with status 1 (stderr also holds tqdm's bar)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"seglab {argv[0]}: error: ")]
    assert exit_info.value.code == 1 and errors == lines[-1:], lines
    return errors[0]


@pytest.fixture(scope="module")
def static_export(tmp_path_factory):
    """(path, stdout) of `seglab export` of a small DeepLab-LargeFOV fixed at 48×40."""
    path = tmp_path_factory.mktemp("export") / "largefov.onnx"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        main(["export", "--model", "deeplabv1_vgg16", "--model-option", "width_mult=0.0625", "--num-classes", "3",
              "--height", "48", "--width", "40", "--static", "--out", str(path)])
    return path, capture.getvalue()


def test_export_command_prints_the_parity_and_stores_the_metadata(static_export):
    path, out = static_export
    assert "max |Δlogits|" in out and "argmax agreement 100.0000%" in out and "fixed input size" in out
    exported = OnnxModel(path)
    assert exported.meta["model"] == "deeplabv1_vgg16" and exported.meta["options"] == {"width_mult": 0.0625}
    assert exported.meta["classes"] == ["background", "class_1", "class_2"] and exported.meta["task"] == "semantic"
    assert exported.meta["mean"] == list(seglab.data.IMAGENET_MEAN) and exported.meta["input"]["layout"] == "NCHW"
    assert exported.input.shape == [1, 3, 48, 40]


def test_predict_onnx_refuses_an_image_of_another_size_than_a_static_export(static_export, tmp_path, capsys):
    error = _fails(capsys, "predict", "--onnx", static_export[0], _image(tmp_path / "a.png", 40, 48),
                   "--out", tmp_path / "out")
    assert "largefov.onnx takes input 1×3×48×40 (NCHW), got 1×3×40×48" in error and "--crop 48 40" in error


def test_predict_onnx_with_an_unwritable_output_directory_fails_naming_it(static_export, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the output directory should go")
    error = _fails(capsys, "predict", "--onnx", static_export[0], _image(tmp_path / "a.png", 48, 40),
                   "--out", tmp_path / "taken" / "out")
    assert "cannot write to the output directory" in error and "taken" in error


def test_predict_onnx_writes_the_same_masks_and_overlays_as_the_checkpoint(tmp_path, capsys):
    train(TrainConfig(width_mult=0.0625, model_options={"padding": "same"}, image_size=64, num_train=2, val_split=None,
                      iters=2, batch_size=2, out=str(tmp_path / "run")))
    # FCN's scores start at zero and two steps leave them tiny (all background): random ones vary over the image
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for layer in ("score_fr", "score_pool4", "score_pool3"):
        checkpoint["model"][f"{layer}.weight"].normal_(0, 0.1, generator=generator)
        checkpoint["model"][f"{layer}.bias"].zero_()
    torch.save(checkpoint, tmp_path / "run" / "last.pt")
    main(["export", "--checkpoint", str(tmp_path / "run"), "--height", "64", "--width", "64",
          "--out", str(tmp_path / "model.onnx")])
    assert "dynamic batch, height and width" in capsys.readouterr().out
    scene = Image.fromarray(Shapes("test", 1, image_size=64)[0][0].permute(1, 2, 0).numpy())
    images = [tmp_path / "square.png", tmp_path / "odd.png"]
    scene.save(images[0])
    scene.resize((51, 37)).save(images[1])
    main(["predict", "--checkpoint", str(tmp_path / "run"), *map(str, images), "--out", str(tmp_path / "torch")])
    main(["predict", "--onnx", str(tmp_path / "model.onnx"), *map(str, images), "--out", str(tmp_path / "onnx")])
    for name in ["square.png", "square_overlay.png", "odd.png", "odd_overlay.png"]:
        expected, got = (Image.open(tmp_path / side / name) for side in ("torch", "onnx"))
        assert got.mode == expected.mode and np.array_equal(np.asarray(got), np.asarray(expected)), name
    masks = [np.asarray(Image.open(tmp_path / "onnx" / name)) for name in ["square.png", "odd.png"]]
    assert len(np.unique(np.concatenate([mask.ravel() for mask in masks]))) > 1  # not one class everywhere


def test_export_of_an_unknown_model_fails_listing_the_known_ones(tmp_path, capsys):
    error = _fails(capsys, "export", "--model", "fcn9s_vgg16", "--out", tmp_path / "m.onnx")
    assert "unknown model 'fcn9s_vgg16'" in error and "fcn8s_vgg16" in error


def test_export_with_weights_that_do_not_fit_names_the_first_mismatching_key(tmp_path, capsys):
    weights = tmp_path / "three_classes.pt"
    torch.save(seglab.models.create("deeplabv1_vgg16", 3, width_mult=0.0625).state_dict(), weights)
    error = _fails(capsys, "export", "--model", "deeplabv1_vgg16", "--model-option", "width_mult=0.0625",
                   "--num-classes", "5", "--weights", weights, "--out", tmp_path / "m.onnx")
    assert "three_classes.pt does not fit the model" in error
    assert "classifier.fc8.weight has shape (3, 64, 1, 1) there, (5, 64, 1, 1) in the model" in error


def test_predict_onnx_refuses_a_model_that_takes_four_channels(tmp_path, capsys):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["logits"])], "four_channels",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4, "height", "width"])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    meta = {**seglab.models.model_meta("fcn32s_vgg16", 4), "model": None, "input": seglab.export.INPUTS["semantic"]}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, tmp_path / "rgbd.onnx")
    error = _fails(capsys, "predict", "--onnx", tmp_path / "rgbd.onnx", _image(tmp_path / "a.png", 32, 32),
                   "--out", tmp_path / "out")
    assert "rgbd.onnx takes input any×4×any×any" in error and "got 1×3×32×32" in error


def test_predict_onnx_refuses_a_file_that_is_not_onnx(tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"PK\x03\x04 a zip, not a protobuf")
    error = _fails(capsys, "predict", "--onnx", tmp_path / "model.onnx", _image(tmp_path / "a.png", 32, 32),
                   "--out", tmp_path / "out")
    assert "onnxruntime cannot load" in error and "model.onnx" in error


def test_fcis_is_refused_with_the_reason(tmp_path):
    model = seglab.models.create("fcis_resnet50", 5, width_mult=0.0625, reduce_channels=16)
    with pytest.raises(ValueError, match=r"FCIS does not export to ONNX: its inference splits the detections"):
        to_onnx(model, tmp_path / "fcis.onnx", height=64, width=64)
    assert not (tmp_path / "fcis.onnx").exists()


FCN_SMALL = dict(width_mult=0.0625, padding="same")


def _state_dicts_equal(got: dict, expected: dict) -> bool:
    return got.keys() == expected.keys() and all(torch.equal(got[key], expected[key]) for key in expected)


@pytest.fixture(scope="module")
def safetensors_export(tmp_path_factory):
    """(model, path) of a small FCN-8s with random scores, written by `seglab export --weights W.pt --out F.safetensors`."""
    folder = tmp_path_factory.mktemp("safetensors")
    model = well_scaled(seglab.models.create("fcn8s_vgg16", 5, **FCN_SMALL))  # Shapes' 5 classes, for eval
    torch.save(model.state_dict(), folder / "weights.pt")
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        main(["export", "--model", "fcn8s_vgg16", "--num-classes", "5", "--model-option", "width_mult=0.0625",
              "--model-option", "padding=same", "--weights", str(folder / "weights.pt"),
              "--out", str(folder / "fcn8s.safetensors")])
    assert f"wrote {folder / 'fcn8s.safetensors'}" in capture.getvalue()
    return model, folder / "fcn8s.safetensors"


def test_export_to_safetensors_loads_back_the_same_weights_logits_and_meta(safetensors_export):
    model, path = safetensors_export
    loaded = seglab.models.load(path)
    assert loaded.meta == model.meta and loaded.meta["options"] == FCN_SMALL
    assert _state_dicts_equal(loaded.state_dict(), model.state_dict())
    images = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model(images)["out"], loaded(images)["out"]
    assert float(expected.abs().max()) > 0.1 and torch.equal(got, expected)
    assert not any(path.parent.glob("*.tmp"))


def test_export_from_a_safetensors_checkpoint_writes_the_same_weights_and_meta_again(safetensors_export, tmp_path):
    _, path = safetensors_export
    main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "again.safetensors")])
    again, first = seglab.io.safe_load(tmp_path / "again.safetensors"), seglab.io.safe_load(path)
    assert again["meta"] == first["meta"] and _state_dicts_equal(again["model"], first["model"])
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()  # reproducible, byte for byte


def test_predict_and_eval_take_a_safetensors_checkpoint(safetensors_export, tmp_path):
    model, path = safetensors_export
    seglab.io.save_checkpoint({"model": model.state_dict(), "meta": model.meta}, tmp_path / "same.pt")
    image = _image(tmp_path / "photo.png", 37, 52, seed=4)
    for checkpoint, out in ((path, "safetensors"), (tmp_path / "same.pt", "pt")):
        main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / out)])
    for name in ["photo.png", "photo_overlay.png"]:
        expected, got = (np.asarray(Image.open(tmp_path / side / name)) for side in ("pt", "safetensors"))
        assert np.array_equal(got, expected), name
    main(["eval", "--checkpoint", str(path), "--data", "shapes", "--num-images", "2", "--image-size", "48",
          "--out", str(tmp_path / "eval")])
    assert "miou" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_maskrcnn_round_trips_through_safetensors_with_the_same_detections(tmp_path):
    torch.manual_seed(0)
    options = dict(fpn_channels=32, representation_size=64, mask_layers=[16], min_size=64, max_size=64,
                   box_score_thresh=0.0)
    model = seglab.models.create("maskrcnn_resnet18_fpn", 5, **options).eval()
    path = seglab.export.to_safetensors(model, tmp_path / "maskrcnn.safetensors")
    loaded = seglab.models.load(path)
    assert loaded.meta == model.meta and loaded.meta["task"] == "instance"
    assert _state_dicts_equal(loaded.state_dict(), model.state_dict())
    image = torch.rand(3, 61, 83, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = model([image])[0], loaded([image])[0]
    assert len(expected["boxes"]) > 0 and expected.keys() == got.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_a_plain_safetensors_state_dict_loads_as_weights(tmp_path):
    from safetensors.torch import save_file

    model = well_scaled(seglab.models.create("deeplabv1_vgg16", 3, width_mult=0.0625))
    save_file(model.state_dict(), tmp_path / "plain.safetensors")  # another tool's file: tensors, no seglab meta
    created = seglab.models.create("deeplabv1_vgg16", 3, width_mult=0.0625, weights=str(tmp_path / "plain.safetensors"))
    assert _state_dicts_equal(created.state_dict(), model.state_dict())
    main(["export", "--model", "deeplabv1_vgg16", "--num-classes", "3", "--model-option", "width_mult=0.0625",
          "--weights", str(tmp_path / "plain.safetensors"), "--out", str(tmp_path / "with_meta.safetensors")])
    assert _state_dicts_equal(seglab.models.load(tmp_path / "with_meta.safetensors").state_dict(), model.state_dict())


def test_backbone_weights_load_from_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    state = torchvision.models.resnet18(weights=None).state_dict()
    save_file(state, tmp_path / "resnet18.safetensors")
    model = seglab.models.create("maskrcnn_resnet18_fpn", 5, fpn_channels=32, representation_size=64, mask_layers=[16],
                                 weights_backbone=str(tmp_path / "resnet18.safetensors"))
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_predict_with_a_file_that_is_not_safetensors_fails_naming_it(tmp_path, capsys):
    torch.save({"w": torch.ones(2)}, tmp_path / "pickled.safetensors")
    error = _fails(capsys, "predict", "--checkpoint", tmp_path / "pickled.safetensors",
                   _image(tmp_path / "a.png", 32, 32), "--out", tmp_path / "out")
    assert f"cannot read {tmp_path / 'pickled.safetensors'} as a safetensors file" in error


def test_export_to_an_unknown_extension_fails_naming_it_and_the_accepted_ones(tmp_path, capsys):
    error = _fails(capsys, "export", "--model", "fcn8s_vgg16", "--out", tmp_path / "model.pt")
    assert "unknown extension '.pt'" in error and ".onnx" in error and ".safetensors" in error
    assert list(tmp_path.iterdir()) == []


def test_to_safetensors_needs_the_models_meta(tmp_path):
    with pytest.raises(ValueError, match="to_safetensors needs the model's meta"):
        seglab.export.to_safetensors(torch.nn.Conv2d(3, 2, 1), tmp_path / "conv.safetensors")
