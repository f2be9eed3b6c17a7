"""Weights by name through torchvision's weights API and torch's hub cache (seglab.hub, models.create(weights=...)).

No network is needed: a temporary TORCH_HOME holds state dicts saved under exactly the file names the enums'
URLs end in (random weights of the right shapes, built by torchvision with weights=None), so the whole path from
a name to a prediction runs, and torchvision loads the very same files for the comparisons."""
import json
import logging

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import VGG16_Weights
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

import seglab
from seglab import hub
from seglab.cli import main
from seglab.engine import semantic
from seglab.engine.inference import predict_labels
from seglab.engine.config import TrainConfig
from seglab.engine.train import train

DEEPLAB = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
MASKRCNN = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
SMALL_DETECTION = {"min_size": 160, "max_size": 200, "box_score_thresh": 0.0}  # same settings on both sides


def plant(member, model: torch.nn.Module) -> None:
    """Save ``model``'s state dict where torch's hub cache keeps ``member``'s file."""
    path = hub.cache_path(member)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random DeepLab v3 and Mask R-CNN files under their enums' names."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        torch.manual_seed(0)
        plant(DEEPLAB, torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                        num_classes=21, aux_loss=True))
        plant(MASKRCNN, torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None))
    return home


@pytest.fixture
def cache(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # any download fails at once: nothing is fetched
    return torch_home


def test_cache_path_is_torch_hubs_checkpoints_folder_with_the_urls_basename(cache):
    assert hub.cache_path(DEEPLAB) == cache / "hub" / "checkpoints" / "deeplabv3_resnet50_coco-cd0a2569.pth"
    assert hub.weights("deeplabv3_resnet50", "DEFAULT") is DEEPLAB
    assert hub.weight_names("resnet50") == ["IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"]


def test_deeplabv3_by_name_gives_torchvisions_logits_and_its_voc_class_names(cache):
    ours = seglab.models.create("deeplabv3_resnet50", weights="DEFAULT").eval()
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights="DEFAULT").eval()
    images = torch.randn(2, 3, 67, 81, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(images), theirs(images)
    assert float(b["out"].abs().max()) > 0.1
    torch.testing.assert_close(a["out"], b["out"], rtol=0, atol=0)
    torch.testing.assert_close(a["aux"], b["aux"], rtol=0, atol=0)
    assert ours.meta["classes"] == DEEPLAB.meta["categories"] and ours.meta["num_classes"] == 21
    assert ours.meta["options"] == {"aux": True} and ours.meta["mean"] == [0.485, 0.456, 0.406]


def test_maskrcnn_by_name_uses_eps_0_and_gives_torchvisions_detections(cache):
    ours = seglab.models.create("maskrcnn_resnet50_fpn", weights="DEFAULT", **SMALL_DETECTION).eval()
    theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(weights="DEFAULT", **SMALL_DETECTION).eval()
    eps_1e5 = seglab.models.create("maskrcnn_resnet50_fpn", weights=str(hub.cache_path(MASKRCNN)),
                                   **SMALL_DETECTION).eval()  # the same file, torchvision's usual eps
    assert ours.backbone.body.bn1.eps == 0.0 and ours.meta["options"]["bn_eps"] == 0.0
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b, c = ours([image])[0], theirs([image])[0], eps_1e5([image])[0]
    assert len(b["boxes"]) > 0 and torch.equal(a["labels"], b["labels"])
    for key, tolerance in (("boxes", 1e-5), ("scores", 1e-5), ("masks", 1e-4)):  # seglab pastes masks itself
        torch.testing.assert_close(a[key], b[key], rtol=tolerance, atol=tolerance)
    assert not torch.allclose(c["scores"], b["scores"], rtol=0, atol=1e-7)  # eps 1e-5 would not match
    assert ours.meta["classes"] == MASKRCNN.meta["categories"] and "N/A" in ours.meta["classes"]


def test_predict_with_no_checkpoint_writes_masks_overlays_with_the_class_names_present(cache, tmp_path):
    image = torch.randint(0, 256, (3, 70, 90), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "photo.png")
    main(["predict", "--model", "deeplabv3_resnet50", "--weights", "DEFAULT", str(tmp_path / "photo.png"),
          "--out", str(tmp_path / "out")])
    mask = torch.from_numpy(np.array(Image.open(tmp_path / "out" / "photo.png")))
    model = seglab.models.create("deeplabv3_resnet50", weights="DEFAULT").eval()
    expected = predict_labels(model, image[None], model.meta["mean"], model.meta["std"])[0]
    assert torch.equal(mask.long(), expected)
    entries = seglab.viz.legend_entries(mask, model.meta["classes"])
    assert entries and all(name == DEEPLAB.meta["categories"][label] for label, name, _ in entries)
    assert abs(sum(share for *_, share in entries) - 1) < 1e-9
    overlay = Image.open(tmp_path / "out" / "photo_overlay.png")
    plain = np.array(seglab.viz.overlay(image, expected, model.meta["palette"]))
    assert overlay.width > 90 and np.array_equal(np.array(overlay)[:70, :90], plain)  # the legend is beside it


def test_predict_instances_by_name_lists_coco_names_and_never_na(cache, tmp_path, monkeypatch):
    state = torch.load(hub.cache_path(MASKRCNN), weights_only=True)
    categories = MASKRCNN.meta["categories"]
    favoured = [categories.index("N/A"), categories.index("car")]
    with torch.no_grad():  # scores from the biases alone: these two classes score 0.45 on every proposal
        state["roi_heads.box_predictor.cls_score.weight"].zero_()
        state["roi_heads.box_predictor.cls_score.bias"].zero_()
        state["roi_heads.box_predictor.cls_score.bias"][favoured] = 6.0
        for label in favoured:
            state["roi_heads.box_predictor.bbox_pred.weight"][4 * label:4 * label + 4] = 0.0
            state["roi_heads.box_predictor.bbox_pred.bias"][4 * label:4 * label + 4] = 0.0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    hub.cache_path(MASKRCNN).parent.mkdir(parents=True)
    torch.save(state, hub.cache_path(MASKRCNN))
    image = torch.randint(0, 256, (3, 96, 120), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "street.png")
    settings = {**SMALL_DETECTION, "box_detections_per_img": 1000}  # room for both classes' detections
    options = [arg for key, value in settings.items() for arg in ("--model-option", f"{key}={value}")]
    main(["predict", "--model", "maskrcnn_resnet50_fpn", "--weights", "DEFAULT", str(tmp_path / "street.png"),
          "--out", str(tmp_path / "out"), "--score-threshold", "0.3", *options])
    detections = json.loads((tmp_path / "out" / "street.json").read_text())
    model = seglab.models.create("maskrcnn_resnet50_fpn", weights="DEFAULT", **settings).eval()
    with torch.no_grad():
        prediction = model([image.float() / 255])[0]
    names = [categories[label] for label in prediction["labels"][prediction["scores"] >= 0.3].tolist()]
    assert "N/A" in names and "car" in names
    assert [d["class"] for d in detections] == [name for name in names if name != "N/A"]  # dropped, never named
    assert (tmp_path / "out" / "street_instances.png").is_file()


def test_fine_tuning_replaces_the_classifiers_and_says_which(cache, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seglab")
    model = seglab.models.create("deeplabv3_resnet50", 5, weights="DEFAULT")
    assert "re-initialised aux_classifier.4, classifier.4" in caplog.text
    planted = torch.load(hub.cache_path(DEEPLAB), weights_only=True)
    state = model.state_dict()
    assert torch.equal(state["backbone.layer4.2.conv3.weight"], planted["backbone.layer4.2.conv3.weight"])
    assert state["classifier.4.weight"].shape[0] == 5 and model.meta["classes"][1] == "class_1"
    train(TrainConfig(model="deeplabv3_resnet50", weights="DEFAULT", image_size=32, num_train=2, num_val=2,
                      iters=1, batch_size=2, out=str(tmp_path / "run")))
    loaded = seglab.models.load(tmp_path / "run")
    assert loaded.meta["options"]["aux"] is True and loaded.meta["classes"][1] == "circle"


def test_imagenet1k_features_normalisation_reaches_training_prediction_and_the_checkpoint(tmp_path, monkeypatch,
                                                                                         caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    caplog.set_level(logging.INFO, logger="seglab")
    vgg = torchvision.models.vgg16(weights=None)
    with torch.no_grad():
        for index in (0, 3, 6):  # as the published file: convolutions only, a NaN classifier
            vgg.classifier[index].weight.fill_(float("nan"))
    plant(VGG16_Weights.IMAGENET1K_FEATURES, vgg)
    model = seglab.models.create("fcn32s_vgg16", 5, backbone_weights="IMAGENET1K_FEATURES", padding="same")
    assert "classifier.0.weight" in caplog.text and "initialised fresh" in caplog.text
    assert torch.equal(model.backbone.features[0].weight, vgg.features[0].weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.meta["mean"] == [0.48235, 0.45882, 0.40784] and model.meta["std"] == [1 / 255] * 3
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    transformed, _ = semantic.train_transforms(TrainConfig(image_size=32, scale_range=(1.0, 1.0), hflip=False),
                                               model.meta)(image, {"mask": torch.zeros(32, 32, dtype=torch.int64)})
    expected = image.float() - 255 * torch.tensor(model.meta["mean"]).view(3, 1, 1)
    torch.testing.assert_close(transformed, expected, rtol=1e-5, atol=1e-3)  # 0..255 input minus the mean
    train(TrainConfig(model="fcn32s_vgg16", backbone_weights="IMAGENET1K_FEATURES", model_options={"padding": "same"},
                      image_size=32, num_train=2, val_split=None, iters=1, batch_size=2, out=str(tmp_path / "run")))
    loaded = seglab.models.load(tmp_path / "run")
    assert loaded.meta["mean"] == model.meta["mean"] and loaded.meta["std"] == model.meta["std"]


def test_failures_are_one_line_errors_that_say_what_to_do(cache, tmp_path, capsys):
    def error(*argv) -> str:
        with pytest.raises(SystemExit):
            main(list(argv))
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0]
        return lines[0]

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    out = str(tmp_path / "out")
    offline = error("predict", "--model", "deeplabv3_resnet101", "--weights", "DEFAULT", str(image), "--out", out)
    expected_path = hub.cache_path(torchvision.models.get_weight("DeepLabV3_ResNet101_Weights.DEFAULT"))
    assert "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth" in offline
    assert str(expected_path) in offline and not expected_path.exists()
    unknown = error("predict", "--model", "deeplabv3_resnet50", "--weights", "COCO_V2", str(image), "--out", out)
    assert "COCO_WITH_VOC_LABELS_V1, DEFAULT" in unknown
    unpublished = error("predict", "--model", "deeplabv1_vgg16", "--weights", "DEFAULT", str(image), "--out", out)
    assert "publishes no trained deeplabv1_vgg16" in unpublished and "IMAGENET1K_FEATURES" in unpublished
    backbone = error("train", "--model", "deeplabv3_resnet50", "--backbone-weights", "IMAGENET1K_V3",
                     "--out", str(tmp_path / "run"))
    assert "IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT" in backbone


def test_a_cached_file_of_the_wrong_shapes_names_the_first_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    plant(DEEPLAB, torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                    num_classes=5, aux_loss=True))
    with pytest.raises(ValueError, match=r"deeplabv3_resnet50_coco-cd0a2569.pth does not fit the model: "
                                         r"classifier.4.weight has shape \(5, 256, 1, 1\) there, \(21, 256, 1, 1\)"):
        seglab.models.create("deeplabv3_resnet50", weights="DEFAULT")


def test_models_name_lists_the_weight_names_each_model_accepts(capsys):
    main(["models", "maskrcnn_resnet50_fpn"])
    out = capsys.readouterr().out
    assert "weights (torchvision's trained model): COCO_V1, DEFAULT" in out
    assert "backbone weights (ImageNet): IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT" in out
    main(["models", "dilation_vgg16"])
    out = capsys.readouterr().out
    assert "none published" in out and "IMAGENET1K_FEATURES" in out


def test_resize_short_reproduces_the_weights_own_transforms(cache, tmp_path):
    image = torch.randint(0, 256, (3, 70, 93), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "photo.png")
    main(["predict", "--model", "deeplabv3_resnet50", "--weights", "DEFAULT", str(tmp_path / "photo.png"),
          "--out", str(tmp_path / "out"), "--resize-short", "48"])
    mask = torch.from_numpy(np.array(Image.open(tmp_path / "out" / "photo.png"))).long()
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights="DEFAULT").eval()
    transforms = DEEPLAB.transforms(resize_size=48)  # the enum's preset (520 by default), on the same photo
    with torch.no_grad():
        logits = theirs(transforms(image)[None])["out"]
    assert logits.shape[-2:] == (48, 63)
    expected = torch.nn.functional.interpolate(logits, size=(70, 93), mode="bilinear", align_corners=False)
    ours = seglab.models.create("deeplabv3_resnet50", weights="DEFAULT").eval()
    got = semantic.infer_logits(ours, image[None], ours.meta["mean"], ours.meta["std"], resize_short=48)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert mask.shape == (70, 93) and torch.equal(mask, got.argmax(1)[0])
