"""The ``seglab`` command line: argument parsing only; the work is done in ``engine``, ``data`` and ``export``."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path

import yaml

from .crf import PRESETS
from .engine.config import TrainConfig


def _field_type(hint):
    """The argparse type of a config field (``int | None`` → int)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (``batch_size`` → ``--batch-size``), with the field's help and default;
    argparse's own default is None (= not given), so that a ``--config`` file's value stands."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag, kind = "--" + field.name.replace("_", "-"), _field_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help = field.metadata["help"] + ("" if default in (None, {}, []) else f" (default: {_shown(default)})")
        if field.name == "model_options":
            _add_model_option_flag(parser, help)
        elif field.name == "data_options":
            parser.add_argument("--data-option", dest=field.name, action="append", metavar="KEY=VALUE", help=help)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=2, default=None, metavar=("MIN", "MAX"), help=help)
        elif typing.get_origin(kind) is list:
            numbers = typing.get_args(kind) == (float,)  # list[float]: numbers (e.g. --color-jitter 0.4 0.4 0.4 0.1)
            parser.add_argument(flag, nargs="+", type=float if numbers else str, default=None,
                                metavar="X" if numbers else "NAME", help=help)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help)


def _shown(value) -> str:
    """A default as a user would type it: ``0.5 2.0`` for a pair, ``on``/``off`` for a switch."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_model_option_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE", help=help)


def _config_from_args(args: argparse.Namespace):
    from .engine.config import load_config

    given = (f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None)
    overrides = {name: getattr(args, name) for name in given}
    for key in ("model_options", "data_options"):
        if key in overrides:
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
            raise ValueError(f"--model-option / --data-option / --override expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options


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
        options[key] = value if key == "normalization" else float(value)  # dense_crf checks the name
    return options


def _inference_options(args) -> dict:
    """The task's inference keywords from the flags of ``_add_inference_flags``."""
    return {"crop": args.crop, "stride": args.stride, "scales": tuple(args.scales), "flip": args.flip,
            "crf": _crf_options(args)}


def _setup_options(args) -> dict:
    """``engine.evaluate.evaluation_setup`` keywords from the flags of ``_add_checkpoint_data_flags``."""
    return {"data": args.data, "data_root": args.data_root, "split": args.split, "num_images": args.num_images,
            "image_size": args.image_size, "device": args.device, "model_options": _model_options(args)}


def _load_model(args):
    """The model of ``--checkpoint``, ``--onnx`` (onnxruntime) or ``--model NAME [--weights ...]``, with its
    ``.meta``."""
    from . import models
    from .models.base import check_device

    if args.model is None and (args.weights or args.num_classes):
        raise ValueError("--weights and --num-classes go with --model NAME (a checkpoint brings its own)")
    device = check_device(args.device)
    if args.model:
        model = models.create(args.model, args.num_classes, weights=args.weights, **_model_options(args))
        return model.to(device).eval()
    if getattr(args, "onnx", None):
        from .export import OnnxModel

        if args.model_options:
            raise ValueError("--model-option applies to --checkpoint: an ONNX file's options were fixed at export")
        return OnnxModel(args.onnx)
    return models.load(args.checkpoint, device=device, **_model_options(args))


def _compiled(model, compile: bool):
    """``model``, run through ``torch.compile`` with ``--compile`` (``engine.compiled.Compiled``)."""
    if not compile:
        return model
    if not any(True for _ in model.parameters()):
        raise ValueError("--compile applies to PyTorch models (--checkpoint, --model): onnxruntime runs an ONNX file")
    from .engine.compiled import Compiled

    return Compiled(model)


def cmd_train(args) -> None:
    from .engine.train import train

    train(_config_from_args(args))


def cmd_demo(args) -> None:
    from .engine.demo import run_demo

    run_demo(out=args.out)


def cmd_eval(args) -> None:
    from .engine.evaluate import evaluate_checkpoint

    source = _load_model(args) if args.model else args.checkpoint  # a model built here has used its options
    if args.boundary_band is not None and args.boundary_band < 0:
        raise ValueError(f"--boundary-band is a width in pixels, 0 or more, got {args.boundary_band}")
    inference = {"batch_size": args.batch_size, "boundary_band": args.boundary_band, **_inference_options(args)}
    print(evaluate_checkpoint(source, args.out, inference=inference, compile=args.compile, **_setup_options(args)))


def cmd_crf_tune(args) -> None:
    from .engine.crf_tune import crf_tune_checkpoint

    grid = {"bilateral_compat": args.w1, "bilateral_sxy": args.theta_alpha, "bilateral_srgb": args.theta_beta}
    print(crf_tune_checkpoint(args.checkpoint, args.out, grid=grid, iterations=args.iterations, top=args.top,
                              fixed={"gaussian_compat": args.w2, "gaussian_sxy": args.theta_gamma},
                              **_setup_options(args)))


def cmd_predict(args) -> None:
    from .engine.predict import predict

    print(predict(_compiled(_load_model(args), args.compile), args.inputs, Path(args.out), glob=args.glob,
                  fmt=args.format,
                  resize_short=args.resize_short, score_threshold=args.score_threshold, batch_size=args.batch_size,
                  resize=args.resize, save_probs=args.save_probs, skip_existing=args.skip_existing,
                  video_masks=args.video_masks, **_inference_options(args)))


def cmd_benchmark(args) -> None:
    import torch

    from . import models
    from .engine.benchmark import HEADER, machine_line, measure, table_row
    from .models.base import check_device

    options = {"size": tuple(args.size), "batch": args.batch, "train": args.train, "amp": args.amp,
               "channels_last": args.channels_last, "compile": args.compile, "repeats": args.repeats}
    print(machine_line(str(check_device(args.device))))  # a device this machine lacks: one line, no table
    print(HEADER)
    if not args.all:
        torch.manual_seed(0)  # a model built by name has the same random weights (so detections) every run
        print(table_row(measure(_load_model(args), **options)), flush=True)
        return
    for name in models.names():  # one model in memory at a time
        torch.manual_seed(0)
        model = models.create(name, args.num_classes, **_model_options(args)).to(args.device)
        print(table_row(measure(model, **options)), flush=True)
        del model


def cmd_experiment(args) -> None:
    from .engine.experiment import list_experiments, run_experiments, suite

    if args.list:
        names = list_experiments()
        if not names:
            raise ValueError("no experiments in configs/experiments here: run from the seglab repository's root "
                             "(its configs/experiments), or name an experiment's YAML file")
        print("\n".join(names))
        return
    if not args.names:
        raise ValueError("name an experiment (or all), or pass --list")
    names = suite() if args.names == ["all"] else args.names
    one = len(args.names) == 1 and names == args.names  # one experiment: --out is its directory, else the parent
    outs = {name: None if args.out is None else (Path(args.out) if one else Path(args.out) / Path(name).stem)
            for name in names}
    run_experiments(outs, seeds=args.seeds, seed=args.seed, device=args.device,  # prints each report when made
                    overrides=_key_values(args.override or []), jobs=args.jobs)


def cmd_export(args) -> None:
    from .export import to_onnx, to_safetensors
    from .io import writable_dir

    suffix = Path(args.out).suffix
    if suffix not in (".onnx", ".safetensors"):
        raise ValueError(f"--out {args.out}: unknown extension {suffix or '(none)'!r}; export writes .onnx (ONNX, run "
                         f"by onnxruntime) or .safetensors (the PyTorch weights with the model's meta)")
    model = _load_model(args)
    writable_dir(Path(args.out).parent)
    if suffix == ".safetensors":
        print(f"wrote {to_safetensors(model, args.out)} (weights and meta; seglab.models.load or --checkpoint read it)")
        return
    print(to_onnx(model, args.out, args.height, args.width, dynamic=not args.static, opset=args.opset))


def cmd_serve(args) -> None:
    try:
        from .serve import create_app, run
    except ImportError as error:  # the optional extra: FastAPI, uvicorn, python-multipart
        if error.name and error.name.split(".")[0] in {"fastapi", "starlette", "uvicorn", "python_multipart"}:
            raise SystemExit("seglab serve needs FastAPI: pip install 'seglab[serve]'") from error
        raise
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() // args.threads))  # the request threads share the cores
    app = create_app(_load_model(args), max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                     threads=args.threads, max_queue=args.max_queue, score_threshold=args.score_threshold)
    run(app, args.host, args.port)


def cmd_models(args) -> None:
    from . import models

    if args.name:
        print(models.describe(args.name))
        return
    print("| model | task | parameters (21 classes) | paper |")
    print("|---|---|---:|---|")
    for name in models.names():
        entry = models.entry(name)
        print(f"| {name} | {entry.task} | {models.count_parameters(name, 21):,} | {entry.paper} |")


def cmd_data_check(args) -> None:
    from . import data

    split = args.split if args.split or args.format == "folder" else "train"
    options = {"voc_root": args.voc_root} if args.voc_root else {}
    options.update(_key_values(getattr(args, "data_options", None) or []))  # reader options, values YAML
    dataset = data.build_dataset(args.format, split, root=args.root, **options)
    num_classes = args.num_classes or len(dataset.classes)
    summary = data.validate_dataset(dataset, num_classes, keep_going=True)
    print(data.format_summary(summary, list(dataset.classes)[:num_classes]))
    where = f"{args.root} ({args.format}, {split or 'every image'})"
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    if summary["problems"]:
        raise ValueError(f"{where}: {len(summary['problems'])} of {summary['images']} images have problems:\n"
                         + "\n".join(summary["problems"]))
    warned = f"no errors, {len(summary['warnings'])} warnings (above)" if summary["warnings"] else "no problems found"
    print(f"{where}: {summary['images']} images, {warned}")


def cmd_export_shapes(args) -> None:
    from .data import export_shapes

    root = export_shapes(args.root, args.format, {"train": args.num_train, "val": args.num_val},
                         image_size=args.image_size, seed=args.seed)
    print(f"wrote Shapes ({args.num_train} train, {args.num_val} val) in {args.format} layout to {root}")


def cmd_data_import_labelme(args) -> None:
    from .data.import_labelme import import_labelme

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    summary = import_labelme(args.dir, args.out, classes=classes, instances=args.instances, split=args.split)
    extra = (f", {summary['instances']} instances in {args.out}/annotations/instances_{args.split}2017.json"
             if args.instances else "")
    print(f"wrote {summary['images']} images, classes {', '.join(summary['classes'])}, to {args.out}{extra}")


def cmd_data_import_coco(args) -> None:
    from .data.import_coco import import_coco

    summary = import_coco(args.annotations, args.images, args.out)
    print(f"wrote {summary['images']} images, classes {', '.join(summary['classes'])}, to {args.out}")


# -- shared flag groups -------------------------------------------------------------------------------------
def _add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")


def _add_model_source_flags(parser: argparse.ArgumentParser, onnx: bool, every: bool = False) -> None:
    """Where the model comes from: ``--checkpoint``, ``--onnx`` (where ``onnx``), ``--model NAME`` with
    ``--weights`` / ``--num-classes``, or (where ``every``) ``--all`` registered models; exactly one of them."""
    source = parser.add_mutually_exclusive_group(required=True)
    if every:
        source.add_argument("--all", action="store_true", help="every registered model, built with random weights "
                                                               "(one table)")
    source.add_argument("--checkpoint", help="run directory (its best.pt, else last.pt), .pt or .safetensors file")
    if onnx:
        source.add_argument("--onnx", help="a file written by `seglab export`, run by onnxruntime (no checkpoint "
                                           "needed)")
    source.add_argument("--model", help="a registered model built by name (seglab models NAME lists its weights)")
    parser.add_argument("--weights", help="with --model: torchvision's trained weights by name (DEFAULT, "
                                          "COCO_WITH_VOC_LABELS_V1, COCO_V1; downloaded once into torch's hub cache) "
                                          "or a weights file")
    parser.add_argument("--num-classes", type=int, help="with --model: classes including the background (default: "
                                                        "the weights', else 21, instance models 91)")


def _add_checkpoint_data_flags(parser: argparse.ArgumentParser, num_images: int | None, num_images_help: str,
                               source: bool = False) -> None:
    """The model and data flags of ``eval`` and ``crf-tune``: a model (``source``: any of
    ``_add_model_source_flags``; else a checkpoint) scored on a dataset split."""
    if source:
        _add_model_source_flags(parser, onnx=False)
    else:
        parser.add_argument("--checkpoint", required=True, help="run directory (its best.pt, else last.pt) or .pt "
                                                                "file")
    parser.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    parser.add_argument("--data-root", help="the dataset's folder (default: the one the checkpoint was trained on)")
    parser.add_argument("--split", default="val", help="split scored (default: val)")
    parser.add_argument("--num-images", type=int, default=num_images, help=num_images_help)
    parser.add_argument("--image-size", type=int, help="Shapes image side in pixels (default: the training run's)")
    _add_device_flag(parser)
    _add_model_option_flag(parser, "override a saved model option where the weights allow, e.g. output_stride=8; "
                                   "repeatable")


def _add_compile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (the first calls compile; a model or backend it cannot compile "
                             "runs without it, with a warning)")


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """Sliding-window / multi-scale / flip / CRF flags of ``eval`` and ``predict`` (semantic models)."""
    group = parser.add_argument_group("semantic inference")
    group.add_argument("--crop", type=int, nargs="+", metavar=("H", "W"),
                       help="sliding-window inference with H×W-pixel windows (W defaults to H); default: whole image")
    group.add_argument("--stride", type=int, nargs="+", metavar=("H", "W"),
                       help="sliding-window step in pixels (default: 2/3 of the crop)")
    group.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                       help="average the logits over these image scales, e.g. 0.75 1.0 1.25 (default: 1.0)")
    group.add_argument("--flip", action="store_true", help="also average the horizontally flipped image's logits")
    group.add_argument("--crf", action="store_true", help="refine predictions with the dense CRF (seglab.crf)")
    group.add_argument("--crf-preset", default="default", choices=sorted(PRESETS),
                       help="kernel settings: default (pydensecrf's example), deeplab (DeepLab-LargeFOV), deeplab-v2 "
                            "(default: default)")
    group.add_argument("--crf-iterations", type=int, default=10, help="mean-field iterations (default: 10)")
    group.add_argument("--crf-param", action="append", metavar="KEY=VALUE",
                       help="override one dense_crf keyword, e.g. bilateral_sxy=50 or normalization=after (as "
                            "printed by crf-tune); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description="Image segmentation: train, evaluate, predict.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train and evaluate a small FCN-8s on generated Shapes (CPU)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.set_defaults(func=cmd_demo)

    train = commands.add_parser("train", help="train a model (flags override --config YAML)")
    train.add_argument("--config", help="YAML file holding any of the options below (their names with _)")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    _add_checkpoint_data_flags(evaluate, None, "Shapes images in the split (default: the training run's)", source=True)
    evaluate.add_argument("--batch-size", type=int,
                          help="semantic models: images per forward pass (default: 8)")
    evaluate.add_argument("--out", help="output directory (default: RUN_DIR/eval; needed with --model)")
    evaluate.add_argument("--boundary-band", type=int, metavar="W",
                          help="semantic models: also score only the pixels within W pixels of a ground-truth "
                               "boundary (or void pixel): DeepLab's trimap evaluation")
    _add_inference_flags(evaluate)
    _add_compile_flag(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    predict = commands.add_parser("predict", help="predict masks and overlays for images, folders and videos")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files, folders (searched recursively) and videos (.mp4 .avi .mov .mkv .webm); "
                              "outputs mirror each file's path below its folder input; files named explicitly "
                              "from several folders keep their folder's name (a/coffee.jpg -> OUT/a/coffee.png)")
    _add_model_source_flags(predict, onnx=True)
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--glob", metavar="PATTERN",
                         help="in folders, predict the files matching this pattern, e.g. '*.jpg' (case-sensitive; "
                              "default: common image and video extensions, any case)")
    predict.add_argument("--batch-size", type=int, default=1, metavar="B",
                         help="images (of one size, unless --resize) or video frames per forward pass; instance "
                              "models: images per model call (default: 1)")
    predict.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"),
                         help="semantic models: run every image at H×W pixels so that any sizes batch, the logits "
                              "resized back bilinearly to each image (default: each image's own size)")
    predict.add_argument("--skip-existing", action="store_true",
                         help="skip inputs whose outputs all exist (resume an interrupted run)")
    predict.add_argument("--save-probs", action="store_true",
                         help="semantic models: also OUT/NAME_probs.npz, key probs: float16 (C,H,W) class "
                              "probabilities (softmax, or the CRF's) of each image (not video frames)")
    predict.add_argument("--video-masks", action="store_true",
                         help="videos: also OUT/NAME/frame_000000.png ..., a palette PNG of class ids per frame")
    _add_device_flag(predict)
    _add_model_option_flag(predict, "override a saved model option where the weights allow, e.g. output_stride=8; "
                                    "repeatable")
    predict.add_argument("--score-threshold", type=float,
                         help="instance models: the lowest score of a detection drawn and listed (default: 0.5)")
    predict.add_argument("--resize-short", type=int, metavar="PIXELS",
                         help="semantic models: run on the image resized to this short side, as torchvision's "
                              "weights' transforms do (520), masks at the image's size (default: its own size)")
    predict.add_argument("--format", default="palette", choices=["palette", "cityscapes"],
                         help="semantic models; cityscapes: also OUT/labelIds/<city>_<seq>_<frame>_labelIds.png for "
                              "the official evaluation (models of the 19 train ids) (default: palette)")
    _add_inference_flags(predict)
    _add_compile_flag(predict)
    predict.set_defaults(func=cmd_predict)

    tune = commands.add_parser("crf-tune", help="grid-search the dense CRF's appearance kernel on validation images")
    _add_checkpoint_data_flags(tune, 100, "validation images searched on (DeepLab: 100; default: 100)")
    tune.add_argument("--iterations", type=int, default=10, help="mean-field iterations (default: 10)")
    tune.add_argument("--w1", type=float, nargs="+", help="appearance weights to try (default: 3 4 5 10)")
    tune.add_argument("--theta-alpha", type=float, nargs="+",
                      help="appearance position widths in pixels to try (default: 20 50 80 121)")
    tune.add_argument("--theta-beta", type=float, nargs="+",
                      help="appearance colour widths (0..255 intensities) to try (default: 3 5 13)")
    tune.add_argument("--w2", type=float, default=3.0, help="smoothness weight, fixed (default: 3)")
    tune.add_argument("--theta-gamma", type=float, default=3.0, help="smoothness width in pixels, fixed (default: 3)")
    tune.add_argument("--top", type=int, default=10, help="settings printed (default: 10)")
    tune.add_argument("--out", help="output directory (default: RUN_DIR/crf_tune)")
    tune.set_defaults(func=cmd_crf_tune)

    bench = commands.add_parser("benchmark", help="parameters, multiply-accumulates, latency, images/s and peak "
                                                  "memory of a model, for inference or a training step")
    _add_model_source_flags(bench, onnx=True, every=True)
    _add_device_flag(bench)
    _add_model_option_flag(bench, "a model option (value parsed as YAML), e.g. width_mult=0.25; repeatable")
    bench.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"),
                       help="synthetic input height and width in pixels (detection models resize it to their "
                            "min_size/max_size) (default: 512 512)")
    bench.add_argument("--batch", type=int, default=1, help="images per call (default: 1)")
    bench.add_argument("--train", action="store_true", help="time a training step (forward, loss, backward, SGD "
                                                            "step) instead of inference")
    bench.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    bench.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    _add_compile_flag(bench)
    bench.add_argument("--repeats", type=int, default=10, help="timed calls after 2 warm-up calls (default: 10)")
    bench.set_defaults(func=cmd_benchmark)

    experiment = commands.add_parser("experiment", help="rerun a paper's ablation: every variant with the same "
                                     "data, budget and seeds; results.json and a report")
    experiment.add_argument("names", nargs="*", metavar="NAME",
                            help="experiments in configs/experiments (or YAML paths), or all (the lecture's ten)")
    experiment.add_argument("--list", action="store_true", help="list the experiments and stop")
    experiment.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    experiment.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    experiment.add_argument("--out", help="output directory (default: runs/experiments/NAME); with several "
                                          "experiments, OUT/NAME for each")
    experiment.add_argument("--device", help="device of every run (default: each config's)")
    experiment.add_argument("--jobs", type=int, default=1,
                            help="runs at once, each in its own process with its share of the CPU cores and its "
                                 "output in its run's log.txt (default: 1)")
    experiment.add_argument("--override", action="append", metavar="KEY=VALUE",
                            help="a seglab train option set in every run, value parsed as YAML, e.g. iters=2 for a "
                                 "smoke run (then give another --out); repeatable")
    experiment.set_defaults(func=cmd_experiment)

    export_cmd = commands.add_parser("export", help="export a model to ONNX (checked in onnxruntime against PyTorch) "
                                                    "or to safetensors")
    _add_model_source_flags(export_cmd, onnx=False)
    _add_device_flag(export_cmd)
    _add_model_option_flag(export_cmd, "a model option (value parsed as YAML), e.g. width_mult=0.25; repeatable")
    export_cmd.add_argument("--out", required=True,
                            help="the file; its extension picks the format: .onnx (ONNX, checked in onnxruntime) or "
                                 ".safetensors (the weights with the model's meta, for --checkpoint)")
    export_cmd.add_argument("--height", type=int, default=512,
                            help="example input height in pixels, fixed with --static (default: 512)")
    export_cmd.add_argument("--width", type=int, default=512,
                            help="example input width in pixels, fixed with --static (default: 512)")
    export_cmd.add_argument("--static", action="store_true",
                            help="fix the input size (semantic models export dynamic batch/height/width by default; "
                                 "Mask R-CNN is always fixed)")
    export_cmd.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's; Mask R-CNN 17)")
    export_cmd.set_defaults(func=cmd_export)

    serve = commands.add_parser("serve", help="serve a model over HTTP: an upload page, POST /predict, GET /model "
                                              "(needs the serve extra: pip install 'seglab[serve]')")
    _add_model_source_flags(serve, onnx=True)
    _add_device_flag(serve)
    _add_model_option_flag(serve, "override a saved model option where the weights allow, e.g. output_stride=8; "
                                  "repeatable")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; 0.0.0.0 opens it to other machines (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=20,
                       help="largest request body in MiB, larger ones get 413 (default: 20)")
    serve.add_argument("--max-pixels", type=float, default=40e6,
                       help="largest image in pixels (width × height, read from its header before decoding), larger "
                            "ones get 413 (default: 40e6)")
    serve.add_argument("--threads", type=int, default=2, help="requests run at once, each on its own thread with "
                                                              "its share of torch's CPU threads (default: 2)")
    serve.add_argument("--max-queue", type=int,
                       help="requests waiting for a thread beyond which new ones get 503 with Retry-After "
                            "(default: as many as --threads)")
    serve.add_argument("--score-threshold", type=float,
                       help="instance models: the lowest score of a detection returned (default: 0.5)")
    serve.set_defaults(func=cmd_serve)

    models_cmd = commands.add_parser("models", help="list registered models with their parameter counts, or describe "
                                                    "one")
    models_cmd.add_argument("name", nargs="?", help="a model: its paper, task, parameters and every option's default")
    models_cmd.set_defaults(func=cmd_models)

    data_cmd = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data_cmd.add_parser("check", help="validate a whole dataset before training")
    check.add_argument("root", help="the dataset's folder")
    check.add_argument("--format", default="voc", choices=["voc", "sbd", "cityscapes", "coco", "folder"],
                       help="the dataset's layout (default: voc)")
    check.add_argument("--split", help="split checked (default: train; folder: every image, as 'all')")
    check.add_argument("--voc-root", help="sbd's train_aug split: the VOC2012 folder")
    check.add_argument("--num-classes", type=int, help="classes including the background (default: the dataset's)")
    check.add_argument("--data-option", dest="data_options", action="append", metavar="KEY=VALUE",
                       help="a reader option, value as YAML: mask_map='{255: 1}', palette=voc|FILE, "
                            "exif_transpose=false")
    check.set_defaults(func=cmd_data_check)
    export = data_cmd.add_parser("export-shapes", help="write the Shapes dataset in VOC or COCO layout")
    export.add_argument("root", help="output folder")
    export.add_argument("--format", default="voc", choices=["voc", "coco"], help="layout written (default: voc)")
    export.add_argument("--num-train", type=int, default=1000, help="training images (default: 1000)")
    export.add_argument("--num-val", type=int, default=200, help="validation images (default: 200)")
    export.add_argument("--image-size", type=int, default=128, help="image side in pixels (default: 128)")
    export.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    export.set_defaults(func=cmd_export_shapes)
    importers = data_cmd.add_parser("import", help="convert annotations into the folder layout (--data folder)") \
        .add_subparsers(dest="import_format", required=True)
    labelme = importers.add_parser("labelme", help="labelme JSON files -> images/, masks/ (palette PNGs), classes.txt")
    labelme.add_argument("dir", help="the folder of labelme .json files (images embedded or beside them)")
    labelme.add_argument("--out", required=True, help="the dataset folder written (required; created if missing)")
    labelme.add_argument("--classes", help="class names a,b,c, the first being the background (id 0) (default: "
                                           "background, then the labels found, sorted)")
    labelme.add_argument("--instances", action="store_true",
                         help="also write a COCO instances json (shapes sharing a group_id form one instance) for "
                              "--data coco (default: off)")
    labelme.add_argument("--split", default="train",
                         help="with --instances: the COCO split written, OUT/<split>2017/ and "
                              "OUT/annotations/instances_<split>2017.json (default: train)")
    labelme.set_defaults(func=cmd_data_import_labelme)
    coco_import = importers.add_parser("coco", help="a COCO instances json -> semantic masks in the folder layout "
                                                    "(crowd and class overlaps 255)")
    coco_import.add_argument("annotations", help="the COCO instances .json file")
    coco_import.add_argument("images", help="the folder its file_names are relative to")
    coco_import.add_argument("--out", required=True, help="the dataset folder written (required; created if missing)")
    coco_import.set_defaults(func=cmd_data_import_coco)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's "seglab" log lines
    from .engine.train import TrainingStopped

    try:
        args.func(args)
    except (ValueError, OSError, FloatingPointError) as error:  # OSError: a file or disk the system refused
        print(f"seglab {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    except TrainingStopped as stopped:  # seglab experiment: the same command continues
        print(f"seglab {args.command}: {stopped}; the same command continues from there", file=sys.stderr)
        raise SystemExit(128 + stopped.signum) from None


if __name__ == "__main__":
    main()
