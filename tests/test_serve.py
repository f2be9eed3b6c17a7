"""``seglab serve``: every endpoint and every bad request through FastAPI's TestClient, the body limit on a raw
ASGI stream, and a real server process under concurrent clients answering exactly what ``seglab predict`` writes."""
import asyncio
import base64
import contextlib
import io
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="seglab serve needs the serve extra (pip install 'seglab[serve]')")
httpx = pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
from fastapi.testclient import TestClient  # noqa: E402

from cli_run import seglab  # noqa: E402
from seglab import models  # noqa: E402
from seglab.cli import main  # noqa: E402
from seglab.data import Shapes  # noqa: E402
from seglab.data.coco_format import decode_rle  # noqa: E402
from seglab.data.images import EXIF_ORIENTATION, read_image  # noqa: E402
from seglab.engine import instance  # noqa: E402
from seglab.engine.predict import predict as predict_files  # noqa: E402
from seglab.export import to_safetensors  # noqa: E402
from seglab.serve import create_app, run  # noqa: E402
from seglab.serve.limits import BodyLimit  # noqa: E402

SMALL_MASKRCNN = {"frozen_bn": False, "fpn_channels": 32, "representation_size": 64, "mask_layers": [16],
                  "anchor_sizes": [8, 16, 32, 64, 128], "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                  "min_size": 64, "max_size": 64, "box_score_thresh": 0.0}


def semantic_model_file(folder):
    """A random FCN-ResNet50 (width 0.25: its random classifier already splits a scene into several classes) with
    the Shapes class names, written as a checkpoint file that ``--checkpoint`` reads."""
    torch.manual_seed(0)
    model = models.create("fcn_resnet50", len(Shapes.classes), width_mult=0.25)
    model.meta["classes"] = list(Shapes.classes)
    return to_safetensors(model, folder / "fcn.safetensors")


def write_scenes(folder) -> list:
    """Image files of Shapes scenes: a non-square PNG, a JPEG, and a JPEG stored sideways with EXIF orientation 6
    (rotate 90° clockwise to display) that must be answered in its displayed orientation."""
    dataset = Shapes("test", 3, image_size=64)
    pixels = [dataset[i][0].permute(1, 2, 0).numpy() for i in range(3)]
    paths = [folder / "wide.png", folder / "photo.jpg", folder / "sideways.jpg"]
    Image.fromarray(pixels[0][:48]).save(paths[0])
    Image.fromarray(pixels[1]).save(paths[1], quality=90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(pixels[2][:40]).save(paths[2], quality=90, exif=exif)
    return paths


def written(out, name: str) -> bytes:
    """The bytes of the one file ``name`` that ``seglab predict`` wrote under ``out`` (which mirrors the inputs'
    folders)."""
    [path] = out.rglob(name)
    return path.read_bytes()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """(model file, image files, {stem: bytes of the ``<stem>.png`` that ``seglab predict`` wrote})."""
    folder = tmp_path_factory.mktemp("serve")
    model_file, images = semantic_model_file(folder), write_scenes(folder)
    seglab("predict", "--checkpoint", model_file, *images, "--out", folder / "pred")
    return model_file, images, {path.stem: written(folder / "pred", f"{path.stem}.png") for path in images}


@pytest.fixture(scope="module")
def client(scenes):
    app = create_app(models.load(scenes[0]), max_upload_bytes=2**20, max_pixels=1e6, threads=2)
    with TestClient(app) as test_client:
        yield test_client


def upload(client, data: bytes, name="image.png", query=""):
    return client.post(f"/predict{query}", files={"image": (name, data, "application/octet-stream")})


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def png_of_size(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with one tiny IDAT chunk after it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


# -- answers --------------------------------------------------------------------------------------------------
def test_predict_png_is_byte_identical_to_seglab_predicts_mask_file(client, scenes):
    _, images, predicted = scenes
    for path in images:
        response = upload(client, path.read_bytes(), path.name, "?format=png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == predicted[path.stem], path.name


def test_predict_json_lists_the_classes_present_with_their_pixel_fractions(client, scenes):
    _, images, predicted = scenes
    for path in images:
        answer = upload(client, path.read_bytes(), path.name).json()
        mask_png = base64.b64decode(answer["mask_png"])
        assert mask_png == predicted[path.stem]
        labels = np.asarray(Image.open(io.BytesIO(mask_png)))
        assert (answer["task"], answer["height"], answer["width"]) == ("semantic", *labels.shape)
        counts = np.bincount(labels.ravel(), minlength=len(Shapes.classes))
        expected = {int(i): counts[i] / labels.size for i in np.flatnonzero(counts)}
        assert {c["id"]: c["fraction"] for c in answer["classes"]} == pytest.approx(expected, abs=1e-6)
        assert all(c["name"] == Shapes.classes[c["id"]] for c in answer["classes"])
        assert answer["time_ms"] > 0
        assert len(answer["classes"]) > 1  # each scene are split into several classes: a real test of the fractions


def test_sideways_photo_is_answered_in_its_exif_orientation(client, scenes):
    sideways = scenes[1][2]
    stored = Image.open(sideways).size  # (width, height) as stored
    answer = upload(client, sideways.read_bytes(), sideways.name).json()
    assert (answer["width"], answer["height"]) == (stored[1], stored[0])


def test_model_healthz_and_a_self_contained_page(client, scenes):
    meta = models.load(scenes[0]).meta
    described = client.get("/model").json()
    assert described == {"name": "fcn_resnet50", "task": "semantic", "num_classes": 5,
                         "classes": list(Shapes.classes), "palette": [list(c) for c in meta["palette"][:5]]}
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<input type="file"' in page.text and 'fetch("predict"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing fetched from elsewhere


def test_instance_model_answers_detections_with_coco_rle_masks_and_predicts_drawing(tmp_path):
    torch.manual_seed(0)
    model = models.create("maskrcnn_resnet18_fpn", len(Shapes.classes), **SMALL_MASKRCNN).eval()
    model.meta["classes"] = list(Shapes.classes)
    path = write_scenes(tmp_path)[1]
    predict_files(model, [path], tmp_path / "pred", score_threshold=0.0)
    with TestClient(create_app(model, score_threshold=0.0, threads=1)) as client:
        answer = upload(client, path.read_bytes(), path.name).json()
        drawing = upload(client, path.read_bytes(), path.name, "?format=png").content
        assert client.get("/model").json()["task"] == "instance"
    assert drawing == written(tmp_path / "pred", "photo_instances.png")
    assert base64.b64decode(answer["drawing_png"]) == drawing
    with torch.no_grad():
        shown = instance.shown_detections(instance.detect(model, read_image(path)), model.meta, 0.0)
    detections = answer["detections"]
    assert answer["task"] == "instance" and len(detections) == len(shown["scores"]) > 0
    assert [d["score"] for d in detections] == pytest.approx(shown["scores"].tolist(), abs=1e-4)
    assert [d["class"] for d in detections] == [Shapes.classes[i] for i in shown["labels"].tolist()]
    for detection, mask in zip(detections, shown["masks"]):
        np.testing.assert_array_equal(decode_rle(detection["mask"]), mask.numpy())
        assert len(detection["box"]) == 4


def test_a_score_threshold_is_refused_for_a_semantic_model():
    with pytest.raises(ValueError, match="instance models only"):
        create_app(models.create("fcn8s_vgg16", 3, width_mult=0.25), score_threshold=0.3)


# -- bad requests ---------------------------------------------------------------------------------------------
def test_wrong_method_is_405(client):
    assert client.get("/predict").status_code == 405
    assert client.put("/predict").status_code == 405
    assert client.post("/model").status_code == 405
    assert client.delete("/").status_code == 405


def test_missing_image_field_is_422(client):
    assert client.post("/predict", files={"picture": ("a.png", b"x")}).status_code == 422
    assert client.post("/predict").status_code == 422
    assert client.post("/predict?format=gif", files={"image": ("a.png", png_of_size(8, 8))}).status_code == 422


@pytest.mark.parametrize("body, status, reason", [
    (b"", 415, "not an image"),
    (b"hello, I am text", 415, "not an image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not an image"),  # Pillow opens EPS: refused
    (png_of_size(8, 8)[:40], 415, "not an image"),  # cut inside its header: Pillow cannot tell what it is
    (png_of_size(8, 8), 400, "truncated or corrupt PNG"),  # a valid header, too little pixel data
], ids=["empty", "text", "eps", "png-cut-in-header", "png-short-of-data"])
def test_not_an_image_is_415_and_a_broken_one_400(client, body, status, reason):
    response = upload(client, body)
    assert response.status_code == status and reason in response.json()["detail"]


def test_truncated_images_are_400_and_the_server_keeps_serving(client, scenes):
    for path in scenes[1]:
        data = path.read_bytes()
        response = upload(client, data[: len(data) // 2], path.name)
        assert response.status_code == 400 and "truncated or corrupt" in response.json()["detail"], path.name
    assert upload(client, scenes[1][0].read_bytes()).status_code == 200


def test_too_many_pixels_is_413_from_the_header_before_decoding(client, scenes):
    response = upload(client, png_of_size(2000, 1000))  # the header says 2e6 pixels; its data could not be decoded
    assert response.status_code == 413 and "2000×1000 = 2000000 pixels" in response.json()["detail"]
    assert upload(client, png_of_size(100_000, 100_000)).status_code == 413  # Pillow's own bomb check, also 413
    assert upload(client, png_of_size(1000, 1000)).status_code == 400  # at the limit: decoded (and found broken)


def test_body_over_the_byte_limit_is_413(client):
    big = b"\0" * (2**20 + 1)
    response = upload(client, big)  # Content-Length declared: refused before the body is read
    assert response.status_code == 413 and "over the server's limit of 1048576 bytes" in response.json()["detail"]
    chunks = (b"\0" * 65536 for _ in range(40))  # streamed, no Content-Length
    response = client.post("/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "more than 1048576 bytes" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_body_limit_stops_reading_the_stream_at_the_limit():
    """On the raw ASGI stream: a chunked body passes through to the app until the limit, the read past it fails
    (the rest is never read) and the answer is 413; a body under the limit reaches the app whole."""
    reads, sent = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"\0" * 1000, "more_body": len(reads) < 1000}

    async def send(message):
        sent.append(message)

    def reader(received):
        async def app(scope, receive, send):
            while True:
                message = await receive()
                received.append(len(message["body"]))
                if not message["more_body"]:
                    return
        return app

    received = []
    asyncio.run(BodyLimit(reader(received), max_bytes=10_500)({"type": "http", "headers": []}, receive, send))
    assert len(reads) == 11 and sum(received) == 10_000
    assert sent[0]["status"] == 413 and b"10500 bytes" in sent[1]["body"]

    reads.clear(), sent.clear(), received.clear()
    asyncio.run(BodyLimit(reader(received), max_bytes=10**7)({"type": "http", "headers": []}, receive, send))
    assert sum(received) == 10**6 and not sent


class Blocking(torch.nn.Module):
    """A semantic stand-in that waits for ``release`` in its forward pass (``entered`` says it is in there)."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.meta = models.create("fcn8s_vgg16", 3, width_mult=0.25).meta

    def forward(self, images):
        self.entered.set()
        assert self.release.wait(20)
        return {"out": torch.zeros(images.shape[0], 3, *images.shape[2:])}


def test_full_queue_answers_503_with_retry_after_and_recovers():
    model = Blocking()
    app = create_app(model, threads=1, max_queue=1)
    image = red_png()
    with TestClient(app) as client, ThreadPoolExecutor(2) as callers:
        running = callers.submit(upload, client, image)
        assert model.entered.wait(10)
        waiting = callers.submit(upload, client, image)
        deadline = time.monotonic() + 10
        while app.state.pool.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = upload(client, image)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "2 requests are running or waiting" in refused.json()["detail"]
        model.release.set()
        assert running.result(20).status_code == 200 and waiting.result(20).status_code == 200
        assert upload(client, image).status_code == 200 and app.state.pool.pending == 0


class Failing(torch.nn.Module):
    """A semantic stand-in whose forward pass raises ``error``."""

    def __init__(self, error: Exception):
        super().__init__()
        self.error, self.meta = error, models.create("fcn8s_vgg16", 3, width_mult=0.25).meta

    def forward(self, images):
        raise self.error


def test_an_unexpected_error_is_a_json_500_without_traceback_and_serving_goes_on(caplog):
    with TestClient(create_app(Failing(RuntimeError("the accelerator caught fire")))) as client, \
            caplog.at_level(logging.ERROR, logger="seglab.serve"):
        response = upload(client, red_png())
        assert response.status_code == 500 and response.json() == {
            "detail": "internal error (RuntimeError); the server log has the details"}
        assert client.get("/healthz").status_code == 200
    assert "the accelerator caught fire" in caplog.text  # the traceback is in the log, not in the answer


def test_an_image_the_model_refuses_is_400_with_the_models_reason():
    refusal = ValueError("model.onnx takes input 1×3×64×64, got 1×3×6×8")  # as export.OnnxModel says it
    with TestClient(create_app(Failing(refusal))) as client:
        response = upload(client, red_png())
    assert response.status_code == 400 and "takes input 1×3×64×64" in response.json()["detail"]


def test_binding_every_address_warns(monkeypatch, caplog):
    served = []
    monkeypatch.setattr("seglab.serve.app.uvicorn.run", lambda app, **options: served.append(options))
    app = create_app(models.create("fcn8s_vgg16", 3, width_mult=0.25))
    with caplog.at_level(logging.WARNING, logger="seglab.serve"):
        run(app)
        assert not caplog.records and served[-1]["host"] == "127.0.0.1" and served[-1]["port"] == 8000
        run(app, "0.0.0.0", 8123)
    assert "every address" in caplog.text and served[-1]["host"] == "0.0.0.0"


def test_the_request_threads_share_torchs_cpu_threads(monkeypatch):
    served = []
    monkeypatch.setattr("seglab.serve.app.uvicorn.run", lambda app, **options: served.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        for threads, share in ((2, 2), (3, 1), (8, 1)):
            torch.set_num_threads(4)
            main(["serve", "--model", "fcn8s_vgg16", "--num-classes", "3", "--model-option", "width_mult=0.125",
                  "--threads", str(threads)])
            assert served[-1] == share
    finally:
        torch.set_num_threads(before)


def test_serve_without_fastapi_says_how_to_install_it():
    code = ("import sys; sys.modules['fastapi'] = None; from seglab.cli import main; "
            "main(['serve', '--model', 'fcn8s_vgg16', '--num-classes', '3'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "seglab serve needs FastAPI: pip install 'seglab[serve]'"


# -- a real server ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(*args, timeout=60.0):
    """``seglab serve ARGS`` in a subprocess on a free loopback port: yields its base URL once /healthz answers;
    the process is terminated at the end."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "seglab", "serve", *map(str, args), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"seglab serve exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"seglab serve did not answer /healthz within {timeout} s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_served_model_answers_8_concurrent_clients_with_seglab_predicts_bytes(scenes):
    model_file, images, predicted = scenes
    uploads = [(path.name, path.read_bytes(), predicted[path.stem]) for path in images]

    def client_session(number: int) -> list[bool]:
        with httpx.Client(base_url=url, timeout=30) as http:
            same = []
            for request in range(10):
                name, data, expected = uploads[(number + request) % len(uploads)]
                response = http.post("/predict", params={"format": "png"}, files={"image": (name, data)})
                same.append(response.status_code == 200 and response.content == expected)
            return same

    with serving("--checkpoint", model_file, "--threads", 2, "--max-queue", 8) as url:
        start = time.monotonic()
        with ThreadPoolExecutor(8) as clients:
            answers = list(clients.map(client_session, range(8)))
        elapsed = time.monotonic() - start
        assert httpx.get(f"{url}/model").json()["classes"] == list(Shapes.classes)
    assert [all(same) for same in answers] == [True] * 8
    assert elapsed < 60, f"80 requests took {elapsed:.1f} s"
