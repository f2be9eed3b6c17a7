"""seglab.losses against segmentation-models-pytorch (Dice, Lovasz), torch's F.cross_entropy (label smoothing,
class weights), float64 re-computations (focal), hand-worked examples (OHEM, median-frequency weights) and
all-ignore batches; plus the wiring into the engine (options, a short training run)."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab import losses
from seglab.engine import semantic
from seglab.engine.config import TrainConfig
from seglab.engine.train import train
from seglab.io import safe_load

smp = pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch is the Dice/Lovasz peer")

SIZES = [(2, 3, 9, 7), (1, 5, 4, 13), (3, 2, 6, 6)]


def random_case(shape, seed, dtype=torch.float64, ignore=0.2, every_class=False):
    """Seeded logits (N,C,H,W) and labels (N,H,W) with ~``ignore`` of the pixels 255."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    logits = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[torch.rand((n, h, w), generator=g) < ignore] = 255
    if every_class:  # plant one labelled pixel of each class
        labels.view(-1)[:c] = torch.arange(c)
    return logits.requires_grad_(), labels


# (seglab's loss, smp's, labels drawn with every class present?): the same quantity in both libraries
SMP_TWINS = {
    "dice": (losses.dice_loss, lambda: smp.losses.DiceLoss("multiclass", ignore_index=255), True),
    "focal-sigmoid": (lambda logits, labels: losses.SegmentationLoss(["focal-sigmoid"])({"out": logits}, labels),
                      lambda: smp.losses.FocalLoss("multiclass", ignore_index=255), False),
}


@pytest.mark.parametrize("name", sorted(SMP_TWINS))
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_value_and_gradients_match_smp(name, shape, dtype, tol):
    ours_fn, theirs_fn, every_class = SMP_TWINS[name]
    logits, labels = random_case(shape, 1 if every_class else 13, dtype, every_class=every_class)
    ours, theirs = ours_fn(logits, labels), theirs_fn()(logits, labels)
    assert abs(ours.item() - theirs.item()) < tol
    (g1,) = torch.autograd.grad(ours, logits)
    (g2,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(g1, g2, atol=tol, rtol=0)


def test_dice_count_convention_matches_smp_with_an_absent_class():
    logits, labels = random_case((2, 4, 8, 8), 2)
    labels[labels == 3] = 255  # class 3 absent from the target
    theirs = smp.losses.DiceLoss("multiclass", ignore_index=255)(logits, labels)
    assert abs(losses.dice_loss(logits, labels, absent="count").item() - theirs.item()) < 1e-6
    # seglab's default: the mean over the 3 present classes
    assert abs(losses.dice_loss(logits, labels).item() - theirs.item() * 4 / 3) < 1e-6


@pytest.mark.parametrize("shape", SIZES)
def test_lovasz_matches_smp_in_float32(shape):
    logits, labels = random_case(shape, 3, torch.float32)
    labels[labels == shape[1] - 1] = 255  # a class absent from the target: "present" classes only
    ours = losses.lovasz_softmax(logits, labels)
    theirs = smp.losses.LovaszLoss("multiclass", ignore_index=255)(logits, labels)
    assert abs(ours.item() - theirs.item()) < 1e-5
    (g1,) = torch.autograd.grad(ours, logits)
    (g2,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(g1, g2, atol=1e-5, rtol=0)


def focal_reference(logits, labels, gamma, weight=None):
    """Softmax focal loss, weighted mean over labelled pixels, in float64 numpy, pixel by pixel."""
    x, y = logits.detach().double().numpy(), labels.numpy()
    n, c, h, w = x.shape
    total = mass = 0.0
    for i in range(n):
        for r in range(h):
            for s in range(w):
                if y[i, r, s] == 255:
                    continue
                z = x[i, :, r, s]
                log_p = z[y[i, r, s]] - (z.max() + math.log(np.exp(z - z.max()).sum()))
                a = 1.0 if weight is None else weight[y[i, r, s]]
                total += -a * (1 - math.exp(log_p)) ** gamma * log_p
                mass += a
    return total / mass


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
def test_focal_matches_a_float64_recomputation(shape, gamma):
    logits, labels = random_case(shape, 4)
    weight = [0.5 + i for i in range(shape[1])]
    unweighted = losses.SegmentationLoss(["focal"], gamma=gamma)({"out": logits}, labels)
    weighted = losses.SegmentationLoss(["focal"], class_weights=weight, gamma=gamma)({"out": logits}, labels)
    assert abs(unweighted.item() - focal_reference(logits, labels, gamma)) < 1e-6
    assert abs(weighted.item() - focal_reference(logits, labels, gamma, weight)) < 1e-6


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, labels = random_case((2, 3, 5, 5), 5)
    focal = losses.SegmentationLoss(["focal"], gamma=0.0)({"out": logits}, labels)
    assert abs(focal.item() - F.cross_entropy(logits, labels, ignore_index=255).item()) < 1e-12


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_matches_torch_with_label_smoothing_and_class_weights(smoothing, weighted):
    logits, labels = random_case((2, 4, 7, 9), 6)
    weight = torch.tensor([0.2, 1.0, 3.0, 0.7], dtype=torch.float64) if weighted else None
    ours = losses.SegmentationLoss(["ce"], class_weights=weight, label_smoothing=smoothing)({"out": logits}, labels)
    theirs = F.cross_entropy(logits, labels, weight=weight, ignore_index=255, label_smoothing=smoothing)
    assert abs(ours.item() - theirs.item()) < 1e-6


def test_plain_ce_in_the_engine_is_bit_identical_to_cross_entropy():
    logits, labels = random_case((2, 3, 8, 8), 7, torch.float32)
    outputs = {"out": logits, "aux": logits.detach() * 0.5}
    criterion = losses.SegmentationLoss(["ce"])
    assert criterion.plain_ce
    normalizer = torch.tensor(37.0)
    summed = sum(w * F.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
                 for w, logits in ((1.0, outputs["out"]), (0.4, outputs["aux"])))
    reference = summed / normalizer  # the engine's loss before seglab.losses existed
    engine = semantic.loss(lambda images: outputs, torch.zeros(2, 3, 8, 8), labels, torch.device("cpu"), normalizer,
                           criterion=criterion)  # the engine computes plain CE exactly as before
    assert torch.equal(engine, reference)
    assert torch.equal(criterion(outputs, labels, normalizer), reference)
    assert torch.equal(semantic.loss(lambda images: outputs, torch.zeros(2, 3, 8, 8), labels, torch.device("cpu"),
                                     normalizer), reference)  # no criterion: the same


def test_terms_sum_with_loss_weights_and_the_aux_head_weighs_0_4():
    logits, labels = random_case((2, 3, 6, 6), 8)
    aux = logits.detach() * -0.7
    combined = losses.SegmentationLoss(["ce", "dice"], loss_weights=[2.0, 0.5])({"out": logits, "aux": aux}, labels)

    def single(x):
        return 2.0 * F.cross_entropy(x, labels, ignore_index=255) + 0.5 * losses.dice_loss(x, labels)

    assert abs(combined.item() - (single(logits) + 0.4 * single(aux)).item()) < 1e-9


def ohem_reference(p_gt, valid, thresh, min_kept, n_images, pixel_losses=None):
    """mmsegmentation's OHEMPixelSampler.sample written out with numpy on flat arrays."""
    kept = np.zeros_like(valid)
    batch_kept = min_kept * n_images
    if thresh is not None:
        ranked = np.sort(p_gt[valid])
        min_threshold = ranked[min(batch_kept, ranked.size - 1)] if ranked.size else 0.0
        kept[valid] = p_gt[valid] < max(min_threshold, thresh)
    else:
        chosen = np.zeros(valid.sum(), dtype=bool)
        chosen[np.argsort(-pixel_losses[valid], kind="stable")[:batch_kept]] = True
        kept[valid] = chosen
    return kept


def test_ohem_hand_worked_example():
    # one image, 2 classes, 6 pixels (one ignored): p_gt from logits (0, z) -> the true class is 1 with p = sigmoid(z)
    p = torch.tensor([0.9, 0.2, 0.6, 0.8, 0.5, 0.95], dtype=torch.float64)
    labels = torch.tensor([[[1, 1, 1], [1, 255, 1]]])
    logits = torch.stack([torch.zeros(6, dtype=torch.float64), torch.log(p / (1 - p))]).reshape(1, 2, 2, 3)
    # labelled p_gt sorted: 0.2 0.6 0.8 0.9 0.95; min_kept 2 -> s[2] = 0.8; threshold max(0.8, 0.7) = 0.8
    kept = losses.ohem_kept(logits, labels, 0.7, 2)
    assert kept.flatten().tolist() == [False, True, True, False, False, False]
    loss = losses.SegmentationLoss(["ce"], ohem=(0.7, 2))({"out": logits}, labels)
    assert abs(loss.item() - (-math.log(0.2) - math.log(0.6)) / 2) < 1e-9
    # thresh above the k-th smallest: every labelled pixel under it
    assert losses.ohem_kept(logits, labels, 0.92, 1).flatten().tolist() == [True, True, True, True, False, False]
    # no thresh: the top 2 by loss (lowest p_gt)
    assert losses.SegmentationLoss(["ce"], ohem=(None, 2))({"out": logits}, labels).item() == pytest.approx(
        (-math.log(0.2) - math.log(0.6)) / 2, abs=1e-9)


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 5), (0.3, 1), (0.9, 1000), (None, 7), (None, 1000)])
def test_ohem_follows_mmsegmentation_on_random_batches(thresh, min_kept):
    logits, labels = random_case((2, 4, 9, 11), 9)
    criterion = losses.SegmentationLoss(["ce"], ohem=(thresh, min_kept))
    valid = (labels != 255).numpy().ravel()
    probs = F.softmax(logits.detach(), 1).numpy()
    y = np.where(labels.numpy() == 255, 0, labels.numpy())
    p_gt = np.take_along_axis(probs, y[:, None], 1)[:, 0].ravel()
    pixel_losses = -np.log(p_gt)
    kept = ohem_reference(p_gt, valid, thresh, min_kept, 2, pixel_losses)
    assert losses.ohem_kept(logits, labels, thresh, min_kept,
                            F.cross_entropy(logits, labels, ignore_index=255, reduction="none")).numpy().ravel(
    ).tolist() == kept.tolist()
    expected = pixel_losses[kept].mean()  # the normaliser: the kept pixels
    assert abs(criterion({"out": logits}, labels).item() - expected) < 1e-6


def test_median_frequency_weights_hand_worked_example():
    masks = [torch.tensor([[0, 0], [0, 1]]), torch.tensor([[0, 2], [2, 255]])]
    pixels, image_pixels = losses.class_pixel_counts(masks, 4)
    assert pixels.tolist() == [4, 1, 2, 0]
    assert image_pixels.tolist() == [7, 4, 3, 0]  # labelled pixels of the images that contain the class
    # freq = 4/7, 1/4, 2/3 -> median 4/7; weights 1, 16/7, 6/7; class 3 has no pixels -> 0 and a warning
    with pytest.warns(UserWarning, match="no pixels of class.*d.*weight is 0"):
        weights = losses.median_frequency_weights(pixels, image_pixels, classes=["a", "b", "c", "d"])
    assert weights == pytest.approx([1.0, 16 / 7, 6 / 7, 0.0], abs=1e-12)


def test_median_of_an_even_number_of_classes_is_the_mean_of_the_middle_two():
    weights = losses.median_frequency_weights([1, 2, 3, 4], [10, 10, 10, 10])
    assert weights == pytest.approx([2.5, 1.25, 2.5 / 3, 0.625], abs=1e-12)


SPECS = [dict(terms=["ce"]), dict(terms=["focal"]), dict(terms=["dice"]), dict(terms=["lovasz"]),
         dict(terms=["ce", "dice", "lovasz", "focal"]), dict(terms=["focal-sigmoid"], class_weights=[1.0, 2.0, 0.5]),
         dict(terms=["ce"], ohem=(0.7, 4)),
         dict(terms=["ce", "focal"], ohem=(None, 4), class_weights=[1.0, 2.0, 0.0]),
         dict(terms=["ce"], label_smoothing=0.1, class_weights=[1.0, 2.0, 0.5])]


@pytest.mark.parametrize("spec", SPECS)
def test_an_all_ignore_batch_gives_zero_and_zero_gradients(spec):
    logits, _ = random_case((2, 3, 5, 5), 10, torch.float32)
    labels = torch.full((2, 5, 5), 255)
    loss = losses.SegmentationLoss(**spec)({"out": logits, "aux": logits * 2}, labels)
    assert loss.item() == 0
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("spec", SPECS)
def test_gradients_are_finite_and_match_finite_differences(spec):
    logits, labels = random_case((1, 3, 4, 5), 11, every_class=True)
    criterion = losses.SegmentationLoss(**spec)
    loss = criterion({"out": logits}, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    if spec.get("ohem") is None:  # OHEM's selection is piecewise constant: no finite-difference check across it
        assert torch.autograd.gradcheck(lambda x: criterion({"out": x}, labels), (logits,), eps=1e-6, atol=1e-5)


def test_bad_options_are_one_line_value_errors():
    meta = {"num_classes": 3, "classes": ["a", "b", "c"]}
    cases = [(dict(loss="ce+bogus"), r"loss: unknown term 'bogus'"),
             (dict(class_weights="1,2"), r"class_weights: 2 weights in '1,2', expected one per class \(3\)"),
             (dict(class_weights="1,x,2"), r"class_weights: '1,x,2'"),
             (dict(label_smoothing=-0.1), r"label_smoothing must be a number in \[0, 1\), got -0.1"),
             (dict(loss="ce+dice", loss_weights=[1.0]), r"loss_weights: 1 weights"),
             (dict(ohem=["0.7"]), r"ohem: expected THRESH MIN_KEPT"),
             (dict(loss="dice", ohem=["0.7", "10"]), r"ohem selects pixels for the pixel-wise terms")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message) as error:  # TrainConfig itself or, with the data, criterion
            semantic.criterion(TrainConfig(**options), None, dict(meta))
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="loss: unknown term 'hinge'"):
        TrainConfig(loss="hinge")  # before any dataset is read
    assert TrainConfig(loss="ce+dice", loss_weights=["2", "0.5"]).loss_weights == [2.0, 0.5]  # flags give strings


def test_a_wrong_length_weight_list_is_refused_before_training_starts(tmp_path):
    config = TrainConfig(model="fcn8s_vgg16", width_mult=0.0625, data="shapes", image_size=32, num_train=4,
                         num_val=2, batch_size=2, iters=2, class_weights="1,2", out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="class_weights: 2 weights in '1,2', expected one per class"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_training_with_ce_dice_and_auto_class_weights(tmp_path):
    config = TrainConfig(model="fcn8s_vgg16", width_mult=0.0625, data="shapes", image_size=32, num_train=4,
                         num_val=2, batch_size=2, iters=2, log_every=1, loss="ce+dice", loss_weights=["1", "0.5"],
                         class_weights="auto", out=str(tmp_path / "run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a Shapes class may be missing from 4 images
        train(config)
    checkpoint = safe_load(tmp_path / "run" / "last.pt")
    weights = checkpoint["meta"]["class_weights"]
    assert len(weights) == checkpoint["meta"]["num_classes"] and all(w >= 0 for w in weights)
    logged = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(logged) == 2 and all("NaN" not in line for line in logged)


def _train_cli(out, batch_size, torchrun=False):
    import subprocess
    import sys
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    command = [*launcher, "-m", "seglab", "train", "--model", "fcn32s_vgg16", "--width-mult", "0.0625",
               "--no-batch-norm", "--model-option", "padding=same", "--model-option", "dropout=0", "--data", "shapes",
               "--image-size", "32", "--num-train", "8", "--val-split", "", "--iters", "3", "--lr", "0.05",
               "--log-every", "1", "--device", "cpu", "--seed", "3", "--batch-size", str(batch_size),
               "--loss", "ce+dice", "--loss-weights", "1", "0.5", "--class-weights", "auto", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_weighted_ce_plus_dice_under_torchrun_gives_the_weights_of_one_process(tmp_path):
    """CE weighted by the global weight sum and Dice with all-reduced intersections and cardinalities: two
    processes with batch 2 each end with the weights (and logged losses) of one process with batch 4."""
    _train_cli(tmp_path / "one", 4)
    _train_cli(tmp_path / "two", 2, torchrun=True)
    one, two = safe_load(tmp_path / "one" / "last.pt"), safe_load(tmp_path / "two" / "last.pt")
    assert one["meta"]["class_weights"] == two["meta"]["class_weights"]
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line] for run in ("one", "two")]
    assert logs[0] == pytest.approx(logs[1], abs=1e-4)


def _gradient_worker(rank, init_file, spec, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    logits, labels = random_case((4, 3, 5, 6), 12, every_class=True)
    criterion = losses.SegmentationLoss(**spec)
    mine = slice(2 * rank, 2 * rank + 2)
    local = logits.detach()[mine].clone().requires_grad_()
    mass = criterion.mass(labels[mine])
    torch.distributed.all_reduce(mass)
    loss = criterion({"out": local}, labels[mine], (mass / 2).float())  # engine.semantic.loss_normalizer's value
    loss.backward()
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)  # what the Trainer logs: the sum over the processes / world size
    torch.save({"grad": local.grad, "loss": total}, f"{out}{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
@pytest.mark.parametrize("spec", [dict(terms=["dice"]), dict(terms=["ce", "dice"], class_weights=[1.0, 2.0, 0.5])])
def test_two_processes_give_the_gradients_of_one_for_weighted_ce_and_dice(spec, tmp_path):
    """Each process's logits get the gradient of the global loss times the world size (DDP's mean undoes it)."""
    import torch.multiprocessing as mp
    mp.spawn(_gradient_worker, args=(str(tmp_path / "init"), spec, str(tmp_path / "rank")), nprocs=2)
    logits, labels = random_case((4, 3, 5, 6), 12, every_class=True)
    criterion = losses.SegmentationLoss(**spec)
    reference = criterion({"out": logits}, labels)
    (grad,) = torch.autograd.grad(reference, logits)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / 2, grad, rtol=0, atol=1e-12)
    assert ranks[0]["loss"].item() / 2 == pytest.approx(reference.item(), abs=1e-12)


def test_instance_models_refuse_the_semantic_loss_options():
    from seglab.engine import instance
    assert instance.criterion(TrainConfig(), None, {}) is None
    with pytest.raises(ValueError, match="loss 'ce\\+dice' applies to semantic models only"):
        instance.criterion(TrainConfig(loss="ce+dice"), None, {})


def test_the_data_checks_class_counts_equal_the_median_frequency_counts(tmp_path):
    """Training on checked data takes the counts from its data check instead of reading the masks again."""
    from seglab.data import VOCSegmentation, export_shapes, validate_dataset

    root = export_shapes(tmp_path / "voc", "voc", {"train": 6}, image_size=40, seed=3)
    dataset = VOCSegmentation(root, "train")
    summary = validate_dataset(dataset, 5, progress=False)
    pixels, image_pixels = losses.class_pixel_counts((dataset[i][1]["mask"] for i in range(len(dataset))), 5)
    assert summary["pixels_per_class"] == pixels.tolist()
    assert summary["image_pixels_per_class"] == image_pixels.tolist() and image_pixels.sum() > 0
