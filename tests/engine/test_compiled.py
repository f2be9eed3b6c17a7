"""``--compile``: torch.compile for train, eval and predict gives the eager results, and falls back to the eager
model with one warning where it cannot compile. The real compiles here are of tiny models (tens of seconds on 2
cores: the suite's only ones besides the benchmark's)."""
import json

import numpy as np
import torch
from PIL import Image

from seglab import cli, models
from seglab.engine.compiled import Compiled
from seglab.engine.config import TrainConfig
from seglab.engine.train import train
from seglab.io import safe_load

TINY = dict(model="fcn32s_vgg16", width_mult=0.0625, batch_norm=False,
            model_options={"padding": "same", "dropout": 0.0},  # inductor draws dropout masks apart
            image_size=16, num_train=2, num_val=2, batch_size=2, iters=2, hflip=False, scale_range=(1.0, 1.0))


def test_a_model_that_cannot_compile_runs_eagerly_after_one_warning(monkeypatch, caplog):
    calls = []

    def failing_compile(model):
        def call(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("backend unavailable\nmore lines")
        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = models.create("fcn8s_vgg16", 3, width_mult=0.0625, padding="same").eval()
    wrapped, image = Compiled(model), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(image)["out"], model(image)["out"])
        wrapped(image)
    assert len(calls) == 1 and wrapped.failure == "RuntimeError: backend unavailable"
    assert caplog.text.count("torch.compile does not support fcn8s_vgg16 here") == 1
    assert wrapped.meta is model.meta and set(wrapped.state_dict()) == {f"eager.{k}" for k in model.state_dict()}


def test_training_with_compile_matches_eager_training(tmp_path):
    # one real compiled training run (forward and backward graphs of a tiny model: tens of seconds on 2 cores)
    def run(name, compile):
        train(TrainConfig(**TINY, val_split=None, compile=compile, out=str(tmp_path / name)))
        return safe_load(tmp_path / name / "last.pt")["model"]

    eager, compiled = run("eager", False), run("compiled", True)
    assert eager.keys() == compiled.keys()  # the checkpoint holds the model's own keys, not the wrapper's
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)


def test_eval_and_predict_with_compile_give_the_eager_results(tmp_path):
    train(TrainConfig(**TINY, val_split=None, out=str(tmp_path / "run")))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    results = {}
    for flags, name in (([], "eager"), (["--compile"], "compiled")):
        cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--split", "val", "--out", str(tmp_path / name),
                  *flags])
        cli.main(["predict", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "a.png"), "--out",
                  str(tmp_path / name / "pred"), *flags])
        results[name] = (json.loads((tmp_path / name / "metrics.json").read_text())["miou"],
                         np.asarray(Image.open(tmp_path / name / "pred" / "a.png")))
    assert results["compiled"][0] == results["eager"][0]
    assert np.array_equal(results["compiled"][1], results["eager"][1])
