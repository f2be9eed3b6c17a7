"""Fixtures shared across test folders: dataset trees that both a reader (tests/data) and a metric
(tests/metrics) need. Their writers are in tests/layouts.py."""
from types import SimpleNamespace

import pytest
from layouts import GT_LABEL_IDS, random_labels, write_image, write_labels


@pytest.fixture
def cityscapes_tree(tmp_path):
    """Cityscapes root with val frames of frankfurt (2) and lindau (1) and train frames of aachen (2),
    32x48 images, label ids ``GT_LABEL_IDS``. Returns ``root`` and ``label_ids``: {file name prefix: (H, W)}."""
    root = tmp_path / "cityscapes"
    frames = {"val": ["frankfurt_000000_000294", "frankfurt_000001_007973", "lindau_000000_000019"],
              "train": ["aachen_000000_000019", "aachen_000001_000019"]}
    label_ids = {}
    for seed, (split, prefix) in enumerate((s, p) for s, ps in frames.items() for p in ps):
        city = prefix.split("_")[0]
        write_image(root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png", 32, 48, seed)
        label_ids[prefix] = random_labels(32, 48, GT_LABEL_IDS, seed)
        write_labels(root / "gtFine" / split / city / f"{prefix}_gtFine_labelIds.png", label_ids[prefix])
    return SimpleNamespace(root=root, label_ids=label_ids)
