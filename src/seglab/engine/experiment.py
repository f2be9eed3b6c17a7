"""``seglab experiment``: a paper's ablation rerun — every variant trained and evaluated with the same data and
seeds, on the budget its file states — and a report of whether the paper's claims hold here.

An experiment is a YAML file (``configs/experiments/NAME.yaml``)::

    experiment: roi-align                 # its name (the file's stem)
    paper: Mask R-CNN (arXiv:1703.06870) Table 2c, mask AP on COCO minival (R50-C4)
    metric: segm_AP                       # a validation metric of the task, higher is better
    base: configs/maskrcnn_resnet18_fpn_shapes.yaml   # a variant may name its own
    train: {iters: 300}                   # overrides every variant shares
    order: [roipool, roialign]            # the table's order, and by default the paper's direction: each
                                          # variant better than the one before (else claims: [[worse, better]])
    variants:
      roipool: {paper: 26.9, train: {model_options: {roi_pool_type: pool}}}
      roialign: {paper: 30.2}

A variant may also

- ``init_from: VARIANT``: start from that variant's final weights of the same seed (staged training, e.g.
  FCN-16s from FCN-32s; ``init_from`` in ``seglab train``), after that run has finished;
- ``from: VARIANT``: train nothing and evaluate that variant's run of the same seed (an evaluation-time
  ablation: the CRF, another output stride);
- ``eval: {...}`` (merged over the experiment's own ``eval``, if any): score the weights its run's validation
  evaluated (in ``last.pt``) by an evaluation of its own (:data:`EVAL_KEYS`):
  ``model_options`` (e.g. ``{output_stride: 8}``), ``held_out: F`` (the first fraction F of the validation
  images is held out: the CRF is tuned on them and the metric measured on the rest), ``crf`` (``dense_crf`` keywords, a
  ``preset``, and ``tune: {keyword: [values]}`` to grid-search those on the held-out images), ``labels``
  (instance models: score these classes only) and ``boundary_band: W`` (also ``band_miou`` and
  ``band_pixel_acc``: DeepLab's trimap, ``metrics.boundary``). Without any ``eval`` the metric is the
  run's last validation (the same evaluation, done by the trainer).

``all: false`` leaves an experiment out of ``seglab experiment all``. ``also: [metric, ...]`` names further
metrics reported beside ``metric``; a claim ``[worse, better, metric]``
tests one of them (default: ``metric``).

Runs go to ``OUT/VARIANT/seed_S``; a finished run leaves ``result.json`` there with its settings
(:func:`run_settings`) and is reused under the same settings, so an interrupted suite continues where it
stopped (an unfinished run resumes from its ``last.pt``, under the settings it started with).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from functools import partial
from pathlib import Path

import torch
from scipy import stats
from torch.utils.data import Subset
from tqdm import tqdm

from .. import report, viz
from ..crf import PRESETS
from ..io import write_json
from ..models.base import check_device
from .benchmark import machine_line
from .config import load_config, merge_settings, read_yaml_mapping
from .crf_tune import tune_crf
from .evaluate import evaluation_setup
from .tasks import task_module
from .train import TrainingStopped, stop_signals_call, train

EXPERIMENTS = Path("configs/experiments")  # where names are looked up, from the current directory
KEYS = {"experiment", "paper", "metric", "also", "base", "train", "eval", "order", "claims", "variants", "all"}
VARIANT_KEYS = {"paper", "train", "base", "init_from", "from", "eval"}  # a variant's own base replaces the experiment's
EVAL_KEYS = {"model_options", "held_out", "crf", "labels", "boundary_band"}


def experiment_path(name: str) -> Path:
    """The YAML file of experiment ``name`` (a name in ``configs/experiments`` or a path)."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_experiments()) or "none"
        raise FileNotFoundError(f"no experiment {name!r} ({path} does not exist); known: {known}")
    return path


def list_experiments() -> list[str]:
    """The experiment names in ``configs/experiments``, sorted."""
    return sorted(path.stem for path in EXPERIMENTS.glob("*.yaml")) if EXPERIMENTS.is_dir() else []


def suite() -> list[str]:
    """What ``seglab experiment all`` runs: the experiments of ``configs/experiments`` but those marked
    ``all: false`` (a long comparison of its own, e.g. fcis-vs-maskrcnn), sorted."""
    return [name for name in list_experiments() if read_yaml_mapping(experiment_path(name)).get("all", True)]


def load_experiment(path: Path) -> dict:
    """The experiment at ``path``, checked (one-line ValueErrors naming the file and the key) and normalised:
    ``order``, ``claims`` as (worse, better, metric) and each variant's ``eval`` merged over the shared one
    (None: the variant is scored by its run's last validation)."""
    spec = read_yaml_mapping(path)
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(KEYS)}")
    for key in ("experiment", "metric", "variants"):
        if key not in spec:
            raise ValueError(f"{path}: {key} is missing")
    variants = spec["variants"]
    if not isinstance(variants, dict) or len(variants) < 2:
        raise ValueError(f"{path}: variants must map at least two names to their settings, got {variants!r}")
    checked = {}
    for name, variant in variants.items():
        if name != name.lower() or not isinstance(variant or {}, dict) or set(variant or {}) - VARIANT_KEYS:
            raise ValueError(f"{path}: variant {name!r} must be a lower-case name mapping to "
                             f"{'/'.join(sorted(VARIANT_KEYS))}, got {variant!r}")
        variant = dict(variant or {})
        if "base" not in spec and "base" not in variant and "from" not in variant:
            raise ValueError(f"{path}: base is missing (for variant {name!r})")
        for key in ("init_from", "from"):
            source = variant.get(key)
            if source is not None and (source not in variants or source == name or "from" in (variants[source] or {})):
                raise ValueError(f"{path}: variant {name!r}: {key} {source!r} must be another variant that trains")
        if "from" in variant and set(variant) & {"train", "base", "init_from"}:
            raise ValueError(f"{path}: variant {name!r} evaluates {variant['from']!r}'s run: it trains nothing, "
                             f"so it takes no train, base or init_from")
        if "eval" in spec or "eval" in variant:
            variant["eval"] = {**(spec.get("eval") or {}), **(variant.get("eval") or {})}
            check_eval(path, name, variant["eval"])
        checked[name] = variant
    _check_chains(path, checked)
    order = spec.get("order", list(variants))
    if sorted(order) != sorted(variants):
        raise ValueError(f"{path}: order must list the variants {sorted(variants)}, got {order}")
    metrics = metrics_of(spec)
    claims = []
    for claim in spec.get("claims", list(zip(order, order[1:]))):
        if not (isinstance(claim, (list, tuple)) and len(claim) in (2, 3) and set(claim[:2]) <= set(variants)
                and (len(claim) == 2 or claim[2] in metrics)):
            raise ValueError(f"{path}: a claim is [worse, better] (two variants), optionally with a metric of "
                             f"{metrics}, got {claim!r}")
        claims.append((claim[0], claim[1], claim[2] if len(claim) == 3 else spec["metric"]))
    banded = [name for name in metrics if name.startswith("band_")]
    unbanded = [name for name, variant in checked.items() if "boundary_band" not in (variant.get("eval") or {})]
    if banded and unbanded:
        raise ValueError(f"{path}: {banded[0]} needs eval.boundary_band in every variant; {unbanded[0]!r} has none")
    return {**spec, "order": order, "claims": claims, "variants": checked}


def check_eval(path: Path, name: str, options: dict) -> None:
    """ValueError naming the file and the variant when its ``eval`` options are not :data:`EVAL_KEYS` of the
    right kinds."""
    unknown = sorted(set(options) - EVAL_KEYS)
    if unknown:
        raise ValueError(f"{path}: variant {name!r}: unknown eval keys {unknown}; known: {sorted(EVAL_KEYS)}")
    fraction = options.get("held_out")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f"{path}: variant {name!r}: eval.held_out is the fraction of the validation images held "
                         f"out, in (0, 1), got {fraction!r}")
    crf = options.get("crf")
    if crf is not None:
        preset = crf.get("preset", "default") if isinstance(crf, dict) else None
        if preset not in PRESETS:
            raise ValueError(f"{path}: variant {name!r}: eval.crf must map dense_crf keywords (a preset of "
                             f"{sorted(PRESETS)}, tune), got {crf!r}")
        if "tune" in crf and fraction is None:
            raise ValueError(f"{path}: variant {name!r}: eval.crf.tune needs eval.held_out: the images the CRF "
                             f"is tuned on")


def _check_chains(path: Path, variants: dict) -> None:
    """ValueError when ``init_from`` links run in a circle."""
    for name in variants:
        seen, current = [name], variants[name].get("init_from")
        while current is not None:
            if current in seen:
                raise ValueError(f"{path}: init_from links run in a circle: {' -> '.join([*seen, current])}")
            seen.append(current)
            current = variants[current].get("init_from")


def run_config(spec: dict, variant: str, seed: int, out: Path, device: str | None, resume: bool = False,
               overrides: dict | None = None):
    """The TrainConfig of one run: the (variant's, else the experiment's) base file ← the shared ``train`` ← the
    variant's ← ``overrides`` (``seglab experiment --override``), then seed, out, device, resume, and
    ``init_from`` the final weights of the variant it starts from (``model_options`` and ``data_options`` merge
    key by key)."""
    settings = spec["variants"][variant]
    merged = merge_settings(merge_settings(spec.get("train", {}), settings.get("train", {})), overrides or {})
    run = {"seed": seed, "out": str(out), "resume": resume, **({} if device is None else {"device": device})}
    if "init_from" in settings:
        run["init_from"] = str(out.parent.parent / settings["init_from"] / f"seed_{seed}" / "last.pt")
    return load_config(settings.get("base", spec.get("base")), {**merged, **run})


def final_metric(run_dir: Path, metric: str) -> float:
    """The last validation value of ``metric`` in ``run_dir/metrics.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [row[f"val/{metric}"] for row in rows if f"val/{metric}" in row]
    if not values:
        raise ValueError(f"{run_dir}/metrics.jsonl has no validation value of {metric!r}")
    return math.nan if values[-1] is None else float(values[-1])


def crf_settings(crf: dict, model, held_out, progress: bool = True) -> dict:
    """``dense_crf`` keywords of an experiment's ``eval.crf``: a ``preset`` (default "default") ← its keywords ←,
    with ``tune``, the best point of that grid on the ``held_out`` images (``crf_tune.tune_crf``)."""
    crf = dict(crf)
    grid = crf.pop("tune", None)
    settings = {**PRESETS[crf.pop("preset", "default")], **crf}
    if grid:  # with held-out images (load_experiment checks)
        fixed = {key: value for key, value in settings.items() if key not in grid and key != "iterations"}
        meta = model.meta
        _, ranked = tune_crf(model, held_out, meta["num_classes"], meta["mean"], meta["std"], grid, fixed,
                             int(settings.get("iterations", 10)), progress=progress)
        settings.update(ranked[0][0])
    return settings


def evaluate_run(run_dir: Path, options: dict, device: str | None, out: Path) -> dict[str, float]:
    """The summary metrics of the weights ``run_dir``'s validation evaluated (its ``last.pt``; the average with
    ``--ema``) under an experiment's ``eval`` options (:data:`EVAL_KEYS`); the CRF setting used, if any, is
    kept in ``out/crf.json``."""
    _, model, dataset, _ = evaluation_setup(run_dir / "last.pt", device=device or "auto",
                                            model_options=options.get("model_options"), evaluated=True)
    task, held_out = task_module(model.meta), None
    if options.get("held_out") is not None:
        if task.DEFAULT_METRIC != "miou":  # semantic models (the task seam has no other mark)
            raise ValueError("eval.held_out applies to semantic models (it holds out images to tune the CRF on)")
        held = round(options["held_out"] * len(dataset))
        if not 0 < held < len(dataset):
            raise ValueError(f"eval.held_out {options['held_out']}: must hold out a part of the {len(dataset)} "
                             f"validation images, not {held}")
        held_out, dataset = Subset(dataset, range(held)), Subset(dataset, range(held, len(dataset)))
    inference = {}
    if "crf" in options:
        inference["crf"] = crf_settings(options["crf"], model, held_out)
        write_json(out / "crf.json", inference["crf"])
    if "boundary_band" in options:
        inference["boundary_band"] = options["boundary_band"]
    if "labels" in options:
        classes = model.meta["classes"]
        unknown = [name for name in options["labels"] if name not in classes]
        if unknown:
            raise ValueError(f"eval.labels: {unknown} are not classes of {run_dir} ({', '.join(classes)})")
        inference["labels"] = [classes.index(name) for name in options["labels"]]
    result, _ = task.evaluate(model, dataset, model.meta, **inference)
    return task.summary(result)


def source_of(variant: dict) -> str | None:
    """The variant a variant's run starts from (``init_from``) or scores (``from``), if any."""
    return variant.get("from") or variant.get("init_from")


def metrics_of(spec: dict) -> list[str]:
    """The metrics an experiment reports: ``metric``, then each of ``also``."""
    return [spec["metric"], *spec.get("also", [])]


def training_settings(spec: dict, variant: str, seed: int, out: Path, overrides: dict | None = None) -> dict:
    """What the weights of a variant's run depend on: its training config but where it is written, on which
    device and the path it starts from, and (``init_from``) the training settings of the run it starts from."""
    settings = spec["variants"][variant]
    config = run_config(spec, variant, seed, out / variant / f"seed_{seed}", None, overrides=overrides)
    trained = {key: value for key, value in config.to_dict().items()
               if key not in ("out", "device", "resume", "init_from")}
    source = settings.get("init_from")
    return {"train": trained,
            "init_from": None if source is None else training_settings(spec, source, seed, out, overrides)}


def run_settings(spec: dict, variant: str, seed: int, out: Path, overrides: dict | None = None) -> dict:
    """What a run's result depends on, as saved in its ``result.json`` (JSON types): the training settings of
    the run it scores (its own, or with ``from`` the other variant's: :func:`training_settings`), its
    evaluation options and the metrics."""
    settings = spec["variants"][variant]
    trained = training_settings(spec, settings.get("from", variant), seed, out, overrides)
    current = {**trained, "eval": settings.get("eval"), "metrics": metrics_of(spec)}
    return json.loads(json.dumps(current))


def changed_settings(old: dict, new: dict) -> list[str]:
    """The names of the training options, and of the other parts of :func:`run_settings`, that differ."""
    old_train, new_train = old.get("train", {}), new.get("train", {})
    trained = [key for key in sorted(set(old_train) | set(new_train)) if old_train.get(key) != new_train.get(key)]
    return trained + [key for key in ("init_from", "eval", "metrics") if old.get(key) != new.get(key)]


def _check_reuse(run_dir: Path, recorded: dict | None, current: dict, what: str) -> None:
    """ValueError when ``recorded`` (a finished or started run's settings) are not ``current``."""
    if recorded != current:
        changed = ", ".join(changed_settings(recorded, current)) if recorded else "it records none"
        raise ValueError(f"{run_dir} holds a {what} of other settings ({changed}): remove it, or pass another "
                         f"--out")


def run_one(spec: dict, variant: str, seed: int, out: Path, device: str | None,
            overrides: dict | None = None) -> dict:
    """Train and evaluate one (variant, seed), or reuse its ``result.json``: {"value", "seconds", "also",
    "settings", "source"} (:func:`run_settings`; a ValueError when they are not this run's, or when the run
    it starts from or scores has been rerun since).

    The variant it starts from (``init_from``) or evaluates (``from``) runs first; ``seconds`` counts this
    variant's own training and evaluation."""
    run_dir = out / variant / f"seed_{seed}"
    done, started_with = run_dir / "result.json", run_dir / "settings.json"
    current = run_settings(spec, variant, seed, out, overrides)
    settings = spec["variants"][variant]
    cached = json.loads(done.read_text()) if done.is_file() else None
    if cached is not None:
        _check_reuse(run_dir, cached.get("settings"), current, "finished run")
    source, upstream = source_of(settings), None
    if source is not None:  # the run it starts from or scores: {"variant", "value", "seconds"}
        made = run_one(spec, source, seed, out, device, overrides)
        upstream = {"variant": source, "value": made["value"], "seconds": made["seconds"]}
    if cached is not None:
        if cached.get("source") != upstream:
            raise ValueError(f"{run_dir} was made from a run of {source!r} that has been rerun since: remove it, "
                             f"or pass another --out")
        return cached
    started = time.perf_counter()
    trained = out / settings["from"] / f"seed_{seed}" if "from" in settings else run_dir
    if "from" not in settings:
        resume = (run_dir / "last.pt").is_file()
        if resume:
            _check_reuse(run_dir, json.loads(started_with.read_text()) if started_with.is_file() else None,
                         current, "started run")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(started_with, current)
        train(run_config(spec, variant, seed, run_dir, device, resume=resume, overrides=overrides), stop_raises=True)
    wanted = metrics_of(spec)
    if settings.get("eval") is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        measured = evaluate_run(trained, settings["eval"], device, run_dir)
        missing = [name for name in wanted if name not in measured]
        if missing:
            raise ValueError(f"variant {variant!r}: the evaluation gives no {missing}; it gives {sorted(measured)}")
        values = {name: float(measured[name]) for name in wanted}
    else:
        values = {name: final_metric(trained, name) for name in wanted}
    result = {"value": values[spec["metric"]], "seconds": round(time.perf_counter() - started, 1),
              "also": {name: values[name] for name in wanted[1:]}, "settings": current, "source": upstream,
              "machine": machine_line(str(check_device(device or "auto")))}
    write_json(done, result)
    return result


def run_experiments(experiments: dict[str, str | Path | None], seeds: int = 3, seed: int = 0,
                    device: str | None = None, overrides: dict | None = None, jobs: int = 1) -> list[str]:
    """``seglab experiment NAME`` (or ``all``): every variant of each experiment (a name → its OUT, default
    runs/experiments/NAME) for seeds ``seed`` … ``seed + seeds − 1``, each run's training config with
    ``overrides`` on top (e.g. ``{"iters": 2}`` for a smoke run); writes ``OUT/results.json``, ``OUT/report.md``,
    ``OUT/report.html`` and ``OUT/figure.png`` per experiment and returns the Markdown reports.

    Runs go in order (experiment, seed, variant), so a stopped suite has compared as many seeds as it finished;
    ``jobs`` > 1 runs that many at once, each in a process of its own with the CPU's cores shared out and its
    output in its run's ``log.txt``, a run starting once the run it starts from or scores has finished."""
    if seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs}")
    specs = {}
    for name, out in experiments.items():
        spec = load_experiment(experiment_path(name))
        specs[name] = (spec, Path(out or Path("runs/experiments") / spec["experiment"]))
    seed_range, reports = range(seed, seed + seeds), {}
    keys = [(name, variant, current) for name, (spec, _) in specs.items() for current in seed_range
            for variant in spec["order"]]

    def report_on(name, made):  # as soon as an experiment's runs are made
        spec, out = specs[name]
        reports[name] = write_results(spec, out, {variant: [made[name, variant, current] for current in seed_range]
                                                  for variant in spec["order"]}, list(seed_range))
        tqdm.write(reports[name])

    schedule_runs(specs, keys, device, overrides, jobs, report_on)
    return [reports[name] for name in specs]


def run_experiment(name: str, seeds: int = 3, seed: int = 0, out: str | Path | None = None,
                   device: str | None = None, overrides: dict | None = None, jobs: int = 1) -> str:
    """One experiment's :func:`run_experiments`: its Markdown report."""
    return run_experiments({name: out}, seeds, seed, device, overrides, jobs)[0]


def schedule_runs(specs: dict, keys: list[tuple], device: str | None, overrides: dict | None, jobs: int,
                  report_on) -> None:
    """The runs ``keys`` (experiment, variant, seed), ``jobs`` at a time, each started in order once the run it
    depends on (``init_from``, ``from``) has finished; ``report_on(experiment, made)`` once all of an
    experiment's are made (``made``: each key's :func:`run_one` result)."""
    def ready(key):  # the run it depends on, if any, is made
        name, variant, current = key
        source = source_of(specs[name][0]["variants"][variant])
        return source is None or (name, source, current) in made

    def start(key, runner):
        name, variant, current = key
        spec, out = specs[name]
        return runner(spec, variant, current, out, device, overrides)

    made = {}
    with tqdm(total=len(keys), desc="runs", unit="run", dynamic_ncols=True) as bar:
        def record(key, result):
            made[key] = result
            bar.update(1)
            if all(other in made for other in keys if other[0] == key[0]):
                report_on(key[0], made)

        if jobs == 1:
            for key in keys:
                record(key, start(key, run_one))
            return
        threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        pending, running, stopping = list(keys), {}, []
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                                 initargs=(threads,)) as pool, stops_workers(stopping):
            while running or (pending and not stopping):
                for key in [key for key in pending if ready(key)][:0 if stopping else jobs - len(running)]:
                    pending.remove(key)
                    running[start(key, partial(pool.submit, run_logged))] = key
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = running.pop(future)
                    if stopping and isinstance(future.exception(), TrainingStopped):
                        continue  # resumes from its last.pt when the command runs again
                    record(key, future.result())  # a failed run's error, after the others finish
        if stopping:
            raise TrainingStopped("the experiments' running runs", stopping[0])


def stops_workers(stopping: list):
    """While inside, a SIGINT/SIGTERM is appended to ``stopping`` and sent on to the worker processes as a
    SIGTERM, which stops each one's training at a checkpoint (:func:`start_worker`)."""
    def stop(signum, frame):
        stopping.append(signum)
        for worker in multiprocessing.active_children():
            worker.terminate()

    return stop_signals_call(stop)


def start_worker(threads: int) -> None:
    """A worker process of ``--jobs``: ``threads`` torch threads; a SIGINT/SIGTERM stops a run's training at a
    checkpoint (the trainer's own handler) and is otherwise ignored: a run being evaluated finishes, and an
    idle worker ends when the pool closes."""
    torch.set_num_threads(threads)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def run_logged(spec: dict, variant: str, seed: int, out: Path, device: str | None, overrides: dict | None) -> dict:
    """:func:`run_one` with its output (progress bars, messages) appended to the run's ``log.txt``."""
    log = out / variant / f"seed_{seed}" / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream, redirect_stdout(stream), redirect_stderr(stream):
        return run_one(spec, variant, seed, out, device, overrides)


def write_results(spec: dict, out: Path, made: dict[str, list[dict]], seeds: list[int]) -> str:
    """``out/results.json``, ``report.md``, ``report.html`` and ``figure.png`` of an experiment's runs (per
    variant, :func:`run_one`'s results, one per seed); returns the Markdown report."""
    variants = {variant: {"values": [result["value"] for result in results],
                          "seconds": [result["seconds"] for result in results],
                          "also": {name: [result["also"][name] for result in results] for name in spec.get("also", [])}}
                for variant, results in made.items()}
    machines = sorted({result.get("machine", "not recorded") for results in made.values() for result in results})
    results = {"experiment": spec["experiment"], "metric": spec["metric"], "higher_is_better": True,
               "seeds": seeds, "variants": variants, "machines": machines}
    write_json(out / "results.json", results)
    variant_table, claim_table = variant_rows(spec, results), claim_rows(spec, results)
    text = markdown_report(spec, results, variant_table, claim_table)
    (out / "report.md").write_text(text + "\n")
    count = len(seeds)
    viz.plot_experiment({variant: variants[variant]["values"] for variant in spec["order"]}, spec["metric"],
                        f"{spec['experiment']} ({count} seed{'s' * (count > 1)})", out / "figure.png")
    report.experiment_report(out, f"seglab experiment {spec['experiment']}", spec.get("paper", ""), machines,
                             variant_columns(spec), variant_table, claim_table, "figure.png")
    return text + f"\nwrote {out}/results.json, report.md, report.html, figure.png"


def mean_std(values: list[float]) -> str:
    """"m ± s" in points (the metrics are fractions), s the sample standard deviation ("m" for one value)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return f"{100 * mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def variant_columns(spec: dict) -> list[str]:
    """The headings of :func:`variant_rows`."""
    also = [f"{name} (mean ± std)" for name in spec.get("also", [])]
    return ["variant", "paper", f"seglab ({spec['metric']}, mean ± std over seeds)", *also, "seconds per run"]


def variant_rows(spec: dict, results: dict) -> list[list[str]]:
    """Per variant: name, the paper's figure, seglab's mean ± std (of the metric, then of each ``also``),
    seconds per run (mean)."""
    rows = []
    for variant in spec["order"]:
        measured = results["variants"][variant]
        paper = spec["variants"][variant].get("paper")
        seconds = sum(measured["seconds"]) / len(measured["seconds"])
        also = [mean_std(measured["also"][name]) for name in spec.get("also", [])]
        rows.append([variant, "—" if paper is None else f"{paper:g}", mean_std(measured["values"]), *also,
                     f"{seconds:.0f}"])
    return rows


def claim_rows(spec: dict, results: dict) -> list[list[str]]:
    """Per claim (a, b, metric) (``claims``, default each consecutive pair of ``order`` on ``metric``), the
    paper's b > a: does it hold on the means, in how many seeds it holds, and Welch's t-test p-value
    (two-sided; n/a under two seeds a side)."""
    rows = []
    for worse, better, metric in spec["claims"]:
        a, b = (results["variants"][name]["values"] if metric == spec["metric"] else
                results["variants"][name]["also"][metric] for name in (worse, better))
        wins = sum(y > x for x, y in zip(a, b))
        holds = sum(b) / len(b) > sum(a) / len(a)
        p = stats.ttest_ind(b, a, equal_var=False).pvalue if min(len(a), len(b)) >= 2 else math.nan
        claim = f"{better} > {worse}" + ("" if metric == spec["metric"] else f" ({metric})")
        rows.append([claim, "yes" if holds else "no", f"{wins} of {len(a)}",
                     "n/a" if math.isnan(p) else f"{p:.3f}"])
    return rows


def markdown_report(spec: dict, results: dict, variant_table: list[list[str]], claim_table: list[list[str]]) -> str:
    """The two Markdown tables (:func:`variant_rows`, :func:`claim_rows`): variants, then the paper's claims."""
    metric, seeds = spec["metric"], len(results["seeds"])
    columns = variant_columns(spec)
    lines = [f"## {spec['experiment']}: {metric}, {seeds} seed{'s' * (seeds > 1)}", "",
             f"paper: {spec.get('paper', '—')}", "", f"measured on: {'; '.join(results['machines'])}", "",
             f"| {' | '.join(columns)} |",
             "|---|" + "---:|" * (len(columns) - 1)]
    lines += [f"| {' | '.join(row)} |" for row in variant_table]
    lines += ["", "| the paper's direction | holds here | in seeds | Welch p |", "|---|---|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in claim_table]
    return "\n".join(lines)
