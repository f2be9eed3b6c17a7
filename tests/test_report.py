"""The HTML evaluation report: made by ``seglab eval`` from a tiny trained run, opened in headless Chromium
(screenshot and rendered DOM), self-contained (every picture a PNG data URI), with and without the CRF side
by side (and the boundary band's metrics); the instance report's precision-recall curves agree with COCOeval's AP."""
import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cli_run import seglab
from seglab.data import Shapes
from seglab.engine.instance import evaluate, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """The visible text, the ``src`` of every <img> and every other link-like attribute of an HTML page."""

    def __init__(self, html: str):
        super().__init__()
        self.text, self.images, self.links, self.skip = [], [], [], 0
        self.feed(html)
        self.text = " ".join(" ".join(self.text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.skip += tag in ("style", "script")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.links += [value for key, value in attrs.items() if key in ("href", "src") and tag != "img"]

    def handle_endtag(self, tag):
        self.skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self.skip:
            self.text.append(data)


def decoded_pngs(page: Page) -> list[Image.Image]:
    """Every <img> of ``page`` decoded from its data URI (fails on any other source or a broken PNG)."""
    prefix = "data:image/png;base64,"
    assert page.images and not page.links
    pictures = []
    for src in page.images:
        assert src.startswith(prefix), src[:60]
        picture = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
        assert picture.format == "PNG"
        picture.load()
        assert min(picture.size) > 0
        pictures.append(picture)
    return pictures


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run trained 2 iterations through the CLI, evaluated with and without the dense CRF."""
    root = tmp_path_factory.mktemp("report")
    seglab("train", "--model", "fcn8s_vgg16", "--width-mult", 0.0625, "--batch-norm", "--model-option",
           "padding=same", "--data", "shapes", "--image-size", 40, "--num-train", 4, "--num-val", 5, "--iters", 2,
           "--batch-size", 2, "--log-every", 1, "--out", root / "run")
    seglab("eval", "--checkpoint", root / "run", "--out", root / "eval")
    seglab("eval", "--checkpoint", root / "run", "--crf", "--crf-iterations", 2, "--boundary-band", 2,
           "--out", root / "crf")
    return root


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (scripts/install_chromium.sh installs it with "
                                              "apt-get as root; it cannot install it here)")
def test_report_renders_in_headless_chromium_with_metrics_class_names_and_every_picture(evaluated):
    report = evaluated / "eval" / "report.html"
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]
    subprocess.run([*browser, f"--screenshot={evaluated / 'shot.png'}", report.as_uri()], check=True,
                   capture_output=True, timeout=120)
    dom = subprocess.run([*browser, "--dump-dom", report.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout

    shot = np.asarray(Image.open(evaluated / "shot.png").convert("L"), dtype=np.float64)
    assert shot.shape == (1600, 1200) and shot.std() > 20  # not a blank page
    page = Page(dom)
    metrics = json.loads((evaluated / "eval" / "metrics.json").read_text())
    assert f"mIoU {100 * metrics['miou']:.2f}" in page.text
    for key, label in (("mean_dice", "mean Dice/F1"), ("mean_precision", "mean precision"),
                       ("mean_recall", "mean recall")):
        assert f"{label} {100 * metrics[key]:.2f}" in page.text, key
    assert "class IoU (%) accuracy (%) Dice/F1 (%) precision (%) recall (%)" in page.text
    for name in Shapes.classes:
        assert name in page.text, name
    assert "Training curves" in page.text and "Best and worst images by mIoU" in page.text
    pictures = decoded_pngs(page)
    # per-class IoU, confusion matrix, training curves, and 5 images × (input, ground truth, prediction)
    assert len(pictures) == 3 + 5 * 3


def test_crf_report_shows_both_settings_side_by_side(evaluated):
    page = Page((evaluated / "crf" / "report.html").read_text())
    metrics = json.loads((evaluated / "crf" / "metrics.json").read_text())
    row = f"mIoU {100 * metrics['without_crf']['miou']:.2f} {100 * metrics['miou']:.2f}"
    assert "value without CRF (%) value with CRF (%)" in page.text and row in page.text
    assert "IoU without CRF (%) IoU with CRF (%)" in page.text
    for label in ("Dice/F1", "precision", "recall"):
        assert f"{label} without CRF (%) {label} with CRF (%)" in page.text, label
    row = f"mean Dice/F1 {100 * metrics['without_crf']['mean_dice']:.2f} {100 * metrics['mean_dice']:.2f}"
    assert row in page.text
    for settings in (metrics, metrics["without_crf"]):  # per-class values by class name, n/a as NaN
        for key in ("iou", "dice", "precision", "recall"):
            assert list(settings[key]) == list(Shapes.classes), key
        for name in Shapes.classes:
            iou, dice = settings["iou"][name], settings["dice"][name]
            assert dice == pytest.approx(2 * iou / (1 + iou), nan_ok=True), name
    assert len(decoded_pngs(page)) == 2 * 2 + 1 + 5 * 3  # two IoU charts, two confusion matrices
    band = metrics["boundary_band"]
    assert band["width"] == 2 and "Boundary band (±2 px) " in page.text
    assert (f"metric value (%) pixel accuracy {100 * band['pixel_acc']:.2f} mean accuracy {100 * band['mean_acc']:.2f}"
            f" mIoU {100 * band['miou']:.2f}") in page.text


def test_eval_into_an_unwritable_directory_is_a_one_line_error(evaluated):
    (evaluated / "a_file").write_text("")
    result = seglab("eval", "--checkpoint", evaluated / "run", "--out", evaluated / "a_file" / "eval", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"seglab eval: error: cannot write to the output directory {evaluated / 'a_file' / 'eval'}: Not a directory"]


class Jittered(nn.Module):
    """Each image's ground truth (in dataset order), boxes shifted by up to 4 px, masks moved by 1 px, plus
    one false positive, with random scores: an imperfect detector for which AP is neither 0 nor 1."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.calls, self.weight = dataset, 0, nn.Parameter(torch.zeros(1))
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, images):
        _, target = self.dataset[self.calls]
        self.calls += 1
        n = len(target["labels"])
        boxes = target["boxes"].float() + torch.randint(-4, 5, (n, 4), generator=self.generator)
        masks = target["masks"].roll(1, dims=-1)
        extra = torch.zeros_like(masks[:1])
        extra[:, 2:12, 2:12] = 1
        return [{"boxes": torch.cat([boxes, torch.tensor([[2.0, 2.0, 12.0, 12.0]])]),
                 "labels": torch.cat([target["labels"], torch.tensor([1])]),
                 "scores": torch.rand(n + 1, generator=self.generator),
                 "masks": torch.cat([masks, extra])[:, None].float()}]


def test_instance_report_precision_recall_curves_average_to_cocoeval_ap(tmp_path):
    shapes = Shapes("val", 4, image_size=48)
    metrics, visuals = evaluate(Jittered(shapes), shapes, progress=False)
    curves = metrics["curves"]
    for iou_type in ("bbox", "segm"):
        stats = metrics[iou_type]  # COCO's AP is the mean of the 101-point interpolated precision
        assert 0 < stats["AP"] < 1
        for label, name in (("IoU 0.50:0.95", "AP"), ("IoU 0.50", "AP50"), ("IoU 0.75", "AP75")):
            assert len(curves[iou_type][label]) == 101
            assert np.mean(curves[iou_type][label]) == pytest.approx(stats[name], abs=1e-12), (iou_type, label)

    write_report(metrics, visuals, {"classes": shapes.classes, "palette": shapes.palette}, tmp_path,
                 config={"model": "maskrcnn_resnet18_fpn", "iters": 2})
    page = Page((tmp_path / "report.html").read_text())
    assert "Precision-recall" in page.text and f"segm {100 * metrics['segm']['AP']:.2f}" in page.text
    assert "model: maskrcnn_resnet18_fpn" in page.text
    assert len(decoded_pngs(page)) == 1 + 4 * 3  # the precision-recall panels, 4 images × 3 pictures
