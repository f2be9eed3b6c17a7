"""``seglab data check ROOT --format ...`` on every layout, and the problems it names."""
import json

import numpy as np
import pytest
from layouts import write_labels

from seglab.cli import main
from seglab.data import VOCSegmentation, export_shapes, validate_dataset


def check(capsys, *argv):
    """(exit code, stdout, stderr) of ``seglab data check ARGV``, run in this process."""
    try:
        main(["data", "check", *map(str, argv)])
        code = 0
    except SystemExit as error:
        code = error.code
    out, err = capsys.readouterr()
    return code, out, err


def test_keep_going_collects_every_problem_and_counts_the_rest(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    dataset.image_path(1).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    dataset.mask_path(3).unlink()
    with pytest.raises(ValueError, match="shapes_train_000001.jpg"):
        validate_dataset(dataset, progress=False)
    summary = validate_dataset(dataset, progress=False, keep_going=True)
    assert summary["images"] == 4 and len(summary["problems"]) == 2
    assert "shapes_train_000001.jpg" in summary["problems"][0] and "shapes_train_000003.png" in summary["problems"][1]
    assert summary["total_pixels"] == 2 * 64 * 64


@pytest.mark.parametrize("fmt", ["sbd", "cityscapes", "folder"])
def test_a_good_dataset_prints_its_class_table(fmt, sbd_tree, cityscapes_tree, folder_tree, capsys):
    root = {"sbd": sbd_tree.root, "cityscapes": cityscapes_tree.root, "folder": folder_tree.root}[fmt]
    code, out, _ = check(capsys, root, "--format", fmt)
    assert code == 0 and "| class | pixels | fraction | images |" in out and "no problems found" in out
    expected = {"sbd": ("3 images", "| aeroplane |"), "cityscapes": ("2 images", "| traffic light |"),
                "folder": ("5 images", "| bird |")}[fmt]
    assert all(text in out for text in expected)


def test_sbd_train_aug_is_checked_with_the_voc_root(sbd_tree, capsys):
    code, out, _ = check(capsys, sbd_tree.root, "--format", "sbd", "--split", "train_aug", "--voc-root",
                         sbd_tree.voc_root)
    assert code == 0 and "5 images" in out


def test_problems_are_all_named_and_fail_the_check(cityscapes_tree, folder_tree, capsys):
    gt = cityscapes_tree.root / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_007973_gtFine_labelIds.png"
    write_labels(gt, np.zeros((32, 40)))
    image = cityscapes_tree.root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png"
    image.write_bytes(image.read_bytes()[:100])
    code, out, err = check(capsys, cityscapes_tree.root, "--format", "cityscapes", "--split", "val")
    assert code == 1 and "3 images, 2 with problems" in out
    assert "2 of 3 images have problems" in err and "frankfurt_000001_007973_gtFine_labelIds.png" in err
    assert "cannot read" in err and "lindau_000000_000019_leftImg8bit.png" in err

    mask = folder_tree.masks["cat_02"].copy()
    mask[0, :3] = 9
    write_labels(folder_tree.root / "masks" / "cat_02.png", mask)
    code, _, err = check(capsys, folder_tree.root, "--format", "folder", "--split", "val")
    assert code == 1 and "cat_02.png: mask values [9] outside the class ids 0..3" in err


def test_coco_check_reads_every_image_of_the_annotation_file(tmp_path, capsys):
    root = export_shapes(tmp_path / "coco", "coco", {"train": 3}, image_size=32, progress=False)
    code, out, _ = check(capsys, root, "--format", "coco")
    assert code == 0 and "3 images" in out and "| circle |" in out
    (root / "train2017" / "shapes_train_000002.jpg").unlink()
    code, _, err = check(capsys, root, "--format", "coco")
    assert code == 1 and "shapes_train_000002.jpg" in err
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 99
    ann_file.write_text(json.dumps(data))
    code, _, err = check(capsys, root, "--format", "coco")
    assert code == 1 and "category_id 99" in err
