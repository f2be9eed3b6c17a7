"""The ``seglab`` command line: argument parsing only; the work is done in ``engine`` and ``data``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import types
import typing
from pathlib import Path

import torch
import yaml

from .crf import PRESETS
from .engine.config import TrainConfig


def _field_type(hint):
    """The argparse type of a config field (``int | None`` → int)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (``batch_size`` → ``--batch-size``), default None = not given."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag, kind = "--" + field.name.replace("_", "-"), _field_type(hints[field.name])
        if field.name in ("model_options", "data_options"):
            what = field.name.split("_")[0]
            parser.add_argument(f"--{what}-option", dest=field.name, action="append", metavar="KEY=VALUE",
                                help=f"a {what} option (value parsed as YAML), repeatable")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=2, default=None)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, nargs="+", default=None, metavar="NAME")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"default: {field.default}")


def _config_from_args(args: argparse.Namespace):
    from .engine.config import load_config

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    for key in ("model_options", "data_options"):
        if overrides[key]:
            overrides[key] = _key_values(overrides[key])
    return load_config(args.config, overrides)


def _model_options(args) -> dict:
    """``--model-option KEY=VALUE`` flags as a dict."""
    return _key_values(args.model_options or [])


def _key_values(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict, values parsed as YAML (``8``, ``[1, 2, 4]``, ``true``)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-option / --data-option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options


def cmd_train(args) -> None:
    from .engine.train import train

    train(_config_from_args(args))


def cmd_demo(args) -> None:
    from .engine.demo import run_demo

    run_demo(out=args.out)


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """Model-option overrides and sliding-window / multi-scale / flip flags of ``eval`` and ``predict``."""
    parser.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                        help="override a saved model option where the weights allow, e.g. output_stride=8")
    parser.add_argument("--crop", type=int, nargs="+", metavar=("H", "W"),
                        help="sliding-window inference with H×W windows (W defaults to H); default: whole image")
    parser.add_argument("--stride", type=int, nargs="+", metavar=("H", "W"),
                        help="sliding-window step in pixels (default: 2/3 of the crop)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                        help="average the logits over these image scales, e.g. 0.75 1.0 1.25")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped image's logits")
    parser.add_argument("--crf", action="store_true", help="refine predictions with the dense CRF (seglab.crf)")
    parser.add_argument("--crf-preset", default="default", choices=sorted(PRESETS),
                        help="kernel settings: default (pydensecrf's example), deeplab (DeepLab-LargeFOV), deeplab-v2")
    parser.add_argument("--crf-iterations", type=int, default=10, help="mean-field iterations")
    parser.add_argument("--crf-param", action="append", metavar="KEY=VALUE",
                        help="override one dense_crf keyword, e.g. bilateral_sxy=50 (as printed by crf-tune)")


def _crf_options(args) -> dict | None:
    """``seglab.crf.dense_crf`` keywords from ``--crf*`` flags, or None without ``--crf``."""
    if not args.crf:
        if args.crf_param:
            raise ValueError("--crf-param needs --crf")
        return None
    options = {**PRESETS[args.crf_preset], "iterations": args.crf_iterations}
    for item in args.crf_param or []:
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            raise ValueError(f"--crf-param expects KEY=VALUE with KEY one of {sorted(options)}, got {item!r}")
        options[key] = float(value)
    return options


def _inference_options(args) -> dict:
    """Keyword options of ``predict_labels`` from the flags of ``_add_inference_flags``."""
    return {"crop": args.crop, "stride": args.stride, "scales": tuple(args.scales), "flip": args.flip,
            "crf": _crf_options(args)}


def _eval_setup(args):
    """(checkpoint path, model with .meta, dataset, the training config saved in the checkpoint) for ``eval``
    and ``crf-tune``."""
    from . import data, models
    from .engine.checkpoint import load_checkpoint, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    saved = load_checkpoint(checkpoint)
    model = models.from_checkpoint(saved, checkpoint, device=args.device, **_model_options(args))
    trained = saved.get("config") or {}
    name = args.data or trained.get("data", "shapes")
    dataset = data.build_dataset(name, args.split, root=args.data_root or trained.get("data_root"),
                                 num_images=args.num_images or trained.get("num_val"),
                                 image_size=args.image_size or trained.get("image_size", 128),
                                 seed=trained.get("seed", 0))
    if name != "shapes":
        data.validate_dataset(dataset, model.meta["num_classes"])
    return checkpoint, model, dataset, trained


def _is_instance(args, meta) -> bool:
    """True for instance models, after checking that no semantic-only inference flag was given."""
    if meta.get("task", "semantic") != "instance":
        return False
    if args.crf or args.crop or args.stride or args.flip or tuple(args.scales) != (1.0,):
        raise ValueError("--crf, --crop, --stride, --scales and --flip apply to semantic models only")
    return True


def _output_dir(path: Path) -> Path:
    """``path``, created if missing; a ValueError naming it when it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ValueError(f"cannot write to the output directory {path}: {error.strerror or error}") from error
    return path


def cmd_eval(args) -> None:
    from .engine.evaluate import evaluate, write_report
    from .engine.instance import evaluate_instances, write_instance_report

    checkpoint, model, dataset, trained = _eval_setup(args)
    meta = model.meta
    out = _output_dir(Path(args.out or checkpoint.parent / "eval"))
    run = {"config": trained, "run_dir": checkpoint.parent}  # for report.html
    if _is_instance(args, meta):
        curves = {}
        result, visuals = evaluate_instances(model, dataset, curves=curves)
        print(write_instance_report(result, meta["classes"], meta["palette"], visuals, out, curves=curves, **run))
        print(f"wrote {out}/metrics.json (COCO box and mask AP), overlays.png, report.html")
        return
    result, visuals = evaluate(model, dataset, meta["num_classes"], meta["mean"], meta["std"],
                               batch_size=args.batch_size, **_inference_options(args))
    print(write_report(result, meta["classes"], meta["palette"], visuals, out, **run))
    if "without_crf" in result:
        print(f"without the CRF: mIoU {100 * result['without_crf']['miou']:.2f}")
    print(f"wrote {out}/metrics.json, per_class_iou.png, overlays.png, report.html")


def cmd_crf_tune(args) -> None:
    from .engine.crf_tune import DEFAULT_GRID, tune_crf

    checkpoint, model, dataset, _ = _eval_setup(args)
    meta = model.meta
    if args.num_images and args.num_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(args.num_images))
    grid = {"bilateral_compat": args.w1 or DEFAULT_GRID["bilateral_compat"],
            "bilateral_sxy": args.theta_alpha or DEFAULT_GRID["bilateral_sxy"],
            "bilateral_srgb": args.theta_beta or DEFAULT_GRID["bilateral_srgb"]}
    baseline, results = tune_crf(model, dataset, meta["num_classes"], meta["mean"], meta["std"], grid,
                                 {"gaussian_compat": args.w2, "gaussian_sxy": args.theta_gamma}, args.iterations)
    print(f"{len(dataset)} images, w2 = {args.w2}, θγ = {args.theta_gamma}, {args.iterations} iterations; "
          f"mIoU without the CRF: {baseline:.4f}\n")
    print("| w1 | θα | θβ | mIoU |\n|---:|---:|---:|---:|")
    for params, miou in results[: args.top]:
        print(f"| {params['bilateral_compat']:g} | {params['bilateral_sxy']:g} | {params['bilateral_srgb']:g} | {miou:.4f} |")
    best, miou = results[0]
    flags = " ".join(f"--crf-param {key}={best[key]:g}" for key in ("bilateral_compat", "bilateral_sxy",
                                                                   "bilateral_srgb", "gaussian_compat", "gaussian_sxy"))
    print(f"\nbest: w1 = {best['bilateral_compat']:g}, θα = {best['bilateral_sxy']:g}, θβ = {best['bilateral_srgb']:g}: "
          f"mIoU {miou:.4f} ({miou - baseline:+.4f} over no CRF)\nuse: seglab eval --checkpoint {args.checkpoint} --crf {flags}")
    out = Path(args.out or checkpoint.parent / "crf_tune")
    out.mkdir(parents=True, exist_ok=True)
    (out / "crf_tune.json").write_text(json.dumps({"images": len(dataset), "baseline_miou": baseline,
                                                   "results": [{**p, "miou": m} for p, m in results]}, indent=2))
    print(f"wrote {out}/crf_tune.json")


def cmd_predict(args) -> None:
    from . import models
    from .engine.predict import predict_files

    if args.onnx:
        from .export import OnnxModel

        if args.model_options:
            raise ValueError("--model-option applies to --checkpoint: an ONNX file's options were fixed at export")
        model = OnnxModel(args.onnx)
    else:
        model = models.load(args.checkpoint, device=args.device, **_model_options(args))
    _output_dir(Path(args.out))
    if _is_instance(args, model.meta):
        from .engine.instance import predict_instance_files

        if args.format != "palette":
            raise ValueError(f"--format {args.format} applies to semantic models only")
        written = predict_instance_files(model, args.images, args.out, args.score_threshold)
        print(f"wrote {len(written)} drawings (<stem>_instances.png) and detections (<stem>.json) to {args.out}")
        return
    written = predict_files(model, args.images, args.out, fmt=args.format, **_inference_options(args))
    labels = f" and Cityscapes label ids to {Path(args.out) / 'labelIds'}" if args.format == "cityscapes" else ""
    print(f"wrote {len(written)} masks and overlays to {args.out}{labels}")


def cmd_export(args) -> None:
    from . import models
    from .export import default_meta, to_onnx

    if args.checkpoint:
        if args.model or args.weights or args.num_classes:
            raise ValueError("--checkpoint brings the model, its weights and classes: drop --model, --weights and "
                             "--num-classes")
        model = models.load(args.checkpoint, **_model_options(args))
        meta = model.meta
    elif args.model:
        task, options = models.entry(args.model).task, _model_options(args)
        num_classes = args.num_classes or (91 if task == "instance" else 21)
        model = models.create(args.model, num_classes, weights=args.weights, **options)
        meta = default_meta(args.model, task, num_classes, options)
    else:
        raise ValueError("export needs --model NAME or --checkpoint RUN_DIR|FILE.pt")
    _output_dir(Path(args.out).parent)
    print(to_onnx(model, args.out, args.height, args.width, dynamic=not args.static, opset=args.opset, meta=meta))


def cmd_models(args) -> None:
    from . import models

    print("| model | task | parameters (21 classes) | paper |")
    print("|---|---|---:|---|")
    for name in models.names():
        entry = models.entry(name)
        print(f"| {name} | {entry.task} | {models.count_parameters(name, 21):,} | {entry.paper} |")


def cmd_data_check(args) -> None:
    from . import data

    split = args.split if args.split or args.format == "folder" else "train"
    options = {"voc_root": args.voc_root} if args.voc_root else {}
    dataset = data.build_dataset(args.format, split, root=args.root, **options)
    num_classes = args.num_classes or len(dataset.classes)
    summary = data.validate_dataset(dataset, num_classes, keep_going=True)
    print(data.format_summary(summary, list(dataset.classes)[:num_classes]))
    where = f"{args.root} ({args.format}, {split or 'every image'})"
    if summary["problems"]:
        raise ValueError(f"{where}: {len(summary['problems'])} of {summary['images']} images have problems:\n"
                         + "\n".join(summary["problems"]))
    print(f"{where}: {summary['images']} images, no problems found")


def cmd_export_shapes(args) -> None:
    from .data import export_shapes

    root = export_shapes(args.root, args.format, {"train": args.num_train, "val": args.num_val},
                         image_size=args.image_size, seed=args.seed)
    print(f"wrote Shapes ({args.num_train} train, {args.num_val} val) in {args.format} layout to {root}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description="Image segmentation: train, evaluate, predict.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train and evaluate a small FCN-8s on generated Shapes (CPU)")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=cmd_demo)

    train = commands.add_parser("train", help="train a model (flags override --config YAML)")
    train.add_argument("--config", help="YAML file holding any of the options below")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    evaluate.add_argument("--checkpoint", required=True, help="run directory or .pt file")
    evaluate.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--data-root")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--num-images", type=int, help="Shapes images in the split")
    evaluate.add_argument("--image-size", type=int)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--out", help="output directory (default: RUN_DIR/eval)")
    _add_inference_flags(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    predict = commands.add_parser("predict", help="predict masks and overlays for image files")
    predict.add_argument("images", nargs="+")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory or .pt file")
    source.add_argument("--onnx", help="a file written by `seglab export`, run by onnxruntime (no checkpoint needed)")
    predict.add_argument("--out", required=True)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--score-threshold", type=float, default=0.5, help="instance models: detections drawn")
    predict.add_argument("--format", default="palette", choices=["palette", "cityscapes"],
                         help="cityscapes: also OUT/labelIds/<city>_<seq>_<frame>_labelIds.png for the official "
                              "evaluation (semantic models of the 19 train ids)")
    _add_inference_flags(predict)
    predict.set_defaults(func=cmd_predict)

    tune = commands.add_parser("crf-tune", help="grid-search the dense CRF's appearance kernel on validation images")
    tune.add_argument("--checkpoint", required=True, help="run directory or .pt file")
    tune.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    tune.add_argument("--data-root")
    tune.add_argument("--split", default="val")
    tune.add_argument("--num-images", type=int, default=100, help="validation images searched on (DeepLab: 100)")
    tune.add_argument("--image-size", type=int)
    tune.add_argument("--device", default="cpu")
    tune.add_argument("--iterations", type=int, default=10, help="mean-field iterations")
    tune.add_argument("--w1", type=float, nargs="+", help="appearance weights to try")
    tune.add_argument("--theta-alpha", type=float, nargs="+", help="appearance position widths (pixels) to try")
    tune.add_argument("--theta-beta", type=float, nargs="+", help="appearance colour widths (0..255) to try")
    tune.add_argument("--w2", type=float, default=3.0, help="smoothness weight (fixed)")
    tune.add_argument("--theta-gamma", type=float, default=3.0, help="smoothness width in pixels (fixed)")
    tune.add_argument("--top", type=int, default=10, help="settings printed")
    tune.add_argument("--out", help="output directory (default: RUN_DIR/crf_tune)")
    tune.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                      help="override a saved model option where the weights allow")
    tune.set_defaults(func=cmd_crf_tune)

    export_cmd = commands.add_parser("export", help="export a model to ONNX, checked in onnxruntime against PyTorch")
    export_cmd.add_argument("--model", help="registered model name (random or --weights), or use --checkpoint")
    export_cmd.add_argument("--weights", help="a seglab checkpoint or state dict for --model")
    export_cmd.add_argument("--checkpoint", help="run directory or .pt file: model, weights, classes, mean/std")
    export_cmd.add_argument("--num-classes", type=int, help="with --model (default 21, instance models 91)")
    export_cmd.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                            help="a model option (value parsed as YAML), e.g. width_mult=0.25; repeatable")
    export_cmd.add_argument("--out", required=True, help="the .onnx file")
    export_cmd.add_argument("--height", type=int, default=512, help="example input height (fixed with --static)")
    export_cmd.add_argument("--width", type=int, default=512, help="example input width (fixed with --static)")
    export_cmd.add_argument("--static", action="store_true",
                            help="fix the input size (semantic models export dynamic batch/height/width by default; "
                                 "Mask R-CNN is always fixed)")
    export_cmd.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's; Mask R-CNN 17)")
    export_cmd.set_defaults(func=cmd_export)

    models_cmd = commands.add_parser("models", help="list registered models with their parameter counts")
    models_cmd.set_defaults(func=cmd_models)

    data_cmd = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data_cmd.add_parser("check", help="validate a whole dataset before training")
    check.add_argument("root")
    check.add_argument("--format", default="voc", choices=["voc", "sbd", "cityscapes", "coco", "folder"])
    check.add_argument("--split", help="default: train; folder: every image (as 'all')")
    check.add_argument("--voc-root", help="sbd's train_aug split: the VOC2012 folder")
    check.add_argument("--num-classes", type=int)
    check.set_defaults(func=cmd_data_check)
    export = data_cmd.add_parser("export-shapes", help="write the Shapes dataset in VOC or COCO layout")
    export.add_argument("root")
    export.add_argument("--format", default="voc", choices=["voc", "coco"])
    export.add_argument("--num-train", type=int, default=1000)
    export.add_argument("--num-val", type=int, default=200)
    export.add_argument("--image-size", type=int, default=128)
    export.add_argument("--seed", type=int, default=0)
    export.set_defaults(func=cmd_export_shapes)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"seglab {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


if __name__ == "__main__":
    main()
