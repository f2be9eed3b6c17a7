import numpy as np
import pytest
import torch
from layouts import FOLDER_PALETTE, write_image, write_labels
from PIL import Image
from torchvision import tv_tensors

from seglab.cli import main
from seglab.data import FolderSegmentation, VOCSegmentation, build_dataset
from seglab.data.palette import voc_palette


def test_palette_masks_with_a_split_file_give_class_ids_and_the_pngs_palette(folder_tree):
    dataset = FolderSegmentation(folder_tree.root, split="train")
    assert dataset.stems == ["dog_02", "cat_01", "dog_01"]  # the split file's order
    assert dataset.classes == ("background", "cat", "dog", "bird")
    assert dataset.palette[:4] == FOLDER_PALETTE
    for index, stem in enumerate(dataset.stems):
        image, target = dataset[index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, *folder_tree.masks[stem].shape)
        assert isinstance(target["mask"], tv_tensors.Mask) and target["mask"].dtype == torch.int64
        np.testing.assert_array_equal(target["mask"].numpy(), folder_tree.masks[stem])  # palette indices = ids


def test_grayscale_masks_without_split_use_every_stem_the_classes_argument_and_the_voc_palette(tmp_path):
    masks = {}
    for seed, stem in enumerate(["b", "a", "c"]):
        write_image(tmp_path / "images" / f"{stem}.{['jpg', 'png', 'JPEG'][seed]}", 6, 7 + seed, seed)
        masks[stem] = np.arange(6 * (7 + seed)).reshape(6, 7 + seed) % 3
        write_labels(tmp_path / "masks" / f"{stem}.png", masks[stem])
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    dataset = FolderSegmentation(tmp_path, classes=["sky", "grass", "road"])
    assert dataset.stems == ["a", "b", "c"] and dataset.classes == ("sky", "grass", "road")
    assert dataset.palette == voc_palette()
    for index, stem in enumerate(dataset.stems):
        np.testing.assert_array_equal(dataset[index][1]["mask"].numpy(), masks[stem])


def test_image_without_mask_mask_without_image_and_unknown_split_stems_are_named(folder_tree):
    root = folder_tree.root
    (root / "masks" / "dog_03.png").unlink()
    with pytest.raises(ValueError, match=r"images without a mask .*images/dog_03\.jpg"):
        FolderSegmentation(root)
    with pytest.raises(ValueError, match=r"images without a mask .*dog_03"):
        FolderSegmentation(root, split="val")
    assert len(FolderSegmentation(root, split="train")) == 3  # the split does not need dog_03
    write_labels(root / "masks" / "dog_03.png", folder_tree.masks["dog_03"])
    write_labels(root / "masks" / "fish_01.png", folder_tree.masks["dog_03"])
    dataset = FolderSegmentation(root)  # a mask without an image is not read: a warning naming it
    assert len(dataset) == 5 and len(dataset.warnings) == 1
    assert dataset.warnings[0].startswith(f"{root / 'masks' / 'fish_01.png'}: a mask without an image fish_01.*")
    assert FolderSegmentation(root, split="train").warnings == []  # a split reads only its own stems
    (root / "val.txt").write_text("cat_02\nbird_07\n")
    with pytest.raises(ValueError, match=r"val\.txt: 1 stems without an image .*: bird_07"):
        FolderSegmentation(root, split="val")
    with pytest.raises(FileNotFoundError, match=r"split list .*test\.txt"):
        FolderSegmentation(root, split="test")


def test_missing_class_names_and_doubled_stems_are_errors(folder_tree):
    root = folder_tree.root
    write_image(root / "images" / "cat_01.png", 33, 40, 0)
    with pytest.raises(ValueError, match=r"cat_01\.jpg and .*cat_01\.png have the same stem"):
        FolderSegmentation(root, split="train")
    (root / "images" / "cat_01.png").unlink()
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match="pass classes= or write .*classes.txt"):
        FolderSegmentation(root)


def test_build_dataset_and_training_from_the_command_line(folder_tree, tmp_path):
    assert len(build_dataset("folder", "all", root=folder_tree.root)) == 5
    assert build_dataset("folder", "val", root=folder_tree.root).stems == ["cat_02", "dog_03"]
    run = tmp_path / "run"
    main(["train", "--model", "fcn8s_vgg16", "--width-mult", "0.0625", "--model-option", "padding=same",
          "--data", "folder", "--data-root", str(folder_tree.root), "--crop-size", "32", "--iters", "1",
          "--batch-size", "2", "--out", str(run)])
    assert (run / "last.pt").is_file()


def test_mask_map_and_palette_reader_options_apply_on_read_and_are_checked(tmp_path):
    labels = np.array([[0, 255, 255], [0, 0, 255]])
    write_image(tmp_path / "images" / "a.jpg", 2, 3, 0)
    write_labels(tmp_path / "masks" / "a.png", labels)
    dataset = FolderSegmentation(tmp_path, classes=["background", "object"], mask_map={255: 1})
    np.testing.assert_array_equal(dataset[0][1]["mask"].numpy(), np.where(labels == 255, 1, 0))
    swapped = FolderSegmentation(tmp_path, classes=["background", "object"], mask_map={0: 255, 255: 0})
    np.testing.assert_array_equal(swapped[0][1]["mask"].numpy(), np.where(labels == 255, 0, 255))
    for bad, message in [({255: 2}, r"255 -> 2, but 2 is not a class id 0\.\.1"), ("255:1", "must be a mapping"),
                         ({1.5: 1}, r"stored value 1\.5 is not an integer"), ({-1: 0}, "stored value -1")]:
        with pytest.raises(ValueError, match=message):
            FolderSegmentation(tmp_path, classes=["background", "object"], mask_map=bad)
    with pytest.raises(FileNotFoundError, match="palette file .*nope.txt does not exist"):
        FolderSegmentation(tmp_path, classes=["background", "object"], palette=str(tmp_path / "nope.txt"))
    (tmp_path / "p.txt").write_text("0 0 0\n5 1 2 3\n")
    with pytest.raises(ValueError, match=r"p\.txt line 2: class id 5 is not 0\.\.1 or 255"):
        FolderSegmentation(tmp_path, classes=["background", "object"], palette=str(tmp_path / "p.txt"))
    (tmp_path / "p.txt").write_text("0 0 0\n1 2 300\n")
    with pytest.raises(ValueError, match=r"p\.txt line 2: colour \[1, 2, 300\] is not three values"):
        FolderSegmentation(tmp_path, classes=["background", "object"], palette=str(tmp_path / "p.txt"))


def test_voc_reader_converts_rgb_masks_with_the_voc_palette_and_maps_values(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    ids = dataset[0][1]["mask"].numpy()
    colours = np.array(voc_palette(), dtype=np.uint8)
    Image.fromarray(colours[ids]).save(dataset.mask_path(0))  # the same labels as an RGB colour mask
    with pytest.raises(ValueError, match="RGB colour mask"):
        dataset[0]
    np.testing.assert_array_equal(VOCSegmentation(voc_root, "train", palette="voc")[0][1]["mask"].numpy(), ids)
    mapped = VOCSegmentation(voc_root, "train", palette="voc", mask_map={1: 2})[0][1]["mask"].numpy()
    np.testing.assert_array_equal(mapped, np.where(ids == 1, 2, ids))
