"""``seglab train --tensorboard``: loss, learning rate, validation metrics and overlays as TensorBoard events
in the run directory, read back with TensorBoard's own EventAccumulator."""
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from seglab.engine.config import TrainConfig
from seglab.engine.train import Trainer


def test_tensorboard_events_hold_the_logged_scalars_and_validation_overlays(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason="tensorboard is not installed (pip install 'seglab[tensorboard]')")
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "seglab", "train", "--tensorboard", "--width-mult", "0.0625",
                    "--model-option", "padding=same", "--image-size", "32", "--num-train", "4", "--num-val", "2",
                    "--iters", "3", "--batch-size", "2", "--log-every", "1", "--val-every", "2", "--out", str(run)],
                   check=True, capture_output=True)

    events = accumulator.EventAccumulator(str(run), size_guidance={accumulator.IMAGES: 0, accumulator.SCALARS: 0})
    events.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "val/miou", "val/pixel_acc"):  # the same values as metrics.jsonl, at the same steps
        expected = [(record["step"], record[key]) for record in logged if key in record]
        assert [(e.step, e.value) for e in events.Scalars(key)] == \
            [(step, pytest.approx(value, rel=1e-6)) for step, value in expected], key
    assert [e.step for e in events.Scalars("val/miou")] == [2, 3]  # every 2 steps and at the end

    overlays = events.Images("val/overlays")
    assert [e.step for e in overlays] == [2, 3]
    grid = Image.open(io.BytesIO(overlays[-1].encoded_image_string))
    assert grid.size == (overlays[-1].width, overlays[-1].height) == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now fails
    config = TrainConfig(tensorboard=True, width_mult=0.0625, image_size=32, num_train=2, val_split=None,
                         out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"needs the tensorboard package: pip install 'seglab\[tensorboard\]'"):
        Trainer(config)
