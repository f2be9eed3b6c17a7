"""seglab experiment: a two-variant ablation of a tiny model run end to end from the CLI (results.json's shape,
the Markdown and HTML reports), finished runs reused, the claims' statistics against a hand computation, and
bad experiment files refused in one line."""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_run import seglab
from scipy import stats

from seglab.crf import PRESETS
from seglab.engine import experiment as experiment_module
from seglab.engine.benchmark import machine_line
from seglab.engine.experiment import claim_rows, load_experiment, mean_std, run_experiment
from seglab.io import safe_load as load_checkpoint

LECTURE = ["fcn-skips", "crf", "deeplab-fov", "context-module", "gcn-kernel", "output-stride", "decoder", "roi-align",
           "fcis-joint", "maskx-transfer"]  # the lecture's experiments (issue 19), in the lecture's order
FOLLOW_UPS = ["fcis-vs-maskrcnn", "gcn-kernel-long", "gcn-br-long"]  # shipped, run by name only
# CI's budget. In float32: under CPU bfloat16 autocast, VGG16's fc6 (7×7) on 64 px images (a 2×2 pool5) gets a
# non-finite weight gradient in some runs of the same seed (oneDNN; not at 96 or 128 px, nor in float32).
SMOKE = {"iters": 1, "num_train": 2, "num_val": 4, "batch_size": 2, "image_size": 64, "warmup": 0, "amp": False}
TINY = {"model": "fcn32s_vgg16", "width_mult": 0.0625, "model_options": {"padding": "same"}, "data": "shapes",
        "image_size": 32, "num_train": 2, "num_val": 2, "batch_size": 2, "iters": 1, "val_every": 0}


def write_experiment(tmp_path, **changes):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    spec = {"experiment": "tiny-lr", "paper": "none, a test", "metric": "miou", "base": str(tmp_path / "base.yaml"),
            "train": {"iters": 2}, "order": ["slow", "fast"],
            "variants": {"slow": {"paper": 1.0, "train": {"lr": 1e-4}}, "fast": {"paper": 2.0, "train": {"lr": 1e-2}}},
            **changes}
    path = tmp_path / "tiny-lr.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_experiment_runs_every_variant_per_seed_and_writes_results_and_reports(tmp_path):
    path = write_experiment(tmp_path)
    out = seglab("experiment", path, "--seeds", 2, "--seed", 3, "--out", tmp_path / "out").stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {"experiment", "metric", "higher_is_better", "seeds", "variants", "machines"}
    assert results["machines"] == [machine_line("cpu")]  # the CPU's name and instruction set, cores, torch
    assert results["experiment"] == "tiny-lr" and results["metric"] == "miou" and results["seeds"] == [3, 4]
    for variant in ("slow", "fast"):
        measured = results["variants"][variant]
        assert len(measured["values"]) == len(measured["seconds"]) == 2
        assert all(0 <= v <= 1 for v in measured["values"]) and all(s > 0 for s in measured["seconds"])
        for seed in (3, 4):
            run = tmp_path / "out" / variant / f"seed_{seed}"
            assert (run / "last.pt").is_file() and json.loads((run / "result.json").read_text())["value"] >= 0
            assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
    assert yaml.safe_load((tmp_path / "out" / "slow" / "seed_3" / "config.yaml").read_text())["lr"] == 1e-4
    assert yaml.safe_load((tmp_path / "out" / "fast" / "seed_3" / "config.yaml").read_text())["iters"] == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| fast > slow |" in report and "| slow | 1 |" in report and report in out + "\n"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "fast &gt; slow" in html and "none, a test" in html
    assert f"measured on: {machine_line('cpu')}" in report and f"measured on: {machine_line('cpu')}" in html


def test_finished_runs_are_reused_and_only_missing_ones_trained(tmp_path, monkeypatch):
    path, out = write_experiment(tmp_path), tmp_path / "out"
    run_experiment(str(path), seeds=1, out=out)
    before = json.loads((out / "results.json").read_text())
    monkeypatch.setattr(experiment_module, "train", lambda config, **_: pytest.fail("a finished run was retrained"))
    run_experiment(str(path), seeds=1, out=out)
    assert json.loads((out / "results.json").read_text()) == before

    trained = []

    def fake_train(config, stop_raises):
        trained.append((config.out, config.seed, config.resume))
        (out / "fast" / "seed_1" / "metrics.jsonl").write_text('{"step": 2, "val/miou": 0.5}\n')

    (out / "slow" / "seed_1").mkdir(parents=True)
    settings = experiment_module.run_settings(load_experiment(path), "slow", 1, out)
    (out / "slow" / "seed_1" / "result.json").write_text(json.dumps({"value": 0.25, "seconds": 1.0, "also": {},
                                                                     "settings": settings}))
    (out / "fast" / "seed_1").mkdir(parents=True)
    (out / "fast" / "seed_1" / "last.pt").write_bytes(b"an interrupted run")
    fast = experiment_module.run_settings(load_experiment(path), "fast", 1, out)
    (out / "fast" / "seed_1" / "settings.json").write_text(json.dumps(fast))
    monkeypatch.setattr(experiment_module, "train", fake_train)
    results = json.loads(run_experiment(str(path), seeds=1, seed=1, out=out) and (out / "results.json").read_text())
    assert trained == [(str(out / "fast" / "seed_1"), 1, True)]  # resumed from its last.pt
    assert results["variants"]["slow"]["values"] == [0.25] and results["variants"]["fast"]["values"] == [0.5]

    changed = write_experiment(tmp_path, train={"iters": 3})  # a finished run is not reused under other settings
    with pytest.raises(ValueError, match=r"slow/seed_1 holds a finished run of other settings \(iters\): remove"):
        run_experiment(str(changed), seeds=1, seed=1, out=out)
    (out / "slow" / "seed_2").mkdir(parents=True)  # nor is a started one resumed under them
    (out / "slow" / "seed_2" / "last.pt").write_bytes(b"an interrupted run")
    (out / "slow" / "seed_2" / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"slow/seed_2 holds a started run of other settings \(iters, seed\)"):
        run_experiment(str(changed), seeds=1, seed=2, out=out)


def test_claims_count_seeds_and_take_welchs_t_test():
    """b > a holds on the means, in 2 of 3 seeds; the p-value is Welch's: t and the Welch–Satterthwaite degrees
    of freedom by hand, two-sided."""
    spec = {"order": ["a", "b"], "metric": "miou", "claims": [("a", "b", "miou")]}
    a, b = [0.10, 0.20, 0.30], [0.20, 0.15, 0.50]
    results = {"variants": {"a": {"values": a}, "b": {"values": b}}}
    (claim, holds, seeds, p), = claim_rows(spec, results)
    va, vb = (sum((x - sum(v) / 3) ** 2 for x in v) / 2 for v in (a, b))
    t = (sum(b) / 3 - sum(a) / 3) / math.sqrt(va / 3 + vb / 3)
    dof = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    assert (claim, holds, seeds) == ("b > a", "yes", "2 of 3")
    assert float(p) == pytest.approx(2 * stats.t.sf(abs(t), dof), abs=5e-4)
    one = claim_rows(spec, {"variants": {"a": {"values": [0.3]}, "b": {"values": [0.2]}}})
    assert one == [["b > a", "no", "0 of 1", "n/a"]]
    assert (mean_std(a), mean_std([0.5]), mean_std([math.nan])) == ("20.0 ± 10.0", "50.0", "n/a")  # points


@pytest.mark.parametrize("change, message", [
    ({"variants": {"only": {}}}, "at least two"),
    ({"order": ["slow"]}, "order must list"),
    ({"variants": {"Slow": {}, "fast": {}}, "order": ["Slow", "fast"]}, "lower-case"),
    ({"colour": 1}, "unknown keys"),
    ({"base": None}, "base is missing"),
])
def test_bad_experiment_files_are_refused_naming_the_file(tmp_path, change, message):
    path = write_experiment(tmp_path, **change)
    if change.get("base", "") is None:  # the key left out entirely
        spec = yaml.safe_load(path.read_text())
        del spec["base"]
        path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message) as error:
        load_experiment(path)
    assert str(path) in str(error.value)
    bad = seglab("experiment", "no-such-experiment", check=False)
    assert bad.returncode == 1 and "no experiment 'no-such-experiment'" in bad.stderr


def test_list_names_the_shipped_experiments_and_their_runs_configure():
    """Every shipped experiment loads and each of its variants' run configs builds (the model options exist)."""
    listed = seglab("experiment", "--list").stdout.split()
    assert set(LECTURE) | set(FOLLOW_UPS) <= set(listed)
    assert experiment_module.suite() == sorted(LECTURE)  # what seglab experiment all runs
    for name in listed:
        spec = load_experiment(experiment_module.experiment_path(name))
        for variant in spec["order"]:
            if "from" not in spec["variants"][variant]:  # an evaluation of another variant's run trains nothing
                experiment_module.run_config(spec, variant, 0, Path("runs/x") / variant / "seed_0", None)
    roi = load_experiment(experiment_module.experiment_path("roi-align"))
    assert experiment_module.run_config(roi, "roipool", 0, "x", None).model_options["roi_pool_type"] == "pool"
    assert experiment_module.run_config(roi, "roipool", 0, "x", None).val_split == "val"
    assert experiment_module.run_config(roi, "roipool", 0, "x", None, overrides={"val_split": None}).val_split is None
    assert experiment_module.run_config(roi, "roipool", 0, "x", "cpu").device == "cpu"
    fair = load_experiment(experiment_module.experiment_path("fcis-vs-maskrcnn"))
    assert [experiment_module.run_config(fair, v, 0, "x", None).model for v in fair["order"]] == \
        ["fcis_resnet18", "maskrcnn_resnet18_fpn"]


@pytest.mark.parametrize("name", [*LECTURE, *FOLLOW_UPS])
def test_every_shipped_experiment_runs_for_an_iteration_and_reports(name, tmp_path):
    """CI's run of each experiment: one seed, one iteration, tiny data (``--override``); every variant gets a
    value in range, and results.json, both reports and the figure are written."""
    overrides = [item for key, value in SMOKE.items() for item in ("--override", f"{key}={value}")]
    seglab("experiment", name, "--seeds", 1, "--out", tmp_path, *overrides)
    spec = load_experiment(experiment_module.experiment_path(name))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["experiment"] == name and list(results["variants"]) == spec["order"]
    for variant, measured in results["variants"].items():
        assert len(measured["values"]) == 1 and (math.isnan(measured["values"][0]) or 0 <= measured["values"][0] <= 1)
        assert set(measured["also"]) == set(spec.get("also", []))
    figure = (tmp_path / "figure.png").read_bytes()
    assert figure.startswith(b"\x89PNG") and (tmp_path / "report.html").is_file()
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {better} > {worse}{'' if metric == spec['metric'] else f' ({metric})'} |" in report
               for worse, better, metric in spec["claims"])


def test_staged_and_evaluation_only_variants(tmp_path, monkeypatch):
    """init_from starts a variant from another's final weights of the same seed; from evaluates another's run
    without training (here at another output stride, against a hand evaluation of that model); also reports
    more metrics; claims pick the pairs tested."""
    base = {**TINY, "model": "deeplabv3_resnet50", "model_options": {"output_stride": 16, "extra_conv": False},
            "num_val": 3, "image_size": 48}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"experiment": "staged", "metric": "miou", "also": ["pixel_acc"], "base": str(tmp_path / "base.yaml"),
            "order": ["first", "second", "os8"], "claims": [["first", "os8"]],
            "variants": {"first": {}, "second": {"init_from": "first"},
                         "os8": {"from": "first", "eval": {"model_options": {"output_stride": 8}}}}}
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_experiment(str(path), seeds=1, seed=2, out=tmp_path / "out")
    out = tmp_path / "out"
    second = yaml.safe_load((out / "second" / "seed_2" / "config.yaml").read_text())
    assert second["init_from"] == str(out / "first" / "seed_2" / "last.pt")
    assert not (out / "os8" / "seed_2" / "last.pt").exists()  # nothing trained for it
    results = json.loads((out / "results.json").read_text())
    from seglab import data, models
    from seglab.metrics import SegmentationMetrics
    model = models.load(out / "first" / "seed_2" / "last.pt", output_stride=8).eval()
    assert model.classifier[0].convs[1][0].dilation == (12, 12)  # ASPP's rates doubled with the output stride
    val = data.build_dataset("shapes", "val", num_images=3, image_size=48, seed=2)
    metrics, mean, std = SegmentationMetrics(model.meta["num_classes"]), model.meta["mean"], model.meta["std"]
    for image, target in val:
        x = (image[None].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        with torch.no_grad():
            metrics.update(model(x)["out"].argmax(1), target["mask"][None])
    assert results["variants"]["os8"]["values"][0] == pytest.approx(metrics.compute()["miou"], abs=1e-9)
    assert results["variants"]["os8"]["also"]["pixel_acc"][0] == pytest.approx(metrics.compute()["pixel_acc"])
    report = (out / "report.md").read_text()
    assert "| os8 > first |" in report and "second > first" not in report and "pixel_acc (mean ± std)" in report

    first = out / "first" / "seed_2" / "result.json"  # the run they come from, rerun: neither is reused
    first.write_text(json.dumps({**json.loads(first.read_text()), "value": 0.123}))
    with pytest.raises(ValueError, match="seed_2 was made from a run of 'first' that has been rerun since"):
        run_experiment(str(path), seeds=1, seed=2, out=out)


def test_jobs_run_at_once_each_after_the_run_it_depends_on(tmp_path):
    """--jobs 2 over two experiments at once (``all``'s path): staged and evaluation-only variants start after
    the run they need has finished, each run's output goes to its log.txt, both reports are written, and a
    rerun with one job reuses every run."""
    path = write_experiment(tmp_path, order=["slow", "fast", "staged", "scored"],
                            claims=[["slow", "fast"]], eval={"model_options": {}},
                            variants={"slow": {"train": {"lr": 1e-4}}, "fast": {"train": {"lr": 1e-2}},
                                      "staged": {"init_from": "fast"}, "scored": {"from": "staged"}})
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("tiny-lr", "other"))
    outs = {str(path): tmp_path / "a", str(other): tmp_path / "b"}
    reports = experiment_module.run_experiments(outs, seeds=2, jobs=2)
    assert [report.splitlines()[0] for report in reports] == ["## tiny-lr: miou, 2 seeds", "## other: miou, 2 seeds"]
    for out in outs.values():
        for seed in (0, 1):
            runs = {variant: out / variant / f"seed_{seed}" for variant in ("slow", "fast", "staged", "scored")}
            assert "train" in (runs["fast"] / "log.txt").read_text()  # the trainer's progress bar
            fast_done, staged_started = (runs["fast"] / "result.json").stat().st_mtime, (
                runs["staged"] / "settings.json").stat().st_mtime
            assert fast_done <= staged_started
            assert (runs["staged"] / "result.json").stat().st_mtime <= (runs["scored"] / "result.json").stat().st_mtime
            assert not (runs["scored"] / "last.pt").exists()
    before = {out: json.loads((out / "results.json").read_text()) for out in outs.values()}
    assert before[tmp_path / "a"]["variants"]["staged"]["values"] == before[tmp_path / "a"]["variants"]["scored"]["values"]
    seglab("experiment", path, "--seeds", 2, "--out", tmp_path / "a")  # one job: nothing trained, same results
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == before[tmp_path / "a"]


def test_several_experiments_in_one_call_go_under_out_by_name(tmp_path):
    path = write_experiment(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("tiny-lr", "other"))
    printed = seglab("experiment", path, other, "--seeds", 1, "--out", tmp_path / "out").stdout
    for name in ("tiny-lr", "other"):
        assert json.loads((tmp_path / "out" / name / "results.json").read_text())["experiment"] == name
        assert (tmp_path / "out" / name / "report.md").read_text() in printed + "\n"


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="--jobs must be a positive integer, got 0"):
        run_experiment(str(write_experiment(tmp_path)), seeds=1, out=tmp_path / "out", jobs=0)


@pytest.mark.parametrize("variants, extra, message", [
    ({"a": {"from": "b", "train": {"lr": 1.0}}, "b": {}}, {}, "trains nothing"),
    ({"a": {"init_from": "c"}, "b": {}}, {}, "init_from 'c' must be another variant that trains"),
    ({"a": {"from": "b"}, "b": {"from": "a"}}, {}, "from 'b' must be another variant that trains"),
    ({"a": {"init_from": "b"}, "b": {"init_from": "a"}}, {}, "circle: a -> b -> a"),
    ({"a": {"eval": {"colour": 1}}, "b": {}}, {}, "unknown eval keys"),
    ({"a": {"eval": {"held_out": 50}}, "b": {}}, {}, "held_out is the fraction"),
    ({"a": {"eval": {"crf": {"preset": "nope"}}}, "b": {}}, {}, "eval.crf must map dense_crf keywords"),
    ({"a": {"eval": {"crf": {"tune": {"bilateral_sxy": [5]}}}}, "b": {}}, {}, "tune needs eval.held_out"),
    ({"a": {"eval": {"boundary_band": 3}}, "b": {}}, {"also": ["band_miou"]}, "'b' has none"),
    ({"a": {}, "b": {}}, {"claims": [["a", "b", "fwiou"]]}, "optionally with a metric"),
])
def test_bad_variant_links_and_evaluations_are_refused(tmp_path, variants, extra, message):
    path = write_experiment(tmp_path, variants=variants, order=list(variants), **extra)
    with pytest.raises(ValueError, match=message) as error:
        load_experiment(path)
    assert str(path) in str(error.value)


def test_crf_is_tuned_on_held_out_images_and_both_variants_scored_on_the_rest(tmp_path):
    """held_out 0.5 of 4 val images: the CRF's grid is searched on the first 2, and both the plain and the CRF
    variant are scored on the last 2, each equal to a hand evaluation with the chosen setting."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "num_val": 4}))
    crf = {"preset": "deeplab", "tune": {"bilateral_sxy": [5.0, 50.0]}, "iterations": 2}
    spec = {"experiment": "crf-tiny", "metric": "miou", "base": str(tmp_path / "base.yaml"), "order": ["plain", "crf"],
            "variants": {"plain": {"eval": {"held_out": 0.5}},
                         "crf": {"from": "plain", "eval": {"held_out": 0.5, "crf": crf}}}}
    path = tmp_path / "crf-tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_experiment(str(path), seeds=1, out=tmp_path / "out")
    chosen = json.loads((tmp_path / "out" / "crf" / "seed_0" / "crf.json").read_text())
    assert chosen["bilateral_sxy"] in (5.0, 50.0) and chosen["iterations"] == 2
    assert {k: v for k, v in chosen.items() if k not in ("bilateral_sxy", "iterations")} == \
        {k: v for k, v in PRESETS["deeplab"].items() if k != "bilateral_sxy"}
    from seglab import data, models
    from seglab.engine.inference import predict_labels
    from seglab.metrics import SegmentationMetrics
    model = models.load(tmp_path / "out" / "plain" / "seed_0" / "last.pt")
    scored = [data.build_dataset("shapes", "val", num_images=4, image_size=32, seed=0)[i] for i in (2, 3)]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["variants"]
    for variant, settings in (("plain", None), ("crf", chosen)):
        metrics = SegmentationMetrics(model.meta["num_classes"])
        for image, target in scored:
            metrics.update(predict_labels(model, image[None], model.meta["mean"], model.meta["std"], crf=settings),
                           target["mask"][None])
        assert results[variant]["values"][0] == pytest.approx(metrics.compute()["miou"], abs=1e-9)
    spec["variants"]["plain"]["eval"]["held_out"] = 0.1
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="held_out 0.1: must hold out a part of the 4 validation images, not 0"):
        run_experiment(str(path), seeds=1, out=tmp_path / "other")


def test_list_outside_the_repository_says_where_experiments_are_looked_up(tmp_path):
    result = subprocess.run([sys.executable, "-m", "seglab", "experiment", "--list"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 1 and "no experiments in configs/experiments here" in result.stderr


def state_and_parent(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid from /proc (None: no such process)."""
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return state, int(parent)


def alive(pid: int) -> bool:
    found = state_and_parent(pid)
    return found is not None and found[0] != "Z"


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    return {int(p.name) for p in Path("/proc").glob("[0-9]*") if alive(int(p.name))
            and (state_and_parent(int(p.name)) or ("", 0))[1] == pid}


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sigterm_stops_the_running_runs_at_a_checkpoint_and_the_same_command_continues(tmp_path, jobs):
    """SIGTERM to ``seglab experiment`` (its workers' parent with --jobs 2): every run in training saves last.pt and
    stops, none is recorded as finished, no worker outlives the command (exit 143), and the same command resumes."""
    # The workers start a few seconds apart: a tiny run must not finish all its iterations before the other
    # has logged its first (150 did once in CI), or nothing is left to stop mid-training.
    iters = 600
    path = write_experiment(tmp_path, train={"iters": iters, "log_every": 1})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "seglab", "experiment", str(path), "--seeds", "1", "--out", str(out),
               "--jobs", str(jobs)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = ["slow", "fast"][:jobs]  # the runs that train at once
    logs = [out / variant / "seed_0" / "metrics.jsonl" for variant in started]
    deadline = time.monotonic() + 240
    while not all(log.is_file() and log.read_text().strip() for log in logs):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    workers = children_of(process.pid)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM, last.pt saved; the same command continues from there" in stderr
    for variant in started:
        run = out / variant / "seed_0"
        assert not (run / "result.json").exists()
        assert 1 <= load_checkpoint(run / "last.pt")["step"] < iters
    assert not (out / "results.json").exists()
    deadline = time.monotonic() + 30
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, workers)), "a worker outlived the command"
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert all(len(results["variants"][v]["values"]) == 1 for v in ("slow", "fast"))
    assert all(load_checkpoint(out / v / "seed_0" / "last.pt")["step"] == iters for v in ("slow", "fast"))
