"""The training loop's ``--ema``, ``--early-stop`` and ``--logger mlflow``: the EMA against a float64
re-computation of its recurrence, best.pt holding the average, early stopping at the right validation (and
refused without --val-every), and an MLflow run read back with mlflow's own client. Exact resume under kill -9
with both is in test_faults.py."""
import json
import sys
from itertools import count

import pytest
import torch

from seglab import models
from seglab.cli import main
from seglab.engine import semantic
from seglab.engine.config import TrainConfig
from seglab.engine.train import Trainer, train
from seglab.io import safe_load as load_checkpoint


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="fcn8s_vgg16", width_mult=0.0625, batch_norm=True, model_options={"padding": "same"},
                  data="shapes", image_size=32, num_train=8, num_val=4, batch_size=4, iters=3,
                  optimizer="sgd", lr=0.05, schedule="constant", log_every=1, ckpt_every=0,
                  out=str(tmp_path / "run"))
    return TrainConfig(**(values | overrides))


def read_log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ema_weights_equal_a_float64_recomputation_of_the_recurrence(tmp_path):
    decay = 0.8
    trainer = Trainer(tiny_config(tmp_path, ema=decay, val_split=None))
    stepped, update = [], trainer._update_ema

    def record_then_update():  # the weights of each optimiser step, as the EMA sees them
        stepped.append({k: v.detach().double() if v.is_floating_point() else v.detach().clone()
                        for k, v in trainer.model.state_dict().items()})
        update()

    trainer._update_ema = record_then_update
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    assert len(stepped) == 3
    # the model moved (lr 0.05), so the average differs from the last weights
    assert any(not torch.equal(before[k], stepped[-1][k].float()) for k in before if before[k].is_floating_point())
    expected = dict(stepped[0])  # AveragedModel: the first update copies
    for weights in stepped[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] if weights[k].is_floating_point()
                    else weights[k] for k in weights}
    averaged = trainer.ema.module.state_dict()
    differs = 0
    for key, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged[key].double(), value, rtol=1e-6, atol=1e-7, msg=key)
            differs += not torch.allclose(averaged[key].double(), stepped[-1][key])
        else:  # integer buffers (num_batches_tracked) are copied
            assert torch.equal(averaged[key], stepped[-1][key].to(averaged[key].dtype)), key
    assert differs > 0
    assert any("running_mean" in k for k in expected)  # BatchNorm statistics averaged too (use_buffers)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert int(last["ema"]["n_averaged"]) == 3
    for key, value in averaged.items():
        assert torch.equal(last["ema"][f"module.{key}"], value), key
        assert torch.equal(last["model"][key], trainer.model.state_dict()[key]), key


def test_validation_evaluates_the_ema_and_best_pt_holds_it(tmp_path, monkeypatch):
    evaluated = []
    real_evaluate = semantic.evaluate

    def spy(model, *args, **kwargs):
        evaluated.append(model)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(semantic, "evaluate", spy)
    trainer = Trainer(tiny_config(tmp_path, ema=0.5, iters=2, val_every=2))
    trainer.run()
    assert evaluated == [trainer.ema.module]
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["step"] == last["step"] == 2
    for key, value in best["model"].items():
        assert torch.equal(value, last["ema"][f"module.{key}"]), key
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    loaded = models.load(tmp_path / "run")  # the run directory's best.pt: the averaged model
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], trainer.ema.module.eval()(x)["out"])


def scripted_miou(monkeypatch, values):
    """Validation's mIoU (what --best-metric selects by) follows ``values``; the rest is real."""
    real_summary, scripted = semantic.summary, iter(values)
    monkeypatch.setattr(semantic, "summary", lambda result: {**real_summary(result), "miou": next(scripted)})


def test_early_stop_stops_at_the_validation_that_spends_the_patience(tmp_path, monkeypatch, capsys):
    scripted_miou(monkeypatch, [0.1, 0.3, 0.2, 0.3, 0.25, 0.9, 0.9, 0.9])
    config = tiny_config(tmp_path, iters=20, val_every=2, early_stop=3)
    train(config)
    run = tmp_path / "run"
    # best at the 2nd validation (step 4); 0.2, 0.3 (not better), 0.25: three without improvement → step 10
    assert [r["step"] for r in read_log(run) if "val/miou" in r] == [2, 4, 6, 8, 10]
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 10 and last["stale"] == 3 and last["best"] == 0.3
    assert load_checkpoint(run / "best.pt")["step"] == 4
    out = capsys.readouterr().out
    assert "early stop at step 10: miou has not improved for 3 validations (--early-stop 3" in out
    assert (run / "curves.png").is_file() and (run / "eval" / "metrics.json").is_file()
    # resuming a run that stopped early does nothing more
    train(TrainConfig(**(config.to_dict() | {"resume": True, "scale_range": (0.5, 2.0)})))
    assert load_checkpoint(run / "last.pt")["step"] == 10
    assert "already stopped at step 10" in capsys.readouterr().out


def test_early_stop_with_a_constant_metric_stops_after_patience_validations(tmp_path):
    train(tiny_config(tmp_path, iters=20, val_every=1, early_stop=2, lr=0.0, ema=0.9))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 3 and last["stale"] == 2  # the 1st validation sets the best, two more equal it


def test_early_stop_is_refused_without_val_every(tmp_path, capsys):
    with pytest.raises(ValueError, match="early_stop 3 needs --val-every N"):
        tiny_config(tmp_path, early_stop=3)
    with pytest.raises(SystemExit, match="1"):
        main(["train", "--early-stop", "3", "--out", str(tmp_path / "cli")])
    error = capsys.readouterr().err.strip()
    assert error == ("seglab train: error: early_stop 3 needs --val-every N and a validation split "
                     "(the patience is counted in validations)")
    assert not (tmp_path / "cli").exists()
    for bad, message in [(dict(ema=1.0), r"ema must be a number in \[0, 1\), got 1.0"),
                         (dict(logger="wandb"), "logger must be one of tensorboard, mlflow, got 'wandb'"),
                         (dict(early_stop=0, val_every=2), "early_stop must be a positive integer, got 0")]:
        with pytest.raises(ValueError, match=message):
            tiny_config(tmp_path, **bad)


def test_mlflow_run_is_read_back_with_mlflows_own_client(tmp_path):
    from mlflow.tracking import MlflowClient

    train(tiny_config(tmp_path, iters=4, val_every=2, logger="mlflow"))
    run_dir = tmp_path / "run"
    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("seglab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.05" and run.data.params["model"] == "fcn8s_vgg16"
    assert run.data.params["model_options.padding"] == "same" and run.data.params["logger"] == "mlflow"
    log = read_log(run_dir)
    for key in ("loss", "lr", "val/miou", "val/pixel_acc"):
        expected = [(r["step"], r[key]) for r in log if key in r]
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert len(expected) > 0 and history == expected, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "eval"} <= artifacts
    assert "eval/metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert load_checkpoint(run_dir / "last.pt")["mlflow_run"] == run.info.run_id


def test_mlflow_resume_continues_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    train(tiny_config(tmp_path, iters=4, logger="mlflow", val_split=None, ckpt_every=2, stop_at=2))
    train(tiny_config(tmp_path, iters=4, logger="mlflow", val_split=None, ckpt_every=2, resume=True))
    client = MlflowClient((tmp_path / "run" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("seglab").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]


def test_missing_mlflow_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ValueError, match=r"^mlflow \(--logger mlflow\) needs the mlflow package: "
                                         r"pip install 'seglab\[mlflow\]'$"):
        Trainer(tiny_config(tmp_path, logger="mlflow"))


def test_logger_tensorboard_is_the_tensorboard_flag(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, logger="tensorboard", val_split=None, iters=1))
    assert trainer.events is not None
    trainer.events.close()


DDP_WORKER = '''
import sys
import torch
import torch.distributed as dist
from seglab.engine.config import TrainConfig
from seglab.engine.train import Trainer

config = TrainConfig(model="fcn8s_vgg16", width_mult=0.0625, batch_norm=True, model_options={"padding": "same"},
                     data="shapes", image_size=32, num_train=16, num_val=4, batch_size=2, iters=3, ema=0.5,
                     val_every=3, log_every=1, ckpt_every=0, device="cpu", out=sys.argv[1])
trainer = Trainer(config)
trainer.run()
def everywhere(tensors):
    flat = torch.cat([t.detach().flatten().double() for t in tensors])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)
ema_same = everywhere(list(trainer.ema.state_dict().values()))
buffers_same = everywhere([b for b in trainer.model.buffers() if b.is_floating_point()])
if dist.get_rank() == 0:
    torch.save({k: v.clone() for k, v in trainer.ema.state_dict().items()}, sys.argv[1] + "/rank0_ema.pt")
    print("EMA_SAME", ema_same, "MODEL_BUFFERS_SAME", buffers_same)
del trainer  # its DDP reducer holds the process group: freed now, not by the interpreter's teardown
dist.barrier()
dist.destroy_process_group()
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_under_torchrun_the_ema_is_the_same_on_every_process(tmp_path):
    import subprocess

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(run_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # each process's BatchNorm statistics are its own after its last forward (DDP broadcasts them before the
    # next one); the EMA's are rank 0's everywhere
    assert "EMA_SAME True MODEL_BUFFERS_SAME False" in result.stdout
    saved = load_checkpoint(run_dir / "last.pt")["ema"]
    for key, value in torch.load(run_dir / "rank0_ema.pt").items():
        assert torch.equal(saved[key], value), key
