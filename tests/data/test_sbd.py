import numpy as np
import pytest
import scipy.io
import torch
from torchvision import tv_tensors

from seglab.data import SBD, build_dataset
from seglab.data.voc import VOC_CLASSES
from seglab.data.palette import voc_palette


def test_items_are_uint8_images_and_int64_masks_read_from_the_mat_structs(sbd_tree):
    dataset = SBD(sbd_tree.root, "train")
    assert len(dataset) == 3 and dataset.ids == ["a", "b", "c"]
    assert dataset.classes == VOC_CLASSES and dataset.palette == voc_palette()
    for index, image_id in enumerate("abc"):
        image, target = dataset[index]
        expected = sbd_tree.masks["sbd", image_id]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, *expected.shape)
        assert isinstance(target["mask"], tv_tensors.Mask) and target["mask"].dtype == torch.int64
        np.testing.assert_array_equal(target["mask"].numpy(), expected)


def test_val_split_and_transforms(sbd_tree):
    calls = []

    def transforms(image, target):
        calls.append(tuple(image.shape))
        return image, target

    dataset = SBD(sbd_tree.root, "val", transforms=transforms)
    assert dataset.ids == ["d", "e"]
    dataset[1]
    assert calls == [(3, *sbd_tree.masks["sbd", "e"].shape)]


def test_train_aug_is_sbd_train_val_and_voc_train_minus_voc_val_with_voc_masks_for_voc_ids(sbd_tree):
    dataset = SBD(sbd_tree.root, "train_aug", voc_root=sbd_tree.voc_root)
    # SBD train a b c + SBD val d e + VOC train c f, minus VOC val e g
    assert dataset.ids == ["a", "b", "c", "d", "f"]
    for index, image_id in enumerate(dataset.ids):
        source = "voc" if image_id in ("c", "f") else "sbd"
        np.testing.assert_array_equal(dataset[index][1]["mask"].numpy(), sbd_tree.masks[source, image_id])
        root = sbd_tree.voc_root if source == "voc" else sbd_tree.root
        assert dataset.image_path(index).is_relative_to(root) and dataset.mask_path(index).is_relative_to(root)
    assert (dataset[dataset.ids.index("c")][1]["mask"] == 255).any()  # VOC's border, not SBD's mask
    built = build_dataset("sbd", "train_aug", root=sbd_tree.root, voc_root=sbd_tree.voc_root)
    assert built.ids == dataset.ids


def test_train_aug_needs_voc_root_and_only_train_aug_takes_it(sbd_tree):
    with pytest.raises(ValueError, match="train_aug.*needs voc_root"):
        SBD(sbd_tree.root, "train_aug")
    with pytest.raises(ValueError, match="voc_root only applies"):
        SBD(sbd_tree.root, "train", voc_root=sbd_tree.voc_root)
    with pytest.raises(FileNotFoundError, match="split list .*nosuch.txt"):
        SBD(sbd_tree.root, "nosuch")


def test_corrupt_mat_and_mat_without_gtcls_are_named(sbd_tree):
    dataset = SBD(sbd_tree.root, "train")
    dataset.mask_path(0).write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match=r"cannot read .*cls/a\.mat"):
        dataset[0]
    scipy.io.savemat(dataset.mask_path(1), {"GTinst": {"Segmentation": np.zeros((2, 2), np.uint8)}})
    with pytest.raises(ValueError, match=r"cls/b\.mat.*GTcls"):
        dataset[1]
    dataset.mask_path(2).unlink()
    with pytest.raises(FileNotFoundError, match=r"cls/c\.mat"):
        dataset[2]


def test_mask_of_another_size_names_both_files(sbd_tree):
    dataset = SBD(sbd_tree.root, "val")
    scipy.io.savemat(dataset.mask_path(0), {"GTcls": {"Segmentation": np.zeros((3, 4), np.uint8)}})
    with pytest.raises(ValueError, match=r"mask .*d\.mat is 4x3 \(WxH\) but image .*d\.jpg"):
        dataset[0]


def test_seglab_train_reads_train_aug_through_data_option(sbd_tree, tmp_path):
    from seglab.cli import main
    from seglab.io import safe_load as load_checkpoint

    main(["train", "--model", "fcn32s_vgg16", "--width-mult", "0.0625", "--model-option", "padding=same",
          "--data", "sbd", "--data-root", str(sbd_tree.root), "--train-split", "train_aug",
          "--data-option", f"voc_root={sbd_tree.voc_root}", "--val-split", "", "--batch-size", "5", "--iters", "1",
          "--crop-size", "32", "--device", "cpu", "--out", str(tmp_path / "run")])
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] == 1 and checkpoint["config"]["data_options"] == {"voc_root": str(sbd_tree.voc_root)}
