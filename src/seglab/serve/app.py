"""The FastAPI app of ``seglab serve``: the upload page, ``POST /predict``, ``GET /model`` and ``GET /healthz``
around one model loaded once; ``run`` serves it with uvicorn."""
from __future__ import annotations

import contextlib
import functools
import logging
from importlib import resources
from typing import Literal

import python_multipart  # noqa: F401  (FastAPI parses uploads with it; imported here so a missing one fails early)
import uvicorn
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from torch import nn

from ..models.registry import task_of
from .answers import BadImage, answer
from .limits import BodyLimit, BoundedPool, Busy, CatchAll

logger = logging.getLogger("seglab.serve")
PAGE = "serve.html"  # in seglab/templates: the upload page, self-contained (inline CSS and JS, no network)
RETRY_AFTER_S = 1


def describe(meta: dict) -> dict:
    """What ``GET /model`` tells: the model's name, task, classes and their palette colours."""
    classes = list(meta["classes"])
    return {"name": meta.get("model"), "task": task_of(meta), "num_classes": len(classes), "classes": classes,
            "palette": [[int(c) for c in colour] for colour in meta["palette"][: len(classes)]]}


def create_app(model: nn.Module, *, max_upload_bytes: int = 20 * 2**20, max_pixels: float = 40e6, threads: int = 2,
               score_threshold: float | None = None, max_queue: int | None = None) -> FastAPI:
    """The app serving ``model`` (with its ``.meta``; a PyTorch model or ``export.OnnxModel``).

    Requests run on ``threads`` worker threads with at most ``max_queue`` (default: ``threads``) more waiting; a
    request beyond that is answered 503 with Retry-After. Bodies over ``max_upload_bytes`` get 413 while they
    stream in, images over ``max_pixels`` pixels 413 from their header, before decoding. ``score_threshold``:
    instance models' lowest score kept (default 0.5), as in ``seglab predict``."""
    if max_upload_bytes < 1 or max_pixels < 1:
        raise ValueError(f"the upload limits must be positive, got {max_upload_bytes} bytes and {max_pixels} pixels")
    meta = model.meta
    task = task_of(meta)
    if score_threshold is not None and task != "instance":
        raise ValueError("a score threshold applies to instance models only")
    model.eval()  # once, here: the workers share the model and never change its mode
    pool = BoundedPool(threads, threads if max_queue is None else max_queue)
    run_one = functools.partial(answer, model, task, max_pixels=int(max_pixels), score_threshold=score_threshold)
    page = resources.files("seglab").joinpath("templates", PAGE).read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.close()

    app = FastAPI(title="seglab serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.add_middleware(CatchAll)  # added last: the outermost, it also catches the body limit's own errors

    @app.get("/", response_class=HTMLResponse)
    def upload_page() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model_meta() -> dict:
        return describe(meta)

    @app.post("/predict")
    async def predict(image: UploadFile = File(..., description="the image file (PNG, JPEG, WebP, BMP, GIF, TIFF)"),
                      format: Literal["json", "png"] = Query("json", description="png: the mask (semantic) or the "
                                                                                 "drawing (instance) itself")):
        try:
            if pool.full:  # refused before the upload is read into memory
                raise pool.busy()
            body, png = await pool.run(run_one, await image.read())
        except Busy as busy:
            return JSONResponse({"detail": f"server busy: {busy}; retry later"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        except BadImage as bad:
            return JSONResponse({"detail": bad.reason}, status_code=bad.status)
        except ValueError as error:  # an image the model cannot take, e.g. another size than a fixed-size ONNX file's
            logger.warning("POST /predict: %s", error)
            return JSONResponse({"detail": f"the model cannot take this image: {error}"}, status_code=400)
        if format == "png":
            return Response(png, media_type="image/png")
        return body

    return app


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn until interrupted; warns when ``host`` opens it to other machines."""
    if host in ("0.0.0.0", "::", ""):
        logger.warning("seglab serve: listening on %s, every address of this machine: anyone who can reach it may "
                       "send images (there is no authentication)", host or "0.0.0.0")
    # connections beyond the pool's capacity (with room for /healthz and the page) get uvicorn's own 503
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=2 * app.state.pool.capacity + 16)
