"""The official Cityscapes pixel-level evaluation, against cityscapesscripts' own
``evaluation/evalPixelLevelSemanticLabeling.py`` on a small tree (``cityscapes_tree``, tests/conftest.py)."""
import math

import numpy as np
import pytest
from layouts import official_args, random_labels, write_labels
from PIL import Image

from seglab.data.cityscapes import CLASSES, result_name
from seglab.metrics import evaluate_results as exported
from seglab.metrics.cityscapes import evaluate_results


def write_predictions(tree, results_dir):
    """Label-id predictions of the val frames: the ground truth on 60% of the pixels, random label ids
    other than 32 elsewhere (so motorcycle is in neither: no IoU; train is predicted only: IoU 0)."""
    rng = np.random.default_rng(7)
    for k, prefix in enumerate(p for p in sorted(tree.label_ids) if not p.startswith("aachen")):
        gt = tree.label_ids[prefix]
        pred = random_labels(*gt.shape, [i for i in range(34) if i != 32], seed=k)
        keep = rng.random(gt.shape) < 0.6
        pred[keep] = gt[keep]
        write_labels(results_dir / f"city{k}" / result_name(prefix), pred)


def test_miou_of_label_id_predictions_matches_the_official_evaluation(cityscapes_tree, tmp_path):
    results = tmp_path / "results"
    write_predictions(cityscapes_tree, results)
    official, args = official_args(tmp_path, results)
    gts = sorted(str(p) for p in (cityscapes_tree.root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    expected = official.evaluateImgLists([official.getPrediction(args, gt) for gt in gts], gts, args)

    ours = evaluate_results(results, cityscapes_tree.root, "val")
    assert ours["images"] == 3 and len(ours["iou"]) == 19
    for name, iou in zip(CLASSES, ours["iou"]):
        if math.isnan(expected["classScores"][name]):
            assert math.isnan(iou), name
        else:
            assert iou == pytest.approx(expected["classScores"][name], abs=1e-12), name
    assert ours["miou"] == pytest.approx(expected["averageScoreClasses"], abs=1e-12)
    assert math.isnan(ours["iou"][CLASSES.index("motorcycle")]) and ours["iou"][CLASSES.index("train")] == 0
    # label ids that are none of the 19 classes are predicted: their column stays out of every mean
    for per_class, mean in (("acc", "mean_acc"), ("dice", "mean_dice"), ("precision", "mean_precision"),
                            ("recall", "mean_recall")):
        assert len(ours[per_class]) == 19, per_class
        assert ours[mean] == pytest.approx(np.nanmean(ours[per_class]), abs=1e-12), mean


def test_evaluation_names_a_missing_or_doubled_prediction(cityscapes_tree, tmp_path):
    results = tmp_path / "results"
    write_predictions(cityscapes_tree, results)
    extra = results / "lindau_000000_000019_leftImg8bit.png"
    Image.new("L", (48, 32)).save(extra)
    with pytest.raises(ValueError, match="several predictions for .*lindau_000000_000019_gtFine_labelIds.png"):
        evaluate_results(results, cityscapes_tree.root, "val")
    extra.unlink()
    next(results.rglob("frankfurt_000001_007973*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="no prediction frankfurt_000001_007973"):
        evaluate_results(results, cityscapes_tree.root, "val")


def test_the_engine_module_is_an_alias_of_the_metrics_module():
    from seglab.engine import cityscapes_eval
    from seglab.metrics import cityscapes

    assert cityscapes_eval.evaluate_results is cityscapes.evaluate_results is exported
    assert cityscapes_eval.match_predictions is cityscapes.match_predictions
