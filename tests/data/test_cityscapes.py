import numpy as np
import pytest
import torch
from layouts import official_args, write_labels
from PIL import Image
from torchvision import tv_tensors

from seglab.cli import main
from seglab.data import Cityscapes, build_dataset
from seglab.data.cityscapes import CLASSES, PALETTE, frame_prefix, label_ids, result_name, train_ids
from seglab.metrics.cityscapes import evaluate_results

labels = pytest.importorskip("cityscapesscripts.helpers.labels", reason="the peer is in the dev extra")


def official_train_ids(ids):
    """Train ids (255 = not evaluated) of label ids through cityscapesscripts' table."""
    table = {label.id: label.trainId if 0 <= label.trainId < 19 else 255 for label in labels.labels}
    return np.vectorize(table.__getitem__)(ids)


def test_train_id_table_matches_cityscapesscripts_labels():
    for label in labels.labels:
        if label.id >= 0:
            expected = label.trainId if 0 <= label.trainId < 19 else 255
            assert train_ids(np.array([label.id], dtype=np.uint8))[0] == expected, label.name
            assert label.ignoreInEval == (expected == 255), label.name  # evaluated = has a train id
    assert (train_ids(np.arange(34, 256, dtype=np.uint8)) == 255).all()
    assert CLASSES == tuple(labels.trainId2label[i].name for i in range(19))
    assert PALETTE == [labels.trainId2label[i].color for i in range(19)]
    assert label_ids(np.arange(19)).tolist() == [labels.trainId2label[i].id for i in range(19)]
    with pytest.raises(ValueError, match="0..18"):
        label_ids(np.array([19]))


def test_items_hold_train_ids_of_the_gtfine_label_ids(cityscapes_tree):
    dataset = Cityscapes(cityscapes_tree.root, "val")
    assert [frame_prefix(dataset.image_path(i)) for i in range(len(dataset))] == [
        "frankfurt_000000_000294", "frankfurt_000001_007973", "lindau_000000_000019"]
    assert dataset.classes == CLASSES and dataset.palette == PALETTE
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 32, 48)
        assert isinstance(target["mask"], tv_tensors.Mask) and target["mask"].dtype == torch.int64
        expected = official_train_ids(cityscapes_tree.label_ids[frame_prefix(dataset.image_path(index))])
        np.testing.assert_array_equal(target["mask"].numpy(), expected)
    assert len(build_dataset("cityscapes", "train", root=cityscapes_tree.root)) == 2


def test_missing_split_unknown_label_id_and_missing_gt_are_named(cityscapes_tree):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/test"):
        Cityscapes(cityscapes_tree.root, "test")
    dataset = Cityscapes(cityscapes_tree.root, "train")
    write_labels(dataset.mask_path(0), np.full((32, 48), 40))
    with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelIds.png: label ids \[40\]"):
        dataset[0]
    dataset.mask_path(1).unlink()
    with pytest.raises(FileNotFoundError, match="aachen_000001_000019_gtFine_labelIds.png"):
        dataset[1]


def test_result_names_are_what_the_official_evaluation_matches():
    assert result_name("x/frankfurt_000000_000294_leftImg8bit.png") == "frankfurt_000000_000294_labelIds.png"
    with pytest.raises(ValueError, match="scene.png: not a Cityscapes file name"):
        result_name("scene.png")


def test_train_then_predict_in_the_official_format(cityscapes_tree, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "pred"
    main(["train", "--model", "fcn8s_vgg16", "--width-mult", "0.0625", "--model-option", "padding=same",
          "--data", "cityscapes", "--data-root", str(cityscapes_tree.root), "--crop-size", "32", "--iters", "1",
          "--batch-size", "2", "--out", str(run)])
    images = sorted(str(p) for p in (cityscapes_tree.root / "leftImg8bit" / "val").glob("*/*.png"))
    main(["predict", "--checkpoint", str(run), *images, "--format", "cityscapes", "--out", str(out)])

    official, args = official_args(tmp_path, out / "labelIds")
    evaluated = set(label_ids(np.arange(19)).tolist())
    for gt in sorted((cityscapes_tree.root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")):
        prediction = np.array(Image.open(official.getPrediction(args, str(gt))))
        assert prediction.shape == (32, 48) and set(np.unique(prediction).tolist()) <= evaluated
    stem = "lindau_000000_000019_leftImg8bit"
    assert (out / "lindau" / f"{stem}.png").is_file() and (out / "lindau" / f"{stem}_overlay.png").is_file()  # two cities
    assert len(evaluate_results(out / "labelIds", cityscapes_tree.root, "val")["iou"]) == 19

    Image.new("RGB", (48, 32)).save(tmp_path / "scene.png")
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", str(run), str(tmp_path / "scene.png"), "--format", "cityscapes",
              "--out", str(out)])
    assert "scene.png: not a Cityscapes file name" in capsys.readouterr().err
