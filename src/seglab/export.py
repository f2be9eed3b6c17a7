"""ONNX export of seglab models, each file checked against PyTorch in onnxruntime right after it is written,
and ``OnnxModel``, the exported file run by onnxruntime wherever seglab's inference code takes a model.

What is exported, and by which of PyTorch's two exporters:

- **Semantic models** (every registered one): ``images (N,3,H,W) float32, normalised → logits (N,C,H,W)``,
  by the torch.export-based ("dynamo") exporter, with dynamic batch, height and width: torch.export keeps the
  shape arithmetic symbolic (FCN's crop offsets and padding to a multiple of 32, ceil-mode pooling, ResNet's
  ⌈H/s⌉ maps, GCN's crops, the final resize to the input size, DeepLab v3's image pooling broadcast back to
  the map). ``dynamic=False`` fixes the size instead.
- **Mask R-CNN** (``maskrcnn_*``, ``maskxrcnn_*``): ``image (3,H,W) float32 RGB in [0, 1] → boxes (D,4) xyxy
  in input pixels, labels (D,) int64, scores (D,), masks (D,1,H,W) probabilities`` for one image, by the
  TorchScript exporter (opset 17), with seglab's RoIAlign emitted as ONNX ``RoiAlign`` and its NMS per class
  or FPN level as one ``NonMaxSuppression`` with a batch entry per group (``seglab.ops``). The input size is
  fixed: the trace freezes what Python computes from the image size (the resize scale, the padded batch
  size, the anchor grid and FPN level scales); the number of detections D stays dynamic (ONNX
  ``NonMaxSuppression``, ``NonZero``).

The file's ``metadata_props`` carry the checkpoint's metadata (model name and options, task, class names,
palette, mean/std, the input's layout), each value a JSON string, so that ``OnnxModel`` needs nothing else.

``to_safetensors`` writes the PyTorch weights instead (every model, any input size), with the same metadata as
JSON in the file's string metadata: ``seglab.models.load`` and ``--checkpoint`` read it back, no pickle involved.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from . import __version__
from .io import save_safetensors
from .models import task_of
from .models.base import model_device

INSTANCE_OUTPUTS = ("boxes", "labels", "scores", "masks")
INPUTS = {"semantic": {"name": "images", "layout": "NCHW", "dtype": "float32", "values": "RGB, (x / 255 - mean) / std"},
          "instance": {"name": "image", "layout": "CHW", "dtype": "float32", "values": "RGB, x / 255"}}
MIN_SIZE = 32  # smallest height and width of a dynamic semantic export (one cell at output stride 32)
# Largest differences onnxruntime may show against PyTorch: logits relative to max(1, max |logit|);
# boxes in input pixels; scores and mask probabilities absolute.
TOLERANCE = {"logits": 1e-4, "boxes": 1e-2, "scores": 1e-4, "masks": 1e-3}
INSTANCE_OPSET = 17


@dataclass
class ExportReport:
    """What ``to_onnx`` wrote and measured: one entry of ``checks`` per input it compared, with the input's
    ``shape`` and the largest differences (semantic: ``max_abs_diff``, ``argmax_agreement`` in [0, 1];
    instance: ``detections``, ``boxes``, ``scores``, ``masks``)."""

    path: Path
    exporter: str
    opset: int
    dynamic: bool
    checks: list[dict]

    def __str__(self) -> str:
        size = "dynamic batch, height and width" if self.dynamic else "fixed input size"
        lines = [f"wrote {self.path} ({self.exporter} exporter, opset {self.opset}, {size})"]
        for check in self.checks:
            shape = "×".join(map(str, check["shape"]))
            if "argmax_agreement" in check:
                lines.append(f"onnxruntime vs PyTorch, input {shape}: max |Δlogits| {check['max_abs_diff']:.2e}, "
                             f"argmax agreement {100 * check['argmax_agreement']:.4f}%")
            else:
                lines.append(f"onnxruntime vs PyTorch, input {shape}: {check['detections']} detections, max |Δbox| "
                             f"{check['boxes']:.2e} px, max |Δscore| {check['scores']:.2e}, "
                             f"max |Δmask| {check['masks']:.2e}")
        return "\n".join(lines)


def to_onnx(model: nn.Module, path: str | Path, height: int = 512, width: int = 512, dynamic: bool = True,
            opset: int | None = None, meta: dict | None = None) -> ExportReport:
    """Export ``model`` to the ONNX file ``path`` (see the module docstring), check it in onnxruntime and
    return what was measured.

    ``height`` × ``width``: the example input (the fixed size where the model or ``dynamic=False`` fixes it).
    ``opset``: the exporter's default when None (17 for Mask R-CNN). ``meta``: the metadata to store,
    by default ``model.meta`` (``seglab.models.create`` / ``load``; ``seglab.models.model_meta``). The check runs random inputs
    (a second, odd size and batch 2 when dynamic) through both and raises ValueError when onnxruntime's
    outputs differ by more than ``TOLERANCE``; the file is written only once it passes. The model is left
    in eval mode.
    """
    onnx = _require("onnx")
    meta = dict(meta or getattr(model, "meta", None) or {})
    if "task" not in meta and "model" not in meta:
        raise ValueError("to_onnx needs the model's meta (model name or task, classes, mean/std): build the model "
                         "with seglab.models.create or load, or pass meta=seglab.models.model_meta(...)")
    reason = getattr(model, "onnx_unsupported", None)
    if reason:
        raise ValueError(f"{type(model).__name__} does not export to ONNX: {reason}")
    task = task_of(meta)
    exporter, export, compare = EXPORTERS[task]
    model.eval()
    generator = torch.Generator().manual_seed(0)
    wrapper, proto, inputs, dynamic = export(model, height, width, dynamic, opset, model_device(model), generator)
    stored = {**meta, "task": task, "input": INPUTS[task], "exporter": exporter, "seglab_version": __version__}
    for key, value in stored.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # renamed once onnxruntime agrees with PyTorch
    onnx.save(proto, partial)
    try:
        session = _session(partial)
        checks = [compare(wrapper, session, example) for example in inputs]
    except BaseException:
        partial.unlink()
        raise
    os.replace(partial, path)
    return ExportReport(path, exporter, _opset(proto), dynamic, checks)


def to_safetensors(model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``model``'s state dict to the safetensors file ``path`` (atomically) with ``meta`` (default
    ``model.meta``: model name and options, task, classes, palette, mean/std) JSON-encoded in its metadata, so
    that ``seglab.models.load(path)`` rebuilds the model; returns ``path``."""
    meta = dict(meta or getattr(model, "meta", None) or {})
    if "model" not in meta:
        raise ValueError("to_safetensors needs the model's meta (model name and options, classes, mean/std): build "
                         "the model with seglab.models.create or load, or pass meta=seglab.models.model_meta(...)")
    return save_safetensors(model.state_dict(), path, meta={**meta, "task": task_of(meta)})


def _require(name: str):
    """The module ``name`` (onnx, onnxruntime); ValueError naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ValueError(f"{name} is not installed: pip install 'seglab[export]'") from error


class _Logits(nn.Module):
    """The exported semantic graph: images (N,3,H,W) → logits (N,C,H,W), without the auxiliary head's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)["out"]


class _Detections(nn.Module):
    """The exported instance graph: one image (3,H,W) in [0, 1] → boxes, labels, scores, masks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        detections = self.model([image])[0]
        return tuple(detections[key] for key in INSTANCE_OUTPUTS)


def _export_semantic(model, height, width, dynamic, opset, device, generator):
    """(graph module, ModelProto, inputs to check, dynamic) of a semantic model."""
    wrapper = _Logits(model).eval()
    images = torch.randn(1, 3, height, width, generator=generator).to(device)
    inputs, shapes = [images], None
    if dynamic:  # a batch of two (one would be specialised) and a second, odd size to check the graph on
        dim = torch.export.Dim
        shapes = {"images": {0: dim("batch", min=1), 2: dim("height", min=MIN_SIZE), 3: dim("width", min=MIN_SIZE)}}
        inputs.append(torch.randn(2, 3, max(MIN_SIZE, height * 3 // 4 + 1), max(MIN_SIZE, width * 3 // 4 + 3),
                                  generator=generator).to(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # guards on sizes (ceil-mode pooling, crops) become run-time asserts rather than fixed sizes
            program = torch.export.export(wrapper, (images.expand(2 if dynamic else 1, -1, -1, -1),),
                                          dynamic_shapes=shapes, strict=False,
                                          prefer_deferred_runtime_asserts_over_guards=True)
        except torch._dynamo.exc.UserError as error:
            raise ValueError(f"this model does not export with a dynamic input size ({str(error).splitlines()[0]}); "
                             f"export it for a fixed size (dynamic=False, CLI: --static)") from error
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["images"], output_names=["logits"],
                                         opset_version=opset, external_data=False, verbose=False)
    return wrapper, onnx_program.model_proto, inputs, dynamic


def _export_instance(model, height, width, dynamic, opset, device, generator):
    """(graph module, ModelProto, inputs to check, dynamic = False) of a Mask R-CNN: its input size is fixed."""
    wrapper = _Detections(model).eval()
    example = torch.rand(3, height, width, generator=generator).to(device)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's warnings name the sizes it freezes: the documented fixed size
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset or INSTANCE_OPSET,
                          input_names=["image"], output_names=list(INSTANCE_OUTPUTS),
                          dynamic_axes={name: {0: "detections"} for name in INSTANCE_OUTPUTS},
                          autograd_inlining=False)  # seglab's ops stay single nodes (their symbolic)
    proto = _require("onnx").load_from_string(buffer.getvalue())
    return wrapper, proto, [torch.rand(3, height, width, generator=generator).to(device)], False


def _opset(proto) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


@torch.no_grad()
def _compare_logits(wrapper: nn.Module, session, images: Tensor) -> dict:
    """Max |Δlogits| and argmax agreement of onnxruntime against PyTorch on ``images``; ValueError past
    ``TOLERANCE``."""
    expected = wrapper(images).float().cpu()
    got = torch.from_numpy(session.run(None, {"images": images.cpu().numpy()})[0])
    if got.shape != expected.shape:
        raise ValueError(f"ONNX export check: onnxruntime's logits have shape {tuple(got.shape)} for input "
                         f"{tuple(images.shape)}, PyTorch's {tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    agreement = float((got.argmax(1) == expected.argmax(1)).float().mean())
    if not diff <= TOLERANCE["logits"] * scale:
        raise ValueError(f"ONNX export check: onnxruntime's logits differ from PyTorch's by {diff:.3g} "
                         f"(tolerance {TOLERANCE['logits'] * scale:.3g}) on input {tuple(images.shape)}")
    return {"shape": tuple(images.shape), "max_abs_diff": diff, "argmax_agreement": agreement}


@torch.no_grad()
def _compare_detections(wrapper: nn.Module, session, image: Tensor) -> dict:
    """Detections, labels, and max |Δ| of boxes, scores and masks of onnxruntime against PyTorch on one
    image, detection by detection; ValueError past ``TOLERANCE``."""
    expected = [value.cpu() for value in wrapper(image)]
    got = [torch.from_numpy(value) for value in session.run(None, {"image": image.cpu().numpy()})]
    shape = tuple(image.shape)
    if got[0].shape != expected[0].shape or not torch.equal(got[1], expected[1]):
        raise ValueError(f"ONNX export check: onnxruntime found {len(got[1])} detections with labels "
                         f"{got[1].tolist()[:10]}…, PyTorch {len(expected[1])} with {expected[1].tolist()[:10]}… "
                         f"on an image of {shape}")
    check = {"shape": shape, "detections": len(got[1])}
    for name in ("boxes", "scores", "masks"):
        index = INSTANCE_OUTPUTS.index(name)
        check[name] = float((got[index] - expected[index]).abs().max()) if got[index].numel() else 0.0
        if not check[name] <= TOLERANCE[name]:
            raise ValueError(f"ONNX export check: onnxruntime's {name} differ from PyTorch's by {check[name]:.3g} "
                             f"(tolerance {TOLERANCE[name]:g}) on an image of {shape}")
    return check


def _session(path: Path):
    """An onnxruntime CPU session of ``path``; ValueError naming it when onnxruntime cannot load it."""
    onnxruntime = _require("onnxruntime")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, InvalidGraph, …)
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"onnxruntime cannot load {path}: {reason}") from error


def read_metadata(session, path: str | Path) -> dict:
    """The seglab metadata of an onnxruntime session of ``path`` (values decoded from JSON); ValueError when
    the file has none (it was not written by ``to_onnx``)."""
    props = session.get_modelmeta().custom_metadata_map
    missing = [key for key in ("task", "input", "classes", "palette", "mean", "std") if key not in props]
    if missing:
        raise ValueError(f"{path} lacks seglab's metadata ({', '.join(missing)}): export it with `seglab export`")
    try:
        return {key: json.loads(value) for key, value in props.items()}
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its metadata is not seglab's (JSON values expected: {error})") from error


class OnnxModel(nn.Module):
    """An exported seglab model run by onnxruntime (CPU), with its ``meta`` read from the file: a drop-in for
    the PyTorch model in ``seglab.engine`` inference (no parameters: it runs on the CPU).

    Semantic: ``forward(images (N,3,H,W) float, normalised) → {"out": logits (N,C,H,W)}`` (so sliding
    windows, scales, flips and the CRF work as with the PyTorch model; a file exported for a fixed batch size runs a
    larger batch in chunks of it). Instance: ``forward(list[(3,H,W)
    float in 0..1]) → list[{"boxes", "labels", "scores", "masks"}]``, one run per image. An input whose
    rank, channels or (fixed) size the file does not take raises ValueError.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.session = _session(self.path)
        self.meta = read_metadata(self.session, self.path)
        self.input = self.session.get_inputs()[0]

    def _check(self, shape: Sequence[int]) -> None:
        expected = self.input.shape
        if len(shape) == len(expected) and all(not isinstance(e, int) or e == s for e, s in zip(expected, shape)):
            return
        layout = "×".join(str(e) if isinstance(e, int) else "any" for e in expected)
        hint = ""
        if len(expected) == len(shape) and all(isinstance(e, int) for e in expected[-2:]) \
                and tuple(expected[-2:]) != tuple(shape[-2:]):
            size = f"{expected[-2]}×{expected[-1]}"
            hint = (f": it was exported for {size} images only; export it with these images' --height and --width"
                    if self.meta["task"] == "instance" else
                    f": it was exported for {size} images only (--static); export it without --static, or "
                    f"predict with --crop {expected[-2]} {expected[-1]}")
        raise ValueError(f"{self.path} takes input {layout} ({self.meta['input']['layout']}), got "
                         f"{'×'.join(map(str, shape))}{hint}")

    def _run(self, array: Tensor) -> list:
        self._check(tuple(array.shape))
        return self.session.run(None, {self.input.name: array.detach().cpu().float().numpy()})

    def forward(self, images):
        if self.meta["task"] == "semantic":  # a file of a fixed batch size (--static: 1) runs the batch in chunks
            chunk = self.input.shape[0] if isinstance(self.input.shape[0], int) else len(images)
            return {"out": torch.cat([torch.from_numpy(self._run(part)[0]) for part in images.split(chunk)])}
        return [dict(zip(INSTANCE_OUTPUTS, map(torch.from_numpy, self._run(image)))) for image in images]


# task -> (exporter name, export function, onnxruntime-vs-PyTorch check)
EXPORTERS = {"semantic": ("dynamo", _export_semantic, _compare_logits),
             "instance": ("torchscript", _export_instance, _compare_detections)}
