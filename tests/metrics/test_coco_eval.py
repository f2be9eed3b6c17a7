import copy
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglab.data import COCOInstances, export_shapes
from seglab.metrics import coco_results, evaluate_coco, format_coco_table, write_coco_results
from seglab.metrics.coco import STAT_NAMES

# pycocotools' own decode() trips a NumPy 2 copy-keyword DeprecationWarning
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORIES = [{"id": 17, "name": "kite"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
LABEL_TO_CATEGORY = {1: 1, 2: 5, 3: 17}


def region(height, width, rows, cols) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


CROWD_REGION = region(100, 120, (70, 95), (0, 100))


def rle_json(mask: np.ndarray, compressed: bool = True) -> dict:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0] + counts if flat[0] else counts}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """Non-contiguous category ids, small / medium objects, a crowd region and an image without annotations."""
    root = tmp_path_factory.mktemp("handmade_eval")
    (root / "images").mkdir()  # targets are read without the images
    images = [{"id": 2, "file_name": "a.png", "height": 100, "width": 120},
              {"id": 9, "file_name": "b.png", "height": 40, "width": 60},
              {"id": 4, "file_name": "c.png", "height": 30, "width": 30}]
    blob = region(40, 60, (22, 35), (30, 52))
    annotations = [
        {"id": 1, "image_id": 2, "category_id": 5, "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]],
         "bbox": [10, 10, 50, 50], "area": 2500.0, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 17,
         "segmentation": [[80, 10, 110, 10, 95, 40], [70, 50, 80, 50, 75, 58]],
         "bbox": [70, 10, 40, 48], "area": 490.0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "segmentation": rle_json(CROWD_REGION, compressed=False),
         "bbox": [0, 70, 100, 25], "area": 2500.0, "iscrowd": 1},
        {"id": 4, "image_id": 9, "category_id": 1, "segmentation": [[5, 5, 25, 5, 25, 20, 5, 20]],
         "bbox": [5, 5, 20, 15], "area": 300.0, "iscrowd": 0},
        {"id": 5, "image_id": 9, "category_id": 17, "segmentation": rle_json(blob), "bbox": [30, 22, 22, 13],
         "area": float(blob.sum()), "iscrowd": 0},
    ]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return COCOInstances(root / "images", ann_file)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = export_shapes(tmp_path_factory.mktemp("shapes_eval"), "coco", {"train": 6, "val": 4}, image_size=64,
                         seed=0, progress=False)
    return {split: COCOInstances(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
            for split in ("train", "val")}


def ground_truth_as_predictions(ds):
    """Model-style outputs equal to the targets: score 1, masks (K, 1, H, W) float probabilities."""
    predictions, image_ids = [], []
    for index in range(len(ds)):
        target = ds.target(index)
        k = len(target["labels"])
        predictions.append({"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
                            "scores": torch.ones(k), "masks": target["masks"][:, None].float()})
        image_ids.append(target["image_id"])
    return predictions, image_ids


def perturbed_predictions(ds, seed=0):
    """Jittered boxes, shifted and noisy mask probabilities, missed objects, wrong classes, false positives."""
    rng = np.random.default_rng(seed)
    predictions, image_ids = [], []
    num_labels = len(ds.classes) - 1
    for index in range(len(ds)):
        target = ds.target(index)
        height, width = target["mask"].shape
        boxes, labels, scores, masks = [], [], [], []
        for box, label, mask in zip(target["boxes"].tolist(), target["labels"].tolist(), target["masks"].numpy()):
            if rng.random() < 0.15:
                continue  # missed
            boxes.append(np.asarray(box) + rng.normal(0, 1.5, 4))
            labels.append(label if rng.random() > 0.1 else int(rng.integers(1, num_labels + 1)))
            scores.append(rng.random())
            shifted = np.roll(mask, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)).astype(np.float32)
            masks.append(shifted * rng.uniform(0.45, 1.0, mask.shape) + (1 - shifted) * rng.uniform(0, 0.5, mask.shape))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, width - 10), rng.uniform(0, height - 10)
            w, h = rng.uniform(4, 20, 2)
            boxes.append(np.array([x, y, min(x + w, width), min(y + h, height)]))
            labels.append(int(rng.integers(1, num_labels + 1)))
            scores.append(rng.random() * 0.8)
            masks.append(region(height, width, (int(y), int(y + h)), (int(x), int(x + w))).astype(np.float32))
        predictions.append({
            "boxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "masks": torch.from_numpy(np.array(masks, dtype=np.float32)).reshape(-1, 1, height, width),
        })
        image_ids.append(target["image_id"])
    return predictions, image_ids


def reference_stats(ann_file, predictions, image_ids, label_to_category, iou_type, eval_image_ids=None):
    """COCOeval run directly, on records built here as torchvision's reference evaluator does
    (bbox records without masks, segm records without boxes)."""
    gt = COCO(str(ann_file))
    records = []
    for prediction, image_id in zip(predictions, image_ids):
        boxes = prediction["boxes"].numpy().astype(np.float64)
        for k, (label, score) in enumerate(zip(prediction["labels"].tolist(), prediction["scores"].tolist())):
            record = {"image_id": image_id, "category_id": label_to_category[label], "score": score}
            if iou_type == "bbox":
                x1, y1, x2, y2 = boxes[k]
                record["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                binary = (prediction["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
                record["segmentation"] = mask_utils.encode(np.asfortranarray(binary))
            records.append(record)
    evaluator = COCOeval(gt, gt.loadRes(records), iou_type)
    if eval_image_ids is not None:
        evaluator.params.imgIds = eval_image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [math.nan if v < 0 else v for v in evaluator.stats]


def test_ground_truth_as_predictions_scores_ap_one(shapes, handmade):
    for ds in (shapes["val"], shapes["train"], handmade):
        predictions, image_ids = ground_truth_as_predictions(ds)
        metrics = evaluate_coco(ds.coco, coco_results(predictions, image_ids, ds.label_to_category_id))
        for iou_type in ("bbox", "segm"):
            values = metrics[iou_type]
            assert values["AP"] == values["AP50"] == values["AP75"] == values["AR100"] == 1.0, (ds, iou_type)
            # COCOeval's mean over categories can land one ulp below 1
            defined = [values[n] for n in ("APs", "APm", "APl", "ARs", "ARm", "ARl") if not math.isnan(values[n])]
            assert defined == pytest.approx([1.0] * len(defined), abs=1e-12) and defined
    # the handmade set has small and medium objects and none large (> 96² px): NaN, not -1
    assert handmade.coco.anns[1]["area"] > 32**2 and metrics["segm"]["APm"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(metrics["segm"]["APl"])


def test_detections_on_crowd_regions_are_not_false_positives(handmade):
    predictions, image_ids = ground_truth_as_predictions(handmade)
    first = image_ids.index(2)
    crowd = torch.from_numpy(CROWD_REGION)[None, None].float()
    predictions[first] = {
        "boxes": torch.cat([predictions[first]["boxes"], torch.tensor([[0.0, 70.0, 100.0, 95.0]])]),
        "labels": torch.cat([predictions[first]["labels"], torch.tensor([1])]),
        "scores": torch.cat([predictions[first]["scores"], torch.tensor([0.9])]),
        "masks": torch.cat([predictions[first]["masks"], crowd]),
    }
    metrics = evaluate_coco(handmade.coco, coco_results(predictions, image_ids, handmade.label_to_category_id))
    assert metrics["bbox"]["AP"] == metrics["segm"]["AP"] == 1.0


def test_perturbed_predictions_match_cocoeval_run_directly(shapes):
    ds = shapes["train"]
    predictions, image_ids = perturbed_predictions(ds)
    results = coco_results(predictions, image_ids, ds.label_to_category_id)
    assert len(results) == sum(len(p["labels"]) for p in predictions)
    metrics = evaluate_coco(str(ds.ann_file), results)
    for iou_type in ("bbox", "segm"):
        expected = reference_stats(ds.ann_file, predictions, image_ids, ds.label_to_category_id, iou_type)
        np.testing.assert_allclose([metrics[iou_type][n] for n in STAT_NAMES], expected, rtol=0, atol=1e-12)
        assert 0.1 < metrics[iou_type]["AP"] < 0.95  # a real test: neither perfect nor empty
    assert metrics["bbox"]["AP"] != metrics["segm"]["AP"]
    # on a subset of the images
    subset = [2, 3, 5]
    metrics = evaluate_coco(ds.coco, results, iou_types=("segm",), image_ids=subset)
    expected = reference_stats(ds.ann_file, predictions, image_ids, ds.label_to_category_id, "segm", subset)
    np.testing.assert_allclose([metrics["segm"][n] for n in STAT_NAMES], expected, rtol=0, atol=1e-12)
    assert set(metrics) == {"segm"}


def test_non_contiguous_category_ids_match_cocoeval_run_directly(handmade):
    predictions, image_ids = perturbed_predictions(handmade, seed=3)
    metrics = evaluate_coco(handmade.coco, coco_results(predictions, image_ids, handmade.label_to_category_id))
    for iou_type in ("bbox", "segm"):
        expected = reference_stats(handmade.ann_file, predictions, image_ids, LABEL_TO_CATEGORY, iou_type)
        np.testing.assert_allclose([metrics[iou_type][n] for n in STAT_NAMES], expected, rtol=0, atol=1e-12)


def test_results_json_round_trips_through_load_res(shapes, tmp_path):
    ds = shapes["val"]
    predictions, image_ids = perturbed_predictions(ds, seed=1)
    results = coco_results(predictions, image_ids, ds.label_to_category_id)
    path = write_coco_results(results, tmp_path / "out" / "segm_results.json")
    assert path == tmp_path / "out" / "segm_results.json"
    loaded = COCO(str(ds.ann_file)).loadRes(str(path))
    assert len(loaded.anns) == len(results)
    for ann, record in zip(sorted(loaded.anns.values(), key=lambda a: a["id"]), results):
        for key in ("image_id", "category_id", "bbox", "score"):
            assert ann[key] == record[key]
        assert ann["segmentation"] == record["segmentation"]
    masks = [m for p in predictions for m in (p["masks"][:, 0] > 0.5).numpy()]
    for ann, mask in zip(sorted(loaded.anns.values(), key=lambda a: a["id"]), masks):
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]), mask)
    assert evaluate_coco(ds.ann_file, path) == evaluate_coco(ds.coco, results)
    assert results == json.loads(path.read_text())


def test_coco_results_converts_boxes_labels_and_masks():
    masks = torch.zeros(2, 1, 6, 8)
    masks[0, 0, 1:3, 2:5] = 0.9
    masks[0, 0, 4, 4] = 0.5  # not above the threshold
    masks[1, 0, 5, 7] = 0.51
    prediction = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.0, 2.0, 5.0]]),
                  "labels": torch.tensor([2, 3]), "scores": torch.tensor([0.75, 0.25]), "masks": masks}
    records = coco_results([prediction], [42], LABEL_TO_CATEGORY)
    assert [r["bbox"] for r in records] == [[10.0, 20.0, 20.0, 40.0], [0.5, 1.0, 1.5, 4.0]]
    assert [r["category_id"] for r in records] == [5, 17] and [r["image_id"] for r in records] == [42, 42]
    assert [r["score"] for r in records] == [0.75, 0.25]
    expected = np.zeros((2, 6, 8), dtype=np.uint8)
    expected[0, 1:3, 2:5] = 1
    expected[1, 5, 7] = 1
    for record, mask in zip(records, expected):
        assert isinstance(record["segmentation"]["counts"], str) and record["segmentation"]["size"] == [6, 8]
        np.testing.assert_array_equal(mask_utils.decode(record["segmentation"]), mask)
    json.dumps(records)  # plain JSON types
    # binary (N, H, W) masks, a threshold, no masks, tensor image ids
    binary = dict(prediction, masks=torch.from_numpy(expected))
    assert coco_results([binary], [torch.tensor(42)], LABEL_TO_CATEGORY) == records
    low = coco_results([prediction], [42], LABEL_TO_CATEGORY, mask_threshold=0.4)
    assert mask_utils.area(low[0]["segmentation"]) == 7
    boxes_only = coco_results([{k: v for k, v in prediction.items() if k != "masks"}], [42], LABEL_TO_CATEGORY)
    assert all("segmentation" not in r for r in boxes_only)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 6, 8)}
    assert coco_results([empty], [42], LABEL_TO_CATEGORY) == []


def test_coco_results_rejects_inconsistent_predictions():
    prediction = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([4]), "scores": torch.ones(1)}
    with pytest.raises(ValueError, match=r"labels \[4\] have no COCO category id"):
        coco_results([prediction], [1], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match="1 predictions but 2 image ids"):
        coco_results([prediction], [1, 2], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match="1 boxes, 2 labels"):
        coco_results([dict(prediction, labels=torch.tensor([1, 2]))], [1], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match="masks of shape"):
        two_masks = dict(prediction, labels=torch.tensor([1]), masks=torch.zeros(2, 1, 4, 4))
        coco_results([two_masks], [1], LABEL_TO_CATEGORY)


def test_no_detections_give_zero_ap_and_a_warning_instead_of_a_crash(handmade):
    with pytest.warns(UserWarning, match="no detections"):
        metrics = evaluate_coco(handmade.coco, [])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == metrics[iou_type]["AR100"] == metrics[iou_type]["APm"] == 0.0
        assert math.isnan(metrics[iou_type]["APl"])  # no large ground truth either
    with pytest.raises(IndexError):  # what pycocotools itself does with no detections
        COCO(str(handmade.ann_file)).loadRes([])


def test_evaluate_coco_rejects_results_that_do_not_fit_the_ground_truth(handmade, tmp_path):
    predictions, image_ids = ground_truth_as_predictions(handmade)
    results = coco_results(predictions, image_ids, handmade.label_to_category_id)
    contiguous = [dict(r, category_id=2) for r in results]  # labels passed where COCO ids belong
    with pytest.raises(ValueError, match=r"category ids \[2\].*contiguous labels"):
        evaluate_coco(handmade.coco, contiguous)
    with pytest.raises(ValueError, match=r"image ids \[77\]"):
        evaluate_coco(handmade.coco, [dict(results[0], image_id=77)])
    with pytest.raises(ValueError, match="'segmentation' in every result record; 1 of"):
        without_mask = {k: v for k, v in results[1].items() if k != "segmentation"}
        evaluate_coco(handmade.coco, [copy.deepcopy(results[0]), without_mask])
    small = coco_results([{"boxes": torch.zeros(1, 4), "labels": torch.tensor([1]), "scores": torch.ones(1),
                           "masks": torch.ones(1, 1, 20, 30)}], [9], handmade.label_to_category_id)
    with pytest.raises(ValueError, match=r"image id 9: mask of size \[20, 30\] .* is \[40, 60\]; .*original"):
        evaluate_coco(handmade.coco, small)  # e.g. masks left at the resized input's size
    with pytest.raises(ValueError, match="not supported"):
        evaluate_coco(handmade.coco, results, iou_types=("keypoints",))
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        evaluate_coco(handmade.coco, tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_coco(tmp_path / "missing.json", results)
    assert evaluate_coco(handmade.coco, results, iou_types=("bbox",))["bbox"]["AP"] == 1.0  # boxes only suffice


def test_evaluation_does_not_modify_the_results(handmade):
    predictions, image_ids = perturbed_predictions(handmade, seed=2)
    results = coco_results(predictions, image_ids, handmade.label_to_category_id)
    before = copy.deepcopy(results)
    evaluate_coco(handmade.coco, results)
    assert results == before


def test_format_coco_table(handmade):
    predictions, image_ids = ground_truth_as_predictions(handmade)
    results = coco_results(predictions, image_ids, handmade.label_to_category_id)
    table = format_coco_table(evaluate_coco(handmade.coco, results))
    lines = table.splitlines()
    assert lines[0] == "| iou type | AP | AP50 | AP75 | APs | APm | APl |"
    assert lines[1] == "|---|" + "---:|" * 6
    assert lines[2] == "| bbox | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | n/a |"
    assert lines[3].startswith("| segm | 100.0")
