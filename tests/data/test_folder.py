import numpy as np
import pytest
import torch
from layouts import FOLDER_PALETTE, write_image, write_labels
from torchvision import tv_tensors

from seglab.cli import main
from seglab.data import FolderSegmentation, build_dataset
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
    with pytest.raises(ValueError, match=r"masks without an image .*masks/fish_01\.png"):
        FolderSegmentation(root)
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
