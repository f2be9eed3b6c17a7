"""The upload page of ``seglab serve`` in a real browser: Debian's Chromium driven by Playwright uploads an image to
a served model, and the overlay and the legend (classes present, or detections) appear. Saves docs/serve.png."""
import contextlib
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from seglab import models
from seglab.data import Shapes
from seglab.export import to_safetensors

pytest.importorskip("fastapi", reason="seglab serve needs the serve extra (pip install 'seglab[serve]')")
playwright = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium through Playwright")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH")

from test_serve import SMALL_MASKRCNN, semantic_model_file, serving  # noqa: E402

SCREENSHOT = Path(__file__).parents[1] / "docs" / "serve.png"


def write_scene(folder, size: int) -> Path:
    image, _ = Shapes("test", 1, image_size=size, seed=3)[0]
    path = folder / "scene.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


@contextlib.contextmanager
def page_of(url: str):
    """A Chromium page on ``url`` once it has shown the model's description; ``page.requested`` lists every URL
    the page asked for."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1040, "height": 640}, device_scale_factor=1)
            page.requested = []
            page.on("request", lambda request: page.requested.append(request.url))
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            yield page
        finally:
            browser.close()


def upload(page, path: Path) -> dict:
    """Pick ``path`` in the page's file input and wait for its overlay: the canvas size, legend and timing."""
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('overlay').width > 0", timeout=15_000)
    return {"size": page.evaluate("[document.getElementById('overlay').width, "
                                  "document.getElementById('overlay').height]"),
            "title": page.inner_text("#legend-title"), "legend": page.inner_text("#legend"),
            "timing": page.inner_text("#timing")}


def test_the_page_uploads_an_image_and_shows_its_overlay_and_class_legend(tmp_path):
    model_file, scene = semantic_model_file(tmp_path), write_scene(tmp_path, 160)
    with serving("--checkpoint", model_file) as url:
        with page_of(url) as page:
            shown = upload(page, scene)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            requested = page.requested
        expected = httpx.post(f"{url}/predict", files={"image": ("scene.png", scene.read_bytes())}).json()["classes"]
    assert shown["size"] == [160, 160]
    assert expected and all(f"{c['name']}\n{100 * c['fraction']:.1f}%" in shown["legend"] for c in expected), \
        shown["legend"]
    assert "160×160 px" in shown["timing"] and "ms" in shown["timing"]
    elsewhere = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
    assert not elsewhere, f"the page fetched from another server: {elsewhere}"


def test_the_page_lists_an_instance_models_detections_with_scores(tmp_path):
    torch.manual_seed(0)
    model = models.create("maskrcnn_resnet18_fpn", len(Shapes.classes), **SMALL_MASKRCNN)
    model.meta["classes"] = list(Shapes.classes)
    model_file, scene = to_safetensors(model, tmp_path / "maskrcnn.safetensors"), write_scene(tmp_path, 64)
    with serving("--checkpoint", model_file, "--score-threshold", 0.0) as url:
        with page_of(url) as page:
            shown = upload(page, scene)
        expected = httpx.post(f"{url}/predict", files={"image": ("scene.png", scene.read_bytes())}).json()
    assert shown["size"] == [64, 64] and expected["detections"]
    assert shown["title"] == f"Detections ({len(expected['detections'])})"
    rows = [line for line in shown["legend"].splitlines() if line.strip()]
    assert rows == [x for d in expected["detections"] for x in (d["class"], f"{d['score']:.2f}")]
