"""End to end through the installed command line, in subprocesses, on tiny sizes."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from seglab import models as seglab_models
from seglab.data import Shapes
from seglab.engine.inference import predict_labels
from seglab.metrics import BoundaryBandMetrics
from seglab.engine.config import TrainConfig
from seglab.engine.train import train
from seglab.models import options


def seglab(*args, cwd=None, check=True):
    result = subprocess.run([sys.executable, "-m", "seglab", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"seglab {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_train_eval_predict_end_to_end(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text("width_mult: 0.0625\nbatch_norm: true\nmodel_options: {padding: same}\niters: 50\n")
    seglab("train", "--config", config, "--model", "fcn8s_vgg16", "--data", "shapes", "--image-size", 64,
           "--num-train", 8, "--num-val", 4, "--iters", 3, "--batch-size", 4, "--lr", 0.01, "--out", run)
    saved = (run / "config.yaml").read_text()
    assert "iters: 3" in saved and "width_mult: 0.0625" in saved  # flags override the file
    for name in ["last.pt", "best.pt", "metrics.jsonl", "curves.png", "eval/overlays.png"]:
        assert (run / name).is_file(), name

    result = seglab("eval", "--checkpoint", run, "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["iou"]) == set(Shapes.classes if hasattr(Shapes, "classes") else metrics["iou"])
    assert "miou" in result.stdout.lower() or "mean" in result.stdout.lower()
    assert (tmp_path / "eval" / "overlays.png").is_file()

    result = seglab("eval", "--checkpoint", run, "--boundary-band", 2, "--out", tmp_path / "band")
    band = json.loads((tmp_path / "band" / "metrics.json").read_text())["boundary_band"]
    model = seglab_models.load(run)  # the checkpoint eval picks for a run directory
    metrics = BoundaryBandMetrics(model.meta["num_classes"], 2)
    for image, target in Shapes("val", 4, image_size=64):
        metrics.update(predict_labels(model, image[None], model.meta["mean"], model.meta["std"]), target["mask"][None])
    expected = metrics.compute()
    assert band["width"] == 2 and band["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert band["pixel_acc"] == pytest.approx(expected["pixel_acc"], abs=1e-9)
    assert "boundary band (±2 px" in result.stdout

    image, _ = Shapes("test", 2, image_size=50)[1]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "scene.jpg")
    seglab("predict", "--checkpoint", run / "last.pt", tmp_path / "scene.jpg", "--out", tmp_path / "pred")
    mask = Image.open(tmp_path / "pred" / "scene.png")
    assert mask.mode == "P" and mask.size == (50, 50)
    assert np.asarray(mask).max() < 5
    overlay = Image.open(tmp_path / "pred" / "scene_overlay.png")  # the image, and the legend on its right
    assert overlay.width > 50 and overlay.height >= 50


def test_predict_names_a_corrupt_image_and_fails(tmp_path):
    run = tmp_path / "run"
    seglab("train", "--data", "shapes", "--image-size", 32, "--num-train", 4, "--val-split", "", "--iters", 1,
           "--batch-size", 2, "--width-mult", 0.0625, "--out", run)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = seglab("predict", "--checkpoint", run, bad, "--out", tmp_path / "pred", check=False)
    assert result.returncode == 1 and "broken.jpg" in result.stderr


def test_export_shapes_then_data_check_and_bad_label_is_named(tmp_path):
    root = tmp_path / "voc"
    seglab("data", "export-shapes", root, "--format", "voc", "--num-train", 6, "--num-val", 2, "--image-size", 40)
    result = seglab("data", "check", root, "--format", "voc", "--split", "train")
    assert "6 images" in result.stdout and "circle" in result.stdout
    mask_path = root / "SegmentationClass" / "shapes_train_000002.png"
    mask = Image.open(mask_path)
    values = np.asarray(mask).copy()
    values[0, 0] = 9
    bad = Image.fromarray(values, mode="P")
    bad.putpalette(mask.getpalette())
    bad.save(mask_path)
    result = seglab("data", "check", root, "--format", "voc", "--split", "train", check=False)
    assert result.returncode == 1 and "shapes_train_000002.png" in result.stderr and "9" in result.stderr


def test_models_lists_the_fcn_family_with_parameter_counts():
    out = seglab("models").stdout
    assert "| fcn8s_vgg16 | semantic | 134,376,863 |" in out


def test_models_name_describes_the_model_from_its_builder_signature():
    out = seglab("models", "deeplabv3_resnet50").stdout
    assert "task: semantic" in out and "parameters (21 classes): 39,638,869" in out and "arXiv:1706.05587" in out
    for option, default in options("deeplabv3_resnet50").items():
        assert f"  {option} = {default!r}" in out
    result = seglab("models", "fcn9s_vgg16", check=False)
    assert result.returncode == 1 and "unknown model 'fcn9s_vgg16'" in result.stderr


def test_every_flag_says_what_it_does():
    from seglab.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    parsers = [parser for name, parser in commands.items() if name != "data"]
    parsers += list(commands["data"]._subparsers._group_actions[0].choices.values())
    for parser in parsers:
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "default: None" not in action.help, (parser.prog, action.option_strings)


@pytest.mark.parametrize("argv", [["train", "--optimizer", "adam", "--iters", "1"]])
def test_bad_option_gives_a_clear_error(argv, tmp_path):
    result = seglab(*argv, "--out", tmp_path / "r", "--num-train", 4, "--batch-size", 2, "--image-size", 32,
                    "--width-mult", 0.0625, check=False)
    assert result.returncode == 1 and "adam" in result.stderr


def test_eval_and_predict_with_sliding_window_multiscale_and_flip(tmp_path):
    train(TrainConfig(width_mult=0.0625, model_options={"padding": "same"}, image_size=64, num_train=2,
                      val_split=None, iters=1, batch_size=2, out=str(tmp_path / "run")))  # in-process: faster
    seglab("eval", "--checkpoint", tmp_path / "run", "--num-images", 2, "--crop", 48, "--stride", 32,
           "--scales", 0.75, 1.0, "--flip", "--out", tmp_path / "eval")
    assert "miou" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    image, _ = Shapes("test", 1, image_size=40)[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    seglab("predict", "--checkpoint", tmp_path / "run", tmp_path / "scene.png", "--crop", 32, 40,
           "--out", tmp_path / "pred")
    assert Image.open(tmp_path / "pred" / "scene.png").size == (40, 40)


def test_eval_can_override_the_output_stride_of_a_deeplab_run(tmp_path):
    run = tmp_path / "run"
    seglab("train", "--model", "deeplabv3_resnet50", "--model-option", "output_stride=16", "--data", "shapes",
           "--image-size", 32, "--num-train", 4, "--num-val", 2, "--iters", 1, "--batch-size", 2,
           "--width-mult", 0.0625, "--out", run)
    result = seglab("eval", "--checkpoint", run, "--model-option", "output_stride=8", "--out", tmp_path / "eval")
    assert (tmp_path / "eval" / "metrics.json").is_file() and "mean" in result.stdout


def test_eval_and_predict_with_the_dense_crf_and_crf_tune(tmp_path):
    train(TrainConfig(width_mult=0.0625, model_options={"padding": "same"}, image_size=40, num_train=2,
                      val_split=None, iters=1, batch_size=2, out=str(tmp_path / "run")))
    run = tmp_path / "run"
    seglab("eval", "--checkpoint", run, "--num-images", 2, "--crf", "--crf-preset", "deeplab",
           "--crf-iterations", 3, "--out", tmp_path / "eval")
    assert "miou" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    image, _ = Shapes("test", 1, image_size=40)[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    seglab("predict", "--checkpoint", run, tmp_path / "scene.png", "--crf", "--crf-param", "bilateral_sxy=20",
           "--crf-param", "normalization=before", "--out", tmp_path / "pred")
    assert Image.open(tmp_path / "pred" / "scene.png").size == (40, 40)

    out = seglab("crf-tune", "--checkpoint", run, "--num-images", 2, "--w1", 3, 5, "--theta-alpha", 20,
                 "--theta-beta", 5, 13, "--iterations", 2, "--out", tmp_path / "tune").stdout
    assert "mIoU without the CRF" in out and "best: w1 =" in out and "--crf-param bilateral_sxy=20" in out
    assert "--crf-param normalization=after" in out  # DeepLab's D^-1 K, under which it cross-validated
    saved = json.loads((tmp_path / "tune" / "crf_tune.json").read_text())
    assert saved["images"] == 2 and len(saved["results"]) == 4
    assert {result["normalization"] for result in saved["results"]} == {"after"}

    bad = seglab("eval", "--checkpoint", run, "--crf-param", "bilateral_sxy=20", check=False)
    assert bad.returncode == 1 and "--crf-param needs --crf" in bad.stderr
    bad = seglab("eval", "--checkpoint", run, "--crf", "--crf-param", "sxy=20", check=False)
    assert bad.returncode == 1 and "bilateral_sxy" in bad.stderr
    bad = seglab("eval", "--checkpoint", run, "--crf", "--crf-param", "normalization=sym", check=False)
    assert bad.returncode == 1 and "normalization must be one of" in bad.stderr


SMALL_MASKRCNN = {"frozen_bn": False, "trainable_backbone_layers": 5, "fpn_channels": 32, "representation_size": 64,
                  "mask_layers": [16], "anchor_sizes": [8, 16, 32, 64, 128], "rpn_pre_nms_top_n_train": 100,
                  "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                  "box_batch_size_per_image": 32, "min_size": 64, "max_size": 64, "box_score_thresh": 0.0}


def test_instance_model_trains_evaluates_with_cocoeval_and_predicts(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(model="maskrcnn_resnet18_fpn", model_options=SMALL_MASKRCNN, image_size=48, num_train=4,
                      num_val=2, iters=2, batch_size=2, lr=0.01, out=str(run)))
    for name in ["last.pt", "best.pt", "metrics.jsonl", "eval/metrics.json", "eval/overlays.png"]:
        assert (run / name).is_file(), name
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/segm_AP" in record for record in logged)

    out = seglab("eval", "--checkpoint", run, "--num-images", 2, "--out", tmp_path / "eval").stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"} and "AP50" in metrics["segm"] and "segm" in out
    image, _ = Shapes("test", 1, image_size=40)[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    seglab("predict", "--checkpoint", run, tmp_path / "scene.png", "--score-threshold", 0.0, "--out", tmp_path / "pred")
    assert Image.open(tmp_path / "pred" / "scene_instances.png").size == (40, 40)
    detections = json.loads((tmp_path / "pred" / "scene.json").read_text())
    assert isinstance(detections, list) and all({"box", "label", "class", "score"} <= set(d) for d in detections)
    bad = seglab("eval", "--checkpoint", run, "--crf", check=False)
    assert bad.returncode == 1 and "semantic models only" in bad.stderr


def test_list_and_key_value_flags_reach_the_config():
    from seglab.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--mask-classes", "circle", "square", "--data", "sbd", "--data-option",
                                      "voc_root=/v", "--model-option", "mask_layers=[8, 8]", "--accumulate", "2"])
    config = _config_from_args(args)
    assert config.mask_classes == ["circle", "square"] and config.data_options == {"voc_root": "/v"}
    assert config.model_options == {"mask_layers": [8, 8]} and config.accumulate == 2
