import pytest

from seglab.data import Shapes, VOCSegmentation, build_dataset
from seglab.data.transforms import eval_transforms


def test_shapes_defaults_and_options():
    assert len(build_dataset("shapes", "train")) == 1000 and len(build_dataset("shapes", "val")) == 200
    transforms = eval_transforms()
    dataset = build_dataset("shapes", "val", num_images=7, image_size=48, seed=3, transforms=transforms)
    assert isinstance(dataset, Shapes) and len(dataset) == 7 and dataset.image_size == 48
    assert dataset.seed == 3 and dataset.transforms is transforms


def test_voc_reads_root_and_requires_it(voc_root):
    dataset = build_dataset("voc", "val", root=voc_root)
    assert isinstance(dataset, VOCSegmentation) and len(dataset) == 2
    with pytest.raises(ValueError, match="root"):
        build_dataset("voc", "val")
    with pytest.raises(ValueError, match="num_images"):
        build_dataset("voc", "val", root=voc_root, num_images=1)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="shapes, voc"):
        build_dataset("imagenet", "train")


def test_coco_layout_is_read_by_name(tmp_path):
    from seglab.data import COCOInstances, build_dataset, export_shapes

    export_shapes(tmp_path, "coco", {"val": 3}, image_size=32, seed=0)
    dataset = build_dataset("coco", "val", root=tmp_path)
    assert isinstance(dataset, COCOInstances) and len(dataset) == 3
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("coco", "val")
