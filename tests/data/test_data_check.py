"""``seglab data check ROOT --format ...`` on every layout, and the problems it names."""
import json

import numpy as np
import pytest
from layouts import random_labels, write_labels
from PIL import Image

from seglab.cli import main
from seglab.data import VOCSegmentation, build_dataset, export_shapes, validate_dataset
from seglab.data.palette import voc_palette
from seglab.engine.datasets import build_split


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
    assert code == 0 and "| class | pixels | fraction | images |" in out
    assert "no problems found" in out or "no errors, " in out  # warnings (e.g. a class with no pixels) pass
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


# -- the traps: each on generated data, through `seglab data check` and through build_split (before `train`) --
def photo(path, height, width, seed, orientation=None):
    """A random RGB photo of (height, width) as stored, with EXIF ``orientation`` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)


def binary_folder(root, count=3, classes="background\nobject\n"):
    """root/images/p<i>.jpg with 0/255 masks (255 = the object, as binary masks are often saved); returns the
    number of 255 pixels."""
    objects = 0
    for i in range(count):
        photo(root / "images" / f"p{i}.jpg", 20, 24 + i, i)
        mask = np.zeros((20, 24 + i), np.uint8)
        mask[3:9 + i, 4:15] = 255
        objects += int((mask == 255).sum())
        write_labels(root / "masks" / f"p{i}.png", mask)
    (root / "classes.txt").write_text(classes)
    return objects


def test_binary_0_255_masks_warn_with_the_mask_map_fix_which_makes_the_check_clean(tmp_path, capsys):
    objects = binary_folder(tmp_path)
    code, out, _ = check(capsys, tmp_path, "--format", "folder")
    assert code == 0 and "no errors, 4 warnings (above)" in out
    for i in range(3):
        assert f"warning: {tmp_path / 'masks' / f'p{i}.png'}: a binary mask saved as 0/255 (255 on " in out
    assert out.count("255 means ignore, so its foreground would be dropped") == 3
    assert out.count("--data-option 'mask_map={255: 1}'") == 3
    assert "warning: class 1 'object' has no pixels in the dataset (3 images checked" in out
    assert "| object | 0 | 0.00% | 0 |" in out and "classes with no pixels: object" in out

    code, out, _ = check(capsys, tmp_path, "--format", "folder", "--data-option", "mask_map={255: 1}")
    assert code == 0 and "no problems found" in out and "warning" not in out
    assert f"| object | {objects} |" in out and "| ignore (255) | 0 | 0.00% | |" in out
    assert "imbalance ratio (max / min pixel share over the 2 classes present): " in out


def test_a_mask_map_outside_the_classes_or_not_a_mapping_is_an_error_naming_the_value(tmp_path, capsys):
    binary_folder(tmp_path)
    code, _, err = check(capsys, tmp_path, "--format", "folder", "--data-option", "mask_map={255: 2}")
    assert code == 1 and "mask_map {255: 2}: 255 -> 2, but 2 is not a class id 0..1 or 255" in err
    code, _, err = check(capsys, tmp_path, "--format", "folder", "--data-option", "mask_map=255:1")
    assert code == 1 and "mask_map must be a mapping" in err and "got 15301" in err  # YAML 1.1 sexagesimal
    code, _, err = check(capsys, tmp_path, "--format", "folder", "--data-option", "mask_map={300: 1}")
    assert code == 1 and "stored value 300 is not an integer 0..255" in err


def rgb_folder(root, colours, classes=("background", "cat", "dog")):
    """RGB colour masks of ids 0..2 painted with ``colours`` (id -> (r, g, b)), a top row of ``colours[255]``;
    returns the (H, W) ids of each stem."""
    ids = {}
    for i in range(2):
        photo(root / "images" / f"c{i}.png", 10, 12, i)
        labels = random_labels(10, 12, [0, 1, 2], i)
        labels[0] = 255
        rgb = np.zeros((10, 12, 3), np.uint8)
        for label in (0, 1, 2, 255):
            rgb[labels == label] = colours[label]
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "masks" / f"c{i}.png")
        ids[f"c{i}"] = labels.astype(np.int64)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return ids


def test_rgb_colour_masks_are_detected_and_converted_with_the_voc_palette(tmp_path, capsys):
    voc = voc_palette()
    ids = rgb_folder(tmp_path, {0: voc[0], 1: voc[1], 2: voc[2], 255: voc[255]})
    code, out, err = check(capsys, tmp_path, "--format", "folder")
    assert code == 1 and "2 of 2 images have problems" in err
    assert f"{tmp_path / 'masks' / 'c0.png'}: expected a palette (P) or grayscale (L) PNG of class ids, got an " \
           "RGB colour mask (mode RGB" in err and "--data-option palette=voc" in err and "palette=FILE" in err
    code, out, _ = check(capsys, tmp_path, "--format", "folder", "--data-option", "palette=voc")
    assert code == 0 and "no problems found" in out
    expected = np.bincount(np.concatenate([m[m != 255] for m in ids.values()]), minlength=3)
    assert all(f"| {name} | {n} |" in out for name, n in zip(["background", "cat", "dog"], expected))
    assert "| ignore (255) | 24 |" in out
    dataset = build_dataset("folder", "all", root=tmp_path, palette="voc")
    np.testing.assert_array_equal(dataset[1][1]["mask"].numpy(), ids["c1"])


def test_rgb_colour_masks_with_a_palette_file_and_a_colour_not_in_it(tmp_path, capsys):
    colours = {0: (0, 0, 0), 1: (250, 10, 10), 2: (10, 250, 10), 255: (255, 255, 255)}
    ids = rgb_folder(tmp_path, colours)
    palette = tmp_path / "palette.txt"
    palette.write_text("# class colours\n0 0 0\n250, 10, 10\n10 250 10\n\n255 255 255 255  # ignore\n")
    code, out, _ = check(capsys, tmp_path, "--format", "folder", "--data-option", f"palette={palette}")
    assert code == 0 and "no problems found" in out
    dataset = build_dataset("folder", "all", root=tmp_path, palette=str(palette))
    assert dataset.palette[:3] == [(0, 0, 0), (250, 10, 10), (10, 250, 10)]
    np.testing.assert_array_equal(dataset[0][1]["mask"].numpy(), ids["c0"])

    rgb = np.array(Image.open(tmp_path / "masks" / "c1.png"))
    rgb[5, 5] = (7, 7, 7)
    Image.fromarray(rgb).save(tmp_path / "masks" / "c1.png")
    code, _, err = check(capsys, tmp_path, "--format", "folder", "--data-option", f"palette={palette}")
    assert code == 1 and f"{tmp_path / 'masks' / 'c1.png'}: colour (7, 7, 7) (1 pixels) is not in the palette" in err
    palette.write_text("0 0 0\n1 2 3 4 5\n")
    code, _, err = check(capsys, tmp_path, "--format", "folder", "--data-option", f"palette={palette}")
    assert code == 1 and f"{palette} line 2: expected 'r g b' or 'id r g b'" in err


def test_an_image_without_a_mask_is_an_error_and_a_mask_without_an_image_a_warning(tmp_path, capsys):
    binary_folder(tmp_path)
    photo(tmp_path / "images" / "lonely.jpg", 20, 24, 9)
    code, _, err = check(capsys, tmp_path, "--format", "folder", "--data-option", "mask_map={255: 1}")
    assert code == 1 and f"1 images without a mask <stem>.png in {tmp_path / 'masks'}: " \
                         f"{tmp_path / 'images' / 'lonely.jpg'}" in err
    (tmp_path / "images" / "lonely.jpg").rename(tmp_path / "lonely.jpg")
    write_labels(tmp_path / "masks" / "orphan.png", np.zeros((20, 24)))
    code, out, _ = check(capsys, tmp_path, "--format", "folder", "--data-option", "mask_map={255: 1}")
    assert code == 0 and "3 images" in out and "no errors, 1 warnings (above)" in out
    assert f"warning: {tmp_path / 'masks' / 'orphan.png'}: a mask without an image orphan.* in " in out


def test_an_exif_rotated_photo_is_read_as_displayed_and_a_size_mismatch_says_whether_exif_explains_it(tmp_path,
                                                                                                      capsys):
    photo(tmp_path / "images" / "phone.jpg", 30, 40, 0, orientation=6)  # stored 40x30 (WxH), shown 30x40
    write_labels(tmp_path / "masks" / "phone.png", random_labels(40, 30, [0, 1], 0))  # drawn on the photo as shown
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    code, out, _ = check(capsys, tmp_path, "--format", "folder")
    assert code == 0 and "no errors, 1 warnings" in out
    assert f"warning: {tmp_path / 'images' / 'phone.jpg'}: EXIF orientation 6 (rotated 90° clockwise): the photo " \
           "is read in its displayed orientation, which its mask matches" in out
    image, target = build_dataset("folder", "all", root=tmp_path)[0]
    assert image.shape == (3, 40, 30) and target["mask"].shape == (40, 30)

    write_labels(tmp_path / "masks" / "phone.png", random_labels(30, 40, [0, 1], 0))  # drawn on the stored pixels
    code, _, err = check(capsys, tmp_path, "--format", "folder")
    assert code == 1 and f"mask {tmp_path / 'masks' / 'phone.png'} is 40x30 (WxH) but image " \
                         f"{tmp_path / 'images' / 'phone.jpg'} is 30x40 as displayed (EXIF orientation 6" in err
    assert "the mask matches the photo as stored" in err and "--data-option exif_transpose=false" in err
    code, out, _ = check(capsys, tmp_path, "--format", "folder", "--data-option", "exif_transpose=false")
    assert code == 0 and "no problems found" in out

    photo(tmp_path / "images" / "phone.jpg", 30, 40, 0)  # no EXIF: the sizes just differ
    write_labels(tmp_path / "masks" / "phone.png", random_labels(30, 41, [0, 1], 0))
    code, _, err = check(capsys, tmp_path, "--format", "folder")
    assert code == 1 and "is 41x30 (WxH) but image" in err and "has no EXIF rotation, so that does not explain" in err


def test_a_class_with_no_pixels_is_a_warning_and_the_table_has_the_imbalance_ratio(folder_tree, capsys):
    for stem, mask in folder_tree.masks.items():
        write_labels(folder_tree.root / "masks" / f"{stem}.png", np.where(mask == 3, 0, mask))
    code, out, _ = check(capsys, folder_tree.root, "--format", "folder", "--split", "val")
    assert code == 0 and "warning: class 3 'bird' has no pixels in split 'val' (2 images checked" in out
    pixels = {c: sum(int((np.where(folder_tree.masks[s] == 3, 0, folder_tree.masks[s]) == c).sum())
                     for s in ["cat_02", "dog_03"]) for c in range(3)}
    ratio = max(pixels.values()) / min(pixels.values())
    assert f"over the 3 classes present): {ratio:.1f}" in out and "classes with no pixels: bird" in out


def test_build_split_runs_the_same_checks_prints_the_warnings_and_writes_them(tmp_path, capsys):
    root = tmp_path / "data"
    objects = binary_folder(root)
    report = tmp_path / "run" / "data_check_all.txt"
    dataset = build_split("folder", "all", root=root, announce=True, report=report)
    out = capsys.readouterr().out
    assert out.count("seglab: warning: ") == 4 and "mask_map={255: 1}" in out
    assert len(dataset.data_check["warnings"]) == 4 and dataset.data_check["summary"]["pixels_per_class"][1] == 0
    text = report.read_text()
    assert "| class | pixels | fraction | images |" in text and text.count("warning: ") == 4
    build_split("folder", "all", root=root, announce=False)
    assert "warning" not in capsys.readouterr().out

    fixed = build_split("folder", "all", root=root, options={"mask_map": {255: 1}}, report=report)
    assert fixed.data_check["warnings"] == [] and fixed.data_check["summary"]["pixels_per_class"][1] == objects
    assert "warning" not in capsys.readouterr().out and "warning" not in report.read_text()
    with pytest.raises(ValueError, match=r"mask_map \{255: 5\}: 255 -> 5"):
        build_split("folder", "all", root=root, options={"mask_map": {255: 5}})


def test_build_split_refuses_rgb_masks_orphan_images_and_sizes_and_warns_of_the_rest(tmp_path, capsys):
    voc = voc_palette()
    rgb_folder(tmp_path / "rgb", {0: voc[0], 1: voc[1], 2: voc[2], 255: voc[255]})
    with pytest.raises(ValueError, match=r"c0\.png: expected a palette .* RGB colour mask .*palette=voc"):
        build_split("folder", "all", root=tmp_path / "rgb", announce=False)
    assert build_split("folder", "all", root=tmp_path / "rgb", options={"palette": "voc"}).data_check["warnings"] == []

    root = tmp_path / "exif"
    photo(root / "images" / "phone.jpg", 30, 40, 0, orientation=6)
    write_labels(root / "masks" / "phone.png", random_labels(40, 30, [0, 1], 0))
    write_labels(root / "masks" / "stray.png", random_labels(40, 30, [0, 1], 0))
    (root / "classes.txt").write_text("background\nthing\nbird\n")
    warnings = build_split("folder", "all", root=root).data_check["warnings"]
    assert len(warnings) == 3 and "stray.png: a mask without an image" in warnings[0]
    assert "phone.jpg: EXIF orientation 6" in warnings[1] and "class 2 'bird' has no pixels" in warnings[2]
    photo(root / "images" / "lonely.jpg", 8, 8, 1)
    with pytest.raises(ValueError, match=r"images without a mask .*lonely\.jpg"):
        build_split("folder", "all", root=root)


@pytest.mark.parametrize("fmt", ["folder", "voc"])
def test_a_dataset_without_images_is_an_error_naming_the_folder(tmp_path, capsys, fmt):
    if fmt == "folder":
        for name in ("images", "masks"):
            (tmp_path / name).mkdir()
        (tmp_path / "classes.txt").write_text("background\nthing\n")
    else:  # a VOC split list with no ids
        for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp_path / name).mkdir(parents=True)
        (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    code, out, err = check(capsys, tmp_path, "--format", fmt)
    assert code == 1 and "no problems found" not in out
    assert err.strip().startswith(f"seglab data: error: {tmp_path}: no images") and "nothing to check" in err
    with pytest.raises(ValueError, match=f"^{tmp_path}: no images"):  # the same before training or evaluation
        build_split(fmt, "all" if fmt == "folder" else "train", root=tmp_path, announce=False)
