"""seglab experiment: a two-variant ablation of a tiny model run end to end from the CLI (results.json's shape,
the Markdown and HTML reports), finished runs reused, the claims' statistics against a hand computation, and
bad experiment files refused in one line."""
import json
import math

import pytest
import yaml
from cli_run import seglab
from scipy import stats

from seglab.engine import experiment as experiment_module
from seglab.engine.experiment import claim_rows, load_experiment, mean_std, run_experiment

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
    assert set(results) == {"experiment", "metric", "higher_is_better", "seeds", "variants"}
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


def test_finished_runs_are_reused_and_only_missing_ones_trained(tmp_path, monkeypatch):
    path, out = write_experiment(tmp_path), tmp_path / "out"
    run_experiment(str(path), seeds=1, out=out)
    before = json.loads((out / "results.json").read_text())
    monkeypatch.setattr(experiment_module, "train", lambda config: pytest.fail("a finished run was retrained"))
    run_experiment(str(path), seeds=1, out=out)
    assert json.loads((out / "results.json").read_text()) == before

    trained = []

    def fake_train(config):
        trained.append((config.out, config.seed, config.resume))
        (out / "fast" / "seed_1" / "metrics.jsonl").write_text('{"step": 2, "val/miou": 0.5}\n')

    (out / "slow" / "seed_1").mkdir(parents=True)
    (out / "slow" / "seed_1" / "result.json").write_text('{"value": 0.25, "seconds": 1.0}')
    (out / "fast" / "seed_1").mkdir(parents=True)
    (out / "fast" / "seed_1" / "last.pt").write_bytes(b"an interrupted run")
    monkeypatch.setattr(experiment_module, "train", fake_train)
    results = json.loads(run_experiment(str(path), seeds=1, seed=1, out=out) and (out / "results.json").read_text())
    assert trained == [(str(out / "fast" / "seed_1"), 1, True)]  # resumed from its last.pt
    assert results["variants"]["slow"]["values"] == [0.25] and results["variants"]["fast"]["values"] == [0.5]


def test_claims_count_seeds_and_take_welchs_t_test():
    """b > a holds on the means, in 2 of 3 seeds; the p-value is Welch's: t and the Welch–Satterthwaite degrees
    of freedom by hand, two-sided."""
    spec = {"order": ["a", "b"]}
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
    assert {"roi-align", "fcis-vs-maskrcnn"} <= set(listed)
    for name in listed:
        spec = load_experiment(experiment_module.experiment_path(name))
        for variant in spec["order"]:
            config = experiment_module.run_config(spec, variant, 0, "runs/x", None)
            assert config.best_metric == spec["metric"]
    roi = load_experiment(experiment_module.experiment_path("roi-align"))
    assert experiment_module.run_config(roi, "roipool", 0, "x", None).model_options["roi_pool_type"] == "pool"
    fair = load_experiment(experiment_module.experiment_path("fcis-vs-maskrcnn"))
    assert [experiment_module.run_config(fair, v, 0, "x", None).model for v in fair["order"]] == \
        ["fcis_resnet18", "maskrcnn_resnet18_fpn"]
