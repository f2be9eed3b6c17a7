"""Writers of dataset files in their real formats (images, label PNGs, SBD .mat structs, split lists), and
the official Cityscapes evaluation's settings for them; shared by tests/data and tests/metrics."""
import copy

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from seglab.data.palette import voc_palette

VOC_PALETTE = [channel for colour in voc_palette() for channel in colour]
# Cityscapes label ids written in the ground truth: all of 0..33 except 31 (train) and 32 (motorcycle)
GT_LABEL_IDS = [i for i in range(34) if i not in (31, 32)]
# a palette unlike VOC's, so that the reader's palette provably comes from the PNGs
FOLDER_PALETTE = [(0, 0, 0), (250, 10, 10), (10, 250, 10), (10, 10, 250)]


def write_image(path, height, width, seed):
    """A random RGB image, saved by its suffix (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_labels(path, labels, palette=None):
    """(H, W) uint8 labels as a grayscale PNG, or a palette PNG when ``palette`` (flat r, g, b list) is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8))
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def random_labels(height, width, values, seed):
    """(H, W) uint8 drawn from ``values``."""
    return np.random.default_rng(seed).choice(np.asarray(values, dtype=np.uint8), size=(height, width))


def write_sbd_mat(path, segmentation):
    """SBD's cls/<id>.mat: struct GTcls with Segmentation, Boundaries (20 sparse edge maps) and CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        edges = np.zeros(segmentation.shape, dtype=bool)
        edges[:, 1:] = (segmentation[:, 1:] != segmentation[:, :-1]) & (segmentation[:, 1:] == k + 1)
        boundaries[k, 0] = scipy.sparse.csc_matrix(edges)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation, "Boundaries": boundaries,
                                      "CategoriesPresent": present}})


def write_voc_item(root, image_id, height, width, seed):
    """JPEGImages/<id>.jpg and SegmentationClass/<id>.png (VOC palette, classes 0..20, a 255 border)."""
    write_image(root / "JPEGImages" / f"{image_id}.jpg", height, width, seed)
    mask = random_labels(height, width, range(21), seed)
    mask[0, :] = 255
    write_labels(root / "SegmentationClass" / f"{image_id}.png", mask, VOC_PALETTE)
    return mask.astype(np.int64)


def write_list(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def official_args(tmp_path, results_dir):
    """A copy of evalPixelLevelSemanticLabeling's settings: quiet, no instance scores (no instanceIds
    files here), json written into tmp_path, predictions searched in ``results_dir``."""
    official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    args = copy.copy(official.args)
    args.evalInstLevelScore, args.quiet = False, True
    args.exportFile = str(tmp_path / "official" / "result.json")
    args.predictionPath, args.predictionWalk = str(results_dir), None
    return official, args
