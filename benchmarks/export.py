"""ONNX export on the CPU: PyTorch eager against onnxruntime running the file ``seglab export`` writes, for
FCN-8s/VGG16 and DeepLab v3/ResNet-50 at 512×512 (dynamic batch and size, the default) and Mask R-CNN R50-FPN
at 800×1088 (fixed size; score threshold 0, so that both run the mask head on 100 detections).

Random weights, seeded; zero-initialised layers (FCN's scores) drawn from N(0, 0.01²) so that the logits
are not all zero. Each model is exported once with ``seglab.export.to_onnx`` (its parity check's largest
difference is in the table) and run through ``seglab.export.OnnxModel``; median of ``--repeats`` runs,
PyTorch and onnxruntime interleaved, after a warm-up of each.

    python benchmarks/export.py [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnxruntime
import peers
import torch

import seglab
from seglab.export import OnnxModel, to_onnx

WORKLOADS = [("fcn8s_vgg16", 21, {}, (512, 512)), ("deeplabv3_resnet50", 21, {}, (512, 512)),
             ("maskrcnn_resnet50_fpn", 91, {"box_score_thresh": 0.0}, (800, 1088))]


def row(name: str, num_classes: int, options: dict, size: tuple[int, int], repeats: int, folder: Path) -> str:
    torch.manual_seed(0)
    model = seglab.models.create(name, num_classes, **options).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.01)
    start = time.perf_counter()
    report = to_onnx(model, folder / f"{name}.onnx", *size)
    export_seconds = time.perf_counter() - start
    exported = OnnxModel(report.path)
    generator, check = torch.Generator().manual_seed(1), report.checks[0]
    if report.exporter == "dynamo":
        inputs = torch.randn(1, 3, *size, generator=generator)
        parity = f"max \\|Δlogits\\| {check['max_abs_diff']:.1e}, argmax {100 * check['argmax_agreement']:.2f}%"
    else:
        inputs = [torch.rand(3, *size, generator=generator)]
        parity = (f"{check['detections']} detections, max \\|Δbox\\| {check['boxes']:.1e} px, "
                  f"\\|Δscore\\| {check['scores']:.1e}, \\|Δmask\\| {check['masks']:.1e}")
    calls = {"torch": lambda: model(inputs), "onnx": lambda: exported(inputs)}
    with torch.no_grad():
        seconds = peers.interleaved_medians(calls, repeats)
    shape = "dynamic" if report.dynamic else "fixed"
    return (f"| {name} | {size[0]}×{size[1]} | {report.exporter}, opset {report.opset}, {shape} | "
            f"{seconds['torch']:.3f} | {seconds['onnx']:.3f} | {seconds['onnx'] / seconds['torch']:.2f} | {parity} | "
            f"{export_seconds:.0f} |")


def main() -> None:
    args = peers.arguments(__doc__)
    print(f"{peers.machine(args.threads)}, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, default "
          f"threads); float32, batch 1, median of {args.repeats}\n")
    print("| model | input | exporter | PyTorch eager (s) | onnxruntime (s) | ratio (onnxruntime / PyTorch) | "
          "export check | export + check (s) |\n|---|---:|---|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for workload in WORKLOADS:
            print(row(*workload, args.repeats, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
