import json
import math

from pathlib import Path

import pytest
import torch

from seglab import losses
from seglab.io import safe_load as load_checkpoint
from seglab.engine.config import TrainConfig
from seglab.engine import train as train_module
from seglab.engine.train import Trainer, train


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="fcn8s_vgg16", width_mult=0.0625, batch_norm=True, model_options={"padding": "same"},
                  data="shapes", image_size=64, num_train=12, num_val=4, batch_size=4, iters=6,
                  optimizer="sgd", lr=0.01, log_every=1, ckpt_every=3, out=str(tmp_path / "run"))
    return TrainConfig(**(values | overrides))


def read_log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_when_fitting_a_few_images(tmp_path):
    config = tiny_config(tmp_path, num_train=8, iters=40, batch_size=4, optimizer="adamw", lr=3e-3,
                         scale_range=(1.0, 1.0), hflip=False, model_options={"padding": "same", "dropout": 0.0},
                         val_split=None)
    train(config)
    losses = [r["loss"] for r in read_log(tmp_path / "run") if "loss" in r]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_resume_gives_the_same_weights_as_training_straight(tmp_path):
    straight = tiny_config(tmp_path, out=str(tmp_path / "straight"), iters=6, ckpt_every=3, val_split=None)
    train(straight)
    interrupted = tiny_config(tmp_path, out=str(tmp_path / "resumed"), iters=6, ckpt_every=3, val_split=None,
                              stop_at=3)
    train(interrupted)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 3
    train(tiny_config(tmp_path, out=str(tmp_path / "resumed"), iters=6, ckpt_every=3, val_split=None, resume=True))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = losses.cross_entropy

    def loss_turning_nan(outputs, masks, **options):
        calls["n"] += 1
        loss = real_loss(outputs, masks, **options)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(losses, "cross_entropy", loss_turning_nan)
    config = tiny_config(tmp_path, iters=8, ckpt_every=2, val_split=None)
    with pytest.raises(FloatingPointError, match="loss nan at step 5.*last.pt.*--skip-nonfinite"):
        train(config)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def poison_gradient_at(monkeypatch, call: int) -> None:
    """Make the first parameter's gradient infinite in the ``call``-th backward pass of a Trainer."""
    real_init = Trainer.__init__
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == call else grad

    def init(self, config):
        real_init(self, config)
        next(self.model.parameters()).register_hook(poison)

    monkeypatch.setattr(Trainer, "__init__", init)


def test_nonfinite_gradient_stops_training_and_no_nan_checkpoint_is_written(tmp_path, monkeypatch):
    poison_gradient_at(monkeypatch, 3)
    with pytest.raises(FloatingPointError, match="non-finite gradient at step 3"):
        train(tiny_config(tmp_path, iters=8, ckpt_every=2, val_split=None))
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] == 2


def test_skip_nonfinite_skips_the_step_and_keeps_training(tmp_path, monkeypatch):
    poison_gradient_at(monkeypatch, 3)
    train(tiny_config(tmp_path, iters=6, ckpt_every=2, val_split=None, skip_nonfinite=True))
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] == 6 and checkpoint["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(s["momentum_buffer"]).all() for s in checkpoint["optimizer"]["state"].values())


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    common = dict(val_split=None, iters=3, ckpt_every=0, model_options={"padding": "same", "dropout": 0.0},
                  batch_norm=False, num_train=16)
    train(tiny_config(tmp_path, out=str(tmp_path / "full"), batch_size=8, **common))
    train(tiny_config(tmp_path, out=str(tmp_path / "accumulated"), batch_size=4, accumulate=2, **common))
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "accumulated" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_amp_runs_in_bfloat16_on_a_cpu_with_native_kernels_else_in_float32_saying_so(tmp_path, monkeypatch, capsys,
                                                                                      native):
    monkeypatch.setattr(train_module, "autocast_is_native", lambda device: native)
    dtypes = set()
    forward = torch.nn.Conv2d.forward
    monkeypatch.setattr(torch.nn.Conv2d, "forward", lambda self, x: dtypes.add((y := forward(self, x)).dtype) or y)
    train(tiny_config(tmp_path, iters=2, ckpt_every=0, val_split=None, amp=True))
    assert dtypes == ({torch.bfloat16} if native else {torch.float32})
    assert ("--amp ignored, training in float32" in capsys.readouterr().out) is not native
    log = read_log(tmp_path / "run")
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_validation_writes_best_checkpoint_report_and_curves(tmp_path):
    result = train(tiny_config(tmp_path, iters=4, val_every=2))
    run = tmp_path / "run"
    for name in ["config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png",
                 "eval/metrics.json", "eval/overlays.png", "eval/per_class_iou.png"]:
        assert (run / name).is_file(), name
    assert [r["step"] for r in read_log(run) if "val/miou" in r] == [2, 4]
    assert 0.0 <= result["miou"] <= 1.0
    best = load_checkpoint(run / "best.pt")
    assert best["meta"]["classes"][0] == "background" and best["meta"]["model"] == "fcn8s_vgg16"


def test_bad_dataset_is_reported_before_training_starts(tmp_path):
    from PIL import Image

    from seglab.data import export_shapes

    root = export_shapes(tmp_path / "voc", "voc", {"train": 4, "val": 2}, image_size=48)
    bad = sorted((root / "SegmentationClass").glob("*train*.png"))[1]
    Image.new("P", (30, 20)).save(bad)  # wrong size
    config = tiny_config(tmp_path, data="voc", data_root=str(root), batch_size=2,
                         num_train=None, num_val=None)
    with pytest.raises(ValueError, match=bad.name):
        Trainer(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_split_of_masks_entirely_ignored_is_refused_and_unlabelled_images_are_counted(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from seglab.data import export_shapes

    root = export_shapes(tmp_path / "voc", "voc", {"train": 4, "val": 2}, image_size=48)
    masks = sorted((root / "SegmentationClass").glob("*train*.png"))
    for path in masks[:1]:
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(path)
    config = tiny_config(tmp_path, data="voc", data_root=str(root), batch_size=2, num_train=None, num_val=None)
    Trainer(config)
    assert "1 of 4 images of split 'train' have no labelled pixel" in capsys.readouterr().out
    stored = (Path(config.out) / "data_check_train.txt").read_text()  # the check is kept with the run
    assert "1 of 4 images of split 'train' have no labelled pixel" in stored
    for path in masks:
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(path)
    with pytest.raises(ValueError, match="every mask pixel of split 'train' is 255"):
        Trainer(config)


def test_load_returns_the_trained_model_with_its_metadata(tmp_path):
    from seglab import models

    trainer = Trainer(tiny_config(tmp_path, iters=2, val_split=None))
    trainer.run()
    loaded = models.load(tmp_path / "run")
    assert not loaded.training and loaded.meta["num_classes"] == 5 and len(loaded.meta["palette"]) == 256
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], trainer.model.eval()(x)["out"])
