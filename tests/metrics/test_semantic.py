import datetime
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seglab.metrics import SegmentationMetrics, format_table, image_miou

IGNORE = 255


def reference_metrics(preds, targets, num_classes, ignore_index=IGNORE):
    """FCN §5 metrics in float64 numpy, written from the paper's formulas with explicit loops."""
    n = np.zeros((num_classes, num_classes), dtype=np.float64)
    for pred, target in zip(preds, targets):
        pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
        keep = target != ignore_index
        np.add.at(n, (target[keep], pred[keep]), 1.0)
    acc, iou, dice, precision, recall = [], [], [], [], []
    for i in range(num_classes):
        t_i = n[i, :].sum()
        p_i = n[:, i].sum()
        acc.append(n[i, i] / t_i if t_i > 0 else math.nan)
        iou.append(n[i, i] / (t_i + p_i - n[i, i]) if t_i + p_i > 0 else math.nan)
        # Dice/F1 = 2TP / (2TP + FP + FN); a 0/0 precision or recall is 0 unless the class is in neither
        present = t_i + p_i > 0
        dice.append(2 * n[i, i] / (t_i + p_i) if present else math.nan)
        precision.append((n[i, i] / p_i if p_i > 0 else 0.0) if present else math.nan)
        recall.append((n[i, i] / t_i if t_i > 0 else 0.0) if present else math.nan)
    total = n.sum()
    fw = sum(n[i, :].sum() * iou[i] for i in range(num_classes) if n[i, :].sum() > 0)
    return {
        "confusion": n,
        "pixel_acc": np.trace(n) / total,
        "mean_acc": np.mean([a for a in acc if not math.isnan(a)]),
        "miou": np.mean([u for u in iou if not math.isnan(u)]),
        "fwiou": fw / total,
        "mean_dice": np.mean([d for d in dice if not math.isnan(d)]),
        "mean_precision": np.mean([v for v in precision if not math.isnan(v)]),
        "mean_recall": np.mean([v for v in recall if not math.isnan(v)]),
        "acc": acc,
        "iou": iou,
        "dice": dice,
        "precision": precision,
        "recall": recall,
    }


def assert_matches_reference(result, ref):
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou", "mean_dice", "mean_precision", "mean_recall"):
        assert isinstance(result[key], float)
        np.testing.assert_allclose(result[key], ref[key], rtol=1e-12, err_msg=key)
    for key in ("acc", "iou", "dice", "precision", "recall"):
        assert isinstance(result[key], list)
        np.testing.assert_allclose(result[key], ref[key], rtol=1e-12, equal_nan=True, err_msg=key)


def random_batch(gen, num_classes, shape, ignore_frac=0.2):
    """Correlated pred/target (pred = target 60% of the time) with ignore pixels in the target."""
    target = torch.randint(0, num_classes, shape, generator=gen)
    noise = torch.randint(0, num_classes, shape, generator=gen)
    pred = torch.where(torch.rand(shape, generator=gen) < 0.6, target, noise)
    target[torch.rand(shape, generator=gen) < ignore_frac] = IGNORE
    return pred, target


@pytest.mark.parametrize("num_classes, shapes", [
    (2, [(1, 5, 7)]),
    (5, [(2, 13, 17), (3, 8, 8), (1, 31, 9)]),
    (21, [(4, 24, 33), (2, 1, 50)]),
])
def test_accumulated_metrics_match_float64_numpy_reference_with_ignore_pixels(num_classes, shapes):
    gen = torch.Generator().manual_seed(num_classes)
    metrics = SegmentationMetrics(num_classes)
    preds, targets = [], []
    for shape in shapes:
        pred, target = random_batch(gen, num_classes, shape)
        metrics.update(pred, target)
        preds.append(pred.numpy())
        targets.append(target.numpy())
    ref = reference_metrics(preds, targets, num_classes)
    assert metrics.confusion.dtype == torch.int64
    np.testing.assert_array_equal(metrics.confusion.numpy(), ref["confusion"])
    assert_matches_reference(metrics.compute(), ref)


@pytest.mark.parametrize("num_classes, shape", [(2, (5, 7)), (5, (13, 17)), (21, (1, 50)), (21, (31, 9))])
def test_image_miou_matches_float64_numpy_reference_with_ignore_pixels(num_classes, shape):
    gen = torch.Generator().manual_seed(num_classes * 100 + shape[0])
    pred, target = random_batch(gen, num_classes, shape)
    expected = reference_metrics([pred.numpy()], [target.numpy()], num_classes)["miou"]
    # int64 hits / union divide in float32
    assert image_miou(pred, target, num_classes) == pytest.approx(expected, rel=1e-6)
    other = torch.where(target == IGNORE, torch.full_like(target, 99), target)  # another ignore value
    assert image_miou(pred, other, num_classes, ignore_index=99) == image_miou(pred, target, num_classes)


def test_image_miou_is_nan_without_labelled_pixels_and_one_when_perfect():
    target = torch.full((3, 4), IGNORE)
    assert math.isnan(image_miou(torch.zeros(3, 4, dtype=torch.int64), target, 3))
    target = torch.tensor([[0, 2, 2], [IGNORE, 2, 0]])
    pred = torch.tensor([[0, 2, 2], [1, 2, 0]])  # the wrong prediction sits on an ignored pixel
    assert image_miou(pred, target, 3) == 1.0


def test_logits_input_is_argmaxed_over_class_dim():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, 13, generator=gen)
    target = torch.randint(0, 6, (2, 11, 13), generator=gen)
    target[:, :3] = IGNORE
    from_logits = SegmentationMetrics(6)
    from_logits.update(logits, target)
    ref = reference_metrics([logits.numpy().argmax(axis=1)], [target.numpy()], 6)
    assert_matches_reference(from_logits.compute(), ref)


def test_single_image_hw_input_counts_like_a_batch_of_one():
    gen = torch.Generator().manual_seed(1)
    pred, target = random_batch(gen, 4, (9, 10))
    single, batched = SegmentationMetrics(4), SegmentationMetrics(4)
    single.update(pred, target)
    batched.update(pred[None], target[None])
    assert torch.equal(single.confusion, batched.confusion)


def test_absent_classes_are_nan_and_excluded_from_the_means():
    # class 0: 3 target px, 2 hit, 1 predicted as 2; class 1: 2 target px, both hit;
    # class 2: predicted once, never in target; class 3: in neither.
    target = torch.tensor([[0, 0, 0, 1, 1, IGNORE]])
    pred = torch.tensor([[0, 0, 2, 1, 1, 3]])
    metrics = SegmentationMetrics(4)
    metrics.update(pred, target)
    result = metrics.compute()
    assert result["acc"][:2] == [2 / 3, 1.0]
    assert math.isnan(result["acc"][2]) and math.isnan(result["acc"][3])
    assert result["iou"][:3] == [2 / 3, 1.0, 0.0]
    assert math.isnan(result["iou"][3])
    assert result["mean_acc"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert result["miou"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert result["pixel_acc"] == pytest.approx(4 / 5)
    assert result["fwiou"] == pytest.approx((3 * 2 / 3 + 2 * 1.0) / 5)
    # Dice = 2TP / (t + p); class 2 (predicted, not in the target) has precision 0/1 and recall 0/0 = 0
    assert result["dice"][:3] == [pytest.approx(4 / 5), 1.0, 0.0]
    assert result["precision"][:3] == [1.0, 1.0, 0.0]
    assert result["recall"][:3] == [pytest.approx(2 / 3), 1.0, 0.0]
    assert all(math.isnan(result[key][3]) for key in ("dice", "precision", "recall"))
    assert result["mean_dice"] == pytest.approx((4 / 5 + 1.0) / 3)
    assert result["mean_precision"] == pytest.approx(2 / 3)
    assert result["mean_recall"] == pytest.approx((2 / 3 + 1.0) / 3)  # unlike mean_acc, counts class 2


def test_perfect_prediction_gives_one_everywhere():
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (2, 8, 8), generator=gen)
    pred = target.clone()
    target[0, 0] = IGNORE
    metrics = SegmentationMetrics(3)
    metrics.update(pred, target)
    result = metrics.compute()
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou", "mean_dice", "mean_precision", "mean_recall"):
        assert result[key] == 1.0
    for key in ("iou", "acc", "dice", "precision", "recall"):
        assert result[key] == [1.0] * 3, key


def test_reset_clears_counts_and_compute_can_repeat_between_updates():
    gen = torch.Generator().manual_seed(3)
    metrics = SegmentationMetrics(3)
    metrics.update(*random_batch(gen, 3, (2, 6, 6)))
    metrics.reset()
    assert metrics.confusion.sum() == 0
    batches = [random_batch(gen, 3, (2, 6, 6)) for _ in range(2)]
    metrics.update(*batches[0])
    metrics.compute()
    metrics.update(*batches[1])
    ref = reference_metrics([p.numpy() for p, _ in batches], [t.numpy() for _, t in batches], 3)
    assert_matches_reference(metrics.compute(), ref)


def test_invalid_inputs_raise_value_error_naming_the_problem():
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="shape"):
        metrics.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        metrics.update(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target has values \[-1, 3, 7\]"):
        metrics.update(torch.zeros(5, dtype=torch.long), torch.tensor([0, 3, 7, -1, IGNORE]))
    with pytest.raises(ValueError, match=r"pred has values \[5\]"):
        metrics.update(torch.tensor([5, 5, 0]), torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="float"):
        metrics.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
    assert metrics.confusion.sum() == 0


def test_pred_at_ignored_pixels_is_not_checked_or_counted():
    metrics = SegmentationMetrics(2)
    metrics.update(torch.tensor([1, 99]), torch.tensor([1, IGNORE]))
    assert metrics.confusion.tolist() == [[0, 0], [0, 1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_follows_the_input_device_and_matches_cpu():
    gen = torch.Generator().manual_seed(4)
    pred, target = random_batch(gen, 7, (2, 20, 20))
    on_cpu, on_gpu = SegmentationMetrics(7), SegmentationMetrics(7)
    on_cpu.update(pred, target)
    on_gpu.update(pred.cuda(), target.cuda())
    assert on_gpu.confusion.device.type == "cuda"
    assert torch.equal(on_gpu.confusion.cpu(), on_cpu.confusion)
    assert on_gpu.compute() == pytest.approx(on_cpu.compute(), nan_ok=True)


@pytest.mark.parametrize("num_classes, shapes, absent", [
    (2, [(3, 9, 11)], []),
    (6, [(2, 13, 17), (3, 8, 8)], [4]),        # class 4 in neither target nor prediction
    (9, [(4, 20, 21), (1, 7, 30)], [0, 5, 8]),  # including class 0
])
def test_dice_precision_recall_match_torchmetrics_with_ignore_pixels_and_absent_classes(num_classes, shapes, absent):
    tm = pytest.importorskip("torchmetrics.classification")
    gen = torch.Generator().manual_seed(1000 + num_classes)
    metrics = SegmentationMetrics(num_classes)
    references = {
        key: {average: cls(num_classes=num_classes, ignore_index=IGNORE, average=average, multidim_average="global")
              for average in (None, "macro")}
        for key, cls in (("dice", tm.MulticlassF1Score), ("precision", tm.MulticlassPrecision),
                         ("recall", tm.MulticlassRecall))}
    kept = [c for c in range(num_classes) if c not in absent]
    for index, shape in enumerate(shapes):
        pred, target = random_batch(gen, len(kept), shape, ignore_frac=0.3)
        lookup = torch.tensor(kept + [IGNORE] * (IGNORE + 1 - len(kept)))
        pred, target = lookup[pred], lookup[target]  # class ids `absent` never occur
        if index == 0 and absent:
            # an absent class predicted on ignored pixels only: still absent from both
            pred[target == IGNORE] = absent[0]
        if num_classes > 2:
            # a class only in the target (precision 0/0) and another only in the prediction (recall 0/0)
            pred[pred == kept[1]] = kept[0]
            target[target == kept[2]] = kept[0]
        metrics.update(pred, target)
        for by_average in references.values():
            for reference in by_average.values():
                reference.update(pred, target)
    result = metrics.compute()
    confusion = metrics.confusion
    assert (confusion.sum(0) + confusion.sum(1) == 0).nonzero().flatten().tolist() == absent
    if num_classes > 2:
        assert confusion[:, kept[1]].sum() == 0 < confusion[kept[1]].sum()  # class kept[1]: precision 0/0
        assert confusion[kept[2]].sum() == 0 < confusion[:, kept[2]].sum()  # class kept[2]: recall 0/0
    for key, by_average in references.items():
        per_class = by_average[None].compute().double()
        ours = torch.tensor(result[key], dtype=torch.float64)
        # torchmetrics reports 0 for a class absent from both, seglab n/a; equal (float32) elsewhere
        assert ours.isnan().nonzero().flatten().tolist() == absent, key
        assert (per_class[absent] == 0).all(), key
        torch.testing.assert_close(ours[kept], per_class[kept], rtol=1e-6, atol=1e-7, msg=key)
        # torchmetrics' macro average drops the classes with tp + fp + fn = 0, as seglab does
        macro = by_average["macro"].compute().item()
        assert result[f"mean_{key}"] == pytest.approx(macro, rel=1e-6), key
        assert result[f"mean_{key}"] == pytest.approx(per_class[kept].mean().item(), rel=1e-6), key


def test_format_table_lists_classes_and_summary_in_percent():
    result = {"iou": [0.5, math.nan], "acc": [0.25, math.nan], "dice": [2 / 3, math.nan],
              "precision": [0.4, math.nan], "recall": [0.25, math.nan],
              "miou": 0.5, "mean_acc": 0.25, "fwiou": 0.125, "pixel_acc": 0.75,
              "mean_dice": 2 / 3, "mean_precision": 0.4, "mean_recall": 0.25}
    lines = format_table(result, ["road", "sky"]).splitlines()
    assert lines[0] == "| class | IoU (%) | accuracy (%) | Dice/F1 (%) | precision (%) | recall (%) |"
    assert lines[2] == "| road | 50.00 | 25.00 | 66.67 | 40.00 | 25.00 |"
    assert lines[3] == "| sky | n/a | n/a | n/a | n/a | n/a |"
    assert "50.00 | 25.00 | 66.67 | 40.00 | 25.00 |" in lines[4] and "miou" in lines[4] and "mean_dice" in lines[4]
    assert "12.50 | 75.00" in lines[5] and "pixel_acc" in lines[5]
    assert all(line.count("|") == 7 for line in lines)  # every row has the six columns
    with pytest.raises(ValueError, match="class names"):
        format_table(result, ["road"])


def _rank_data(rank):
    gen = torch.Generator().manual_seed(100 + rank)
    return [random_batch(gen, 5, (2, 9 + rank, 7)) for _ in range(2)]


def _distributed_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        metrics = SegmentationMetrics(5)
        first, second = _rank_data(rank)
        metrics.update(*first)
        metrics.compute()  # a reduction between updates must not count anything twice
        metrics.update(*second)
        result = metrics.compute()
        torch.save({"confusion": metrics.confusion, "result": result}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_all_reduce_over_two_gloo_ranks_equals_metrics_over_union_of_their_data(tmp_path):
    world_size = 2
    mp.spawn(_distributed_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)),
             nprocs=world_size, join=True)
    union = [batch for rank in range(world_size) for batch in _rank_data(rank)]
    ref = reference_metrics([p.numpy() for p, _ in union], [t.numpy() for _, t in union], 5)
    for rank in range(world_size):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        np.testing.assert_array_equal(saved["confusion"].numpy(), ref["confusion"])
        assert_matches_reference(saved["result"], ref)
