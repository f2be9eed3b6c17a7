"""Entries of split lists and annotation files cannot point outside the dataset root."""
import json
import re

import pytest

from seglab.data import SBD, COCOInstances, FolderSegmentation, VOCSegmentation, export_shapes
from seglab.data.paths import check_entry

ESCAPES = ["../../etc/passwd", "a/../../b", "/etc/passwd", "..\\secret", "C:\\Windows\\x", "C:x"]


@pytest.mark.parametrize("entry", ESCAPES)
def test_absolute_and_parent_entries_are_rejected_naming_file_and_entry(entry):
    expected = rf"list\.txt: entry {re.escape(repr(entry))} points outside the dataset root"
    with pytest.raises(ValueError, match=expected):
        check_entry(entry, "list.txt")


@pytest.mark.parametrize("entry", ["2007_000032", "sub/dir/x.jpg", "a..b", "./x"])
def test_relative_entries_pass_unchanged(entry):
    assert check_entry(entry, "list.txt") == entry


def append_line(path, line):
    path.write_text(path.read_text() + line + "\n")


def test_every_reader_rejects_an_escaping_list_entry(voc_root, sbd_tree, folder_tree, tmp_path):
    append_line(voc_root / "ImageSets" / "Segmentation" / "train.txt", "../../outside")
    with pytest.raises(ValueError, match=r"train\.txt: entry '\.\./\.\./outside'"):
        VOCSegmentation(voc_root, "train")
    append_line(sbd_tree.root / "val.txt", "/etc/passwd")
    with pytest.raises(ValueError, match=r"val\.txt: entry '/etc/passwd'"):
        SBD(sbd_tree.root, "val")
    with pytest.raises(ValueError, match=r"val\.txt: entry '/etc/passwd'"):  # through train_aug's lists too
        SBD(sbd_tree.root, "train_aug", voc_root=sbd_tree.voc_root)
    append_line(folder_tree.root / "train.txt", "../images/cat_01")
    with pytest.raises(ValueError, match=r"train\.txt: entry '\.\./images/cat_01'"):
        FolderSegmentation(folder_tree.root, split="train")

    coco = export_shapes(tmp_path / "coco", "coco", {"val": 2}, image_size=16, progress=False)
    ann_file = coco / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    data["images"][1]["file_name"] = "../../../etc/hosts"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_val2017\.json: entry '\.\./\.\./\.\./etc/hosts'"):
        COCOInstances(coco / "val2017", ann_file)
