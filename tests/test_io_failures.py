"""Issue 21 at the command line: a truncated, empty or foreign checkpoint, a device this machine lacks and an
output directory that cannot be written each end in one line naming the file or the value (exit code 1), and
nothing already written is lost."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.cli import main
from seglab.engine.config import TrainConfig
from seglab.engine.train import train

TRAIN_FLAGS = ["--model", "fcn8s_vgg16", "--width-mult", "0.0625", "--data", "shapes", "--image-size", "32",
               "--num-train", "4", "--num-val", "2", "--iters", "1", "--batch-size", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory trained for one step on tiny Shapes (``last.pt``, ``best.pt``), and an image to predict."""
    root = tmp_path_factory.mktemp("trained")
    train(TrainConfig(model="fcn8s_vgg16", width_mult=0.0625, data="shapes", image_size=32, num_train=4, num_val=2,
                      iters=1, batch_size=2, out=str(root / "run")))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 36, 3), dtype=np.uint8)).save(root / "photo.png")
    return root / "run"


def fails(capsys, *argv) -> str:
    """The one line that ``seglab ARGV`` prints on stderr as it exits with code 1."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(params=["empty", "truncated"])
def broken(request, run, tmp_path):
    """A copy of the run's ``last.pt``: empty, or cut to its first 60%; and its expected message."""
    data = (run / "last.pt").read_bytes()
    path = tmp_path / "last.pt"
    path.write_bytes(b"" if request.param == "empty" else data[:len(data) * 6 // 10])
    expected = f"{path} is empty (0 bytes)" if request.param == "empty" else f"{path} is truncated or corrupt ("
    return path, expected


@pytest.mark.parametrize("command", ["eval", "predict", "export", "weights"])
def test_an_empty_or_truncated_checkpoint_is_one_line_at_every_entry_point(command, broken, run, tmp_path, capsys):
    path, expected = broken
    argv = {"eval": ["eval", "--checkpoint", path, "--out", tmp_path / "eval"],
            "predict": ["predict", "--checkpoint", path, run.parent / "photo.png", "--out", tmp_path / "pred"],
            "export": ["export", "--checkpoint", path, "--out", tmp_path / "model.onnx"],
            "weights": ["predict", "--model", "fcn8s_vgg16", "--num-classes", "5", "--model-option",
                        "width_mult=0.0625", "--weights", path, run.parent / "photo.png", "--out", tmp_path / "pred"],
            }[command]
    error = fails(capsys, *argv)
    assert error.startswith(f"seglab {argv[0]}: error: {expected}")
    assert "zip archive" in error or "0 bytes" in error


def test_resume_from_an_empty_or_truncated_last_pt_is_one_line_and_keeps_the_file(broken, run, tmp_path, capsys):
    path, expected = broken
    shutil.copytree(run, tmp_path / "resumed")
    (tmp_path / "resumed" / "last.pt").write_bytes(path.read_bytes())
    kept = (tmp_path / "resumed" / "last.pt").read_bytes()
    error = fails(capsys, "train", *TRAIN_FLAGS, "--out", tmp_path / "resumed", "--resume")
    resumed = expected.replace(str(path), str(tmp_path / "resumed" / "last.pt"))
    assert error.startswith(f"seglab train: error: {resumed}")
    assert (tmp_path / "resumed" / "last.pt").read_bytes() == kept


def test_a_checkpoint_holding_code_is_refused_without_advising_weights_only_false(run, tmp_path, capsys):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"meta": {}, "model": RunsCode()}, tmp_path / "evil.pt")
    error = fails(capsys, "eval", "--checkpoint", tmp_path / "evil.pt", "--out", tmp_path / "eval")
    assert error.startswith(f"seglab eval: error: refusing to load {tmp_path / 'evil.pt'}: it holds objects other "
                            "than tensors and plain Python types (posix.system)")
    assert "weights_only" not in error and "succeed" not in error and not (tmp_path / "ran").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", ["eval", "predict", "export", "eval-model", "benchmark"])
@pytest.mark.parametrize("device, message", [
    ("cuda", "--device cuda: no CUDA device is available here"),
    ("cuda:1", "--device cuda:1: no CUDA device is available here"),
    ("gpu", "--device gpu: not a device; use one of auto, cpu, cuda, cuda:N, mps")])
def test_a_device_this_machine_lacks_or_a_misspelt_one_is_one_line(command, device, message, run, tmp_path, capsys):
    argv = {"eval": ["eval", "--checkpoint", run, "--out", tmp_path / "eval"],
            "eval-model": ["eval", "--model", "fcn8s_vgg16", "--data", "shapes", "--out", tmp_path / "eval"],
            "predict": ["predict", "--checkpoint", run, run.parent / "photo.png", "--out", tmp_path / "pred"],
            "export": ["export", "--checkpoint", run, "--out", tmp_path / "model.onnx"],
            "benchmark": ["benchmark", "--checkpoint", run, "--size", 16, 16]}[command]
    error = fails(capsys, *argv, "--device", device)
    assert error == f"seglab {argv[0]}: error: {message}"
    assert not (tmp_path / "eval").exists() and not (tmp_path / "pred").exists()


def test_an_output_directory_that_cannot_be_written_is_named_before_any_work(run, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):  # root writes through chmod: refuse where a read-only folder would
        if str(dir).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    for argv in (["eval", "--checkpoint", run], ["predict", "--checkpoint", run, run.parent / "photo.png"]):
        error = fails(capsys, *argv, "--out", tmp_path / "locked")
        assert error == f"seglab {argv[0]}: error: cannot write to the output directory {tmp_path / 'locked'}: " \
                        "Permission denied"
    assert list((tmp_path / "locked").iterdir()) == []


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only tmpfs at tmp_path/ro (root only); skipped where mounting is not permitted."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs",
                                                        str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only tmpfs is not permitted here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_read_only_output_directory_is_named(run, read_only_mount, capsys):
    error = fails(capsys, "eval", "--checkpoint", run, "--out", read_only_mount / "eval")
    assert error == f"seglab eval: error: cannot write to the output directory {read_only_mount / 'eval'}: " \
                    "Read-only file system"
