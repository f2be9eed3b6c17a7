"""The dense CRF in evaluation and prediction (predict_labels, evaluate(crf=...)) and DeepLab's grid search."""
import torch

import seglab
from seglab.crf import PRESETS, dense_crf
from seglab.data import Shapes
from seglab.engine.crf_tune import tune_crf
from seglab.engine.semantic import evaluate
from seglab.engine.inference import infer_logits, predict_labels

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def meta() -> dict:
    return {"num_classes": 5, "mean": MEAN, "std": STD}


def tiny_model():
    torch.manual_seed(0)
    return seglab.models.create("fcn8s_vgg16", 5, width_mult=0.0625, padding="same").eval()


def test_predict_labels_without_crf_is_the_logits_argmax_and_with_crf_follows_the_probability_path():
    model, dataset = tiny_model(), Shapes("val", 2, image_size=40)
    images = torch.stack([dataset[i][0] for i in range(2)])
    logits = infer_logits(model, images, MEAN, STD)
    assert torch.equal(predict_labels(model, images, MEAN, STD), logits.argmax(1))
    refined = predict_labels(model, images, MEAN, STD, crf=PRESETS["deeplab"])
    # Independent route: softmax probabilities through pydensecrf's unary -log(max(p, 1e-5)), one image at a time.
    for image, logit, labels in zip(images, logits, refined):
        reference = dense_crf(image.permute(1, 2, 0).numpy(), torch.softmax(logit, 0), **PRESETS["deeplab"])
        assert (reference.argmax(0) == labels).float().mean() >= 0.999


def test_tune_crf_ranks_every_setting_and_matches_evaluate_with_that_setting():
    model, dataset = tiny_model(), Shapes("val", 3, image_size=32)
    grid = {"bilateral_compat": (2.0, 8.0), "bilateral_sxy": (10.0,), "bilateral_srgb": (5.0, 20.0)}
    baseline, results = tune_crf(model, dataset, 5, MEAN, STD, grid, iterations=3, progress=False)
    assert len(results) == 4 and [m for _, m in results] == sorted((m for _, m in results), reverse=True)
    plain, _ = evaluate(model, dataset, meta(), progress=False)
    assert baseline == plain["miou"]
    for params, miou in results:
        assert params["gaussian_sxy"] == 3.0 and params["gaussian_compat"] == 3.0 and params["iterations"] == 3
        refined, _ = evaluate(model, dataset, meta(), progress=False, crf=params)
        assert abs(refined["miou"] - miou) < 1e-12
