"""``seglab experiment``: a paper's ablation rerun — every variant trained and evaluated with the same data,
budget and seeds — and a report of whether the paper's direction holds here.

An experiment is a YAML file (``configs/experiments/NAME.yaml``)::

    experiment: roi-align                 # its name (the file's stem)
    paper: Mask R-CNN (arXiv:1703.06870) Table 2c, mask AP on COCO minival (R50-C4)
    metric: segm_AP                       # a validation metric of the task, higher is better
    base: configs/maskrcnn_resnet18_fpn_shapes.yaml   # a variant may name its own
    train: {iters: 300}                   # overrides every variant shares
    order: [roipool, roialign]            # the paper's direction: each variant better than the one before
    variants:
      roipool: {paper: 26.9, train: {model_options: {roi_pool_type: pool}}}
      roialign: {paper: 30.2}

Runs go to ``OUT/VARIANT/seed_S``; a finished run leaves ``result.json`` there and is reused, so an
interrupted suite continues where it stopped (an unfinished run resumes from its ``last.pt``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from scipy import stats

from .. import report
from ..io import write_json
from .config import load_config, merge_settings, read_yaml_mapping
from .train import train

EXPERIMENTS = Path("configs/experiments")  # where names are looked up, from the current directory
KEYS = {"experiment", "paper", "metric", "base", "train", "order", "variants"}
VARIANT_KEYS = {"paper", "train", "base"}  # a variant's own base config replaces the experiment's


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


def load_experiment(path: Path) -> dict:
    """The experiment at ``path``, checked: one-line ValueErrors naming the file and the key."""
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
    for name, variant in variants.items():
        if name != name.lower() or not isinstance(variant or {}, dict) or set(variant or {}) - VARIANT_KEYS:
            raise ValueError(f"{path}: variant {name!r} must be a lower-case name mapping to "
                             f"{'/'.join(sorted(VARIANT_KEYS))}, got {variant!r}")
        if "base" not in spec and "base" not in (variant or {}):
            raise ValueError(f"{path}: base is missing (for variant {name!r})")
    order = spec.get("order", list(variants))
    if sorted(order) != sorted(variants):
        raise ValueError(f"{path}: order must list the variants {sorted(variants)}, got {order}")
    return {**spec, "order": order, "variants": {name: variant or {} for name, variant in variants.items()}}


def run_config(spec: dict, variant: str, seed: int, out: Path, device: str | None, resume: bool = False):
    """The TrainConfig of one run: the (variant's, else the experiment's) base file ← the shared ``train`` ← the
    variant's, then seed, out, device, resume (``model_options`` and ``data_options`` merge key by key)."""
    settings = spec["variants"][variant]
    overrides = merge_settings(spec.get("train", {}), settings.get("train", {}))
    run = {"seed": seed, "out": str(out), "device": device, "best_metric": spec["metric"], "resume": resume}
    return load_config(settings.get("base", spec.get("base")), {**overrides, **run})


def final_metric(run_dir: Path, metric: str) -> float:
    """The last validation value of ``metric`` in ``run_dir/metrics.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [row[f"val/{metric}"] for row in rows if f"val/{metric}" in row]
    if not values:
        raise ValueError(f"{run_dir}/metrics.jsonl has no validation value of {metric!r}")
    return math.nan if values[-1] is None else float(values[-1])


def run_one(spec: dict, variant: str, seed: int, out: Path, device: str | None) -> dict:
    """Train and evaluate one (variant, seed), or reuse its ``result.json``: {"value", "seconds"}."""
    run_dir = out / variant / f"seed_{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    config = run_config(spec, variant, seed, run_dir, device, resume=(run_dir / "last.pt").is_file())
    started = time.perf_counter()
    train(config)
    result = {"value": final_metric(run_dir, spec["metric"]), "seconds": round(time.perf_counter() - started, 1)}
    write_json(done, result)
    return result


def run_experiment(name: str, seeds: int = 3, seed: int = 0, out: str | Path | None = None,
                   device: str | None = None) -> str:
    """``seglab experiment NAME``: every variant for seeds ``seed`` … ``seed + seeds − 1`` (a seed's variants
    one after another, so a stopped suite has compared as many seeds as it finished); writes
    ``OUT/results.json``, ``OUT/report.md`` and ``OUT/report.html`` (default OUT: runs/experiments/NAME) and
    returns the Markdown report."""
    spec = load_experiment(experiment_path(name))
    if seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds}")
    out = Path(out or Path("runs/experiments") / spec["experiment"])
    variants = {variant: {"values": [], "seconds": []} for variant in spec["order"]}
    for current in range(seed, seed + seeds):
        for variant in spec["order"]:
            result = run_one(spec, variant, current, out, device)
            variants[variant]["values"].append(result["value"])
            variants[variant]["seconds"].append(result["seconds"])
    results = {"experiment": spec["experiment"], "metric": spec["metric"], "higher_is_better": True,
               "seeds": list(range(seed, seed + seeds)), "variants": variants}
    write_json(out / "results.json", results)
    variant_table, claim_table = variant_rows(spec, results), claim_rows(spec, results)
    text = markdown_report(spec, results, variant_table, claim_table)
    (out / "report.md").write_text(text + "\n")
    report.experiment_report(out, f"seglab experiment {spec['experiment']}", spec.get("paper", ""), variant_table,
                             claim_table)
    return text + f"\nwrote {out}/results.json, report.md, report.html"


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


def variant_rows(spec: dict, results: dict) -> list[list[str]]:
    """Per variant: name, the paper's figure, seglab's mean ± std, seconds per run (mean)."""
    rows = []
    for variant in spec["order"]:
        measured = results["variants"][variant]
        paper = spec["variants"][variant].get("paper")
        seconds = sum(measured["seconds"]) / len(measured["seconds"])
        rows.append([variant, "—" if paper is None else f"{paper:g}", mean_std(measured["values"]),
                     f"{seconds:.0f}"])
    return rows


def claim_rows(spec: dict, results: dict) -> list[list[str]]:
    """Per consecutive pair of ``order`` (a, b), the paper's claim b > a: does it hold on the means, in how
    many seeds it holds, and Welch's t-test p-value (two-sided; n/a under two seeds a side)."""
    rows = []
    for worse, better in zip(spec["order"], spec["order"][1:]):
        a, b = results["variants"][worse]["values"], results["variants"][better]["values"]
        wins = sum(y > x for x, y in zip(a, b))
        holds = sum(b) / len(b) > sum(a) / len(a)
        p = stats.ttest_ind(b, a, equal_var=False).pvalue if min(len(a), len(b)) >= 2 else math.nan
        rows.append([f"{better} > {worse}", "yes" if holds else "no", f"{wins} of {len(a)}",
                     "n/a" if math.isnan(p) else f"{p:.3f}"])
    return rows


def markdown_report(spec: dict, results: dict, variant_table: list[list[str]], claim_table: list[list[str]]) -> str:
    """The two Markdown tables (:func:`variant_rows`, :func:`claim_rows`): variants, then the paper's claims."""
    metric, seeds = spec["metric"], len(results["seeds"])
    lines = [f"## {spec['experiment']}: {metric}, {seeds} seed{'s' * (seeds > 1)}", "",
             f"paper: {spec.get('paper', '—')}", "",
             f"| variant | paper | seglab ({metric}, mean ± std over seeds) | seconds per run |",
             "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in variant_table]
    lines += ["", "| the paper's direction | holds here | in seeds | Welch p |", "|---|---|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in claim_table]
    return "\n".join(lines)
