"""Fault injection on real training processes: SIGKILL at a random step, SIGKILL halfway through writing a
checkpoint, SIGTERM/SIGINT; then ``--resume`` ends with exactly the weights of an uninterrupted run. And
crafted checkpoints that would run code on unpickling are refused by every entry point that reads one."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seglab import models
from seglab.cli import main
from seglab.io import safe_load as load_checkpoint

FAULTY = str(Path(__file__).with_name("faulty_train.py"))
ITERS = 30
# the EMA and the early-stop patience counter must resume exactly too (validation every 5 steps)
EMA_EARLY_STOP = ("--ema", "0.9", "--early-stop", "100", "--val-every", "5", "--val-split", "val", "--num-val", "4")


def train_args(out, *extra):
    return ["train", "--model", "fcn8s_vgg16", "--width-mult", "0.0625", "--batch-norm", "--model-option",
            "padding=same", "--data", "shapes", "--image-size", "32", "--num-train", "12",
            "--val-split", "", "--batch-size", "4", "--iters", str(ITERS), "--lr", "0.02", "--log-every", "1",
            "--ckpt-every", "1", "--device", "cpu", "--out", str(out), *extra]


def seglab(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seglab", *args], capture_output=True, text=True, timeout=timeout)


def logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def interrupt_at(run_dir: Path, step: int, sig: int, *extra) -> subprocess.Popen:
    """Start training, send ``sig`` once ``step`` is logged, wait for the process to end."""
    process = subprocess.Popen([sys.executable, "-m", "seglab", *train_args(run_dir, *extra)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    while logged_step(run_dir) < step and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(sig)
    process.output, _ = process.communicate(timeout=120)
    return process


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    ours, theirs = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference / "last.pt")
    assert ours["step"] == theirs["step"] == ITERS
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    assert ("ema" in ours) == ("ema" in theirs)
    for key, value in theirs.get("ema", {}).items():
        assert torch.equal(ours["ema"][key], value), f"ema {key}"
    assert ours["stale"] == theirs["stale"] and ours["best"] == theirs["best"]


@pytest.fixture(scope="module")
def straight_with(tmp_path_factory):
    """The uninterrupted run with these extra flags (each trained once per module)."""
    runs = {}

    def run(*extra):
        if extra not in runs:
            out = tmp_path_factory.mktemp("straight") / "run"
            result = seglab(*train_args(out, *extra))
            assert result.returncode == 0, result.stderr[-3000:]
            runs[extra] = out
        return runs[extra]

    return run


@pytest.fixture(scope="module")
def straight(straight_with):
    return straight_with()


def resume(run_dir: Path, *extra) -> None:
    result = seglab(*train_args(run_dir, *extra, "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr


@pytest.mark.parametrize("extra", [(), EMA_EARLY_STOP], ids=["plain", "ema-early-stop"])
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(straight_with, tmp_path, extra):
    reference = straight_with(*extra)
    step = random.Random().randint(2, ITERS - 5)
    process = interrupt_at(tmp_path / "run", step, signal.SIGKILL, *extra)
    assert process.returncode == -signal.SIGKILL
    killed = load_checkpoint(tmp_path / "run" / "last.pt")
    assert step - 1 <= killed["step"] < ITERS, f"killed at step {step}"  # the log line comes just before the save
    assert ("ema" in killed) == bool(extra)
    resume(tmp_path / "run", *extra)
    assert_same_weights(tmp_path / "run", reference)
    if extra:  # validations at 5, 10, ..., 30 evaluated the EMA; best.pt holds it
        best = load_checkpoint(tmp_path / "run" / "best.pt")
        reference_best = load_checkpoint(reference / "best.pt")
        assert best["step"] == reference_best["step"]
        for key, value in reference_best["model"].items():
            assert torch.equal(best["model"][key], value), key


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(straight, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, FAULTY, "kill-in-save", "5", *train_args(run_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4  # the half-written step-5 file never replaced it
    assert list(run_dir.glob(".last.pt.*.tmp")), "the torn temporary file is where the kill left it"
    resume(run_dir)
    assert_same_weights(run_dir, straight)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(straight, tmp_path, sig):
    process = interrupt_at(tmp_path / "run", 3, sig)
    assert process.returncode == 0, process.output[-3000:]
    assert "stopped by a signal" in process.output
    stopped = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert 3 <= stopped < ITERS and stopped == logged_step(tmp_path / "run")
    resume(tmp_path / "run")
    assert_same_weights(tmp_path / "run", straight)


class RunsCode:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def crafted(tmp_path):
    path = tmp_path / "crafted.pt"
    torch.save({"model": RunsCode(tmp_path / "pwned"), "meta": {}}, path)
    return path


def refuses(crafted: Path, call) -> None:
    with pytest.raises((ValueError, SystemExit)):
        call()
    assert not (crafted.parent / "pwned").exists(), "the crafted checkpoint ran code"


def test_crafted_checkpoints_are_refused_by_every_entry_point(crafted, tmp_path, capsys):
    refuses(crafted, lambda: models.create("fcn32s_vgg16", 3, width_mult=0.0625, weights=str(crafted)))
    refuses(crafted, lambda: models.load(crafted))
    refuses(crafted, lambda: load_checkpoint(crafted))
    refuses(crafted, lambda: main(train_args(tmp_path / "w", "--weights", str(crafted))))
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(crafted.read_bytes())
    refuses(crafted, lambda: main(train_args(run_dir, "--resume")))
    refuses(crafted, lambda: main(["eval", "--checkpoint", str(crafted)]))
    image = tmp_path / "image.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(image)
    refuses(crafted, lambda: main(["predict", str(image), "--checkpoint", str(crafted), "--out", str(tmp_path / "p")]))
    errors = capsys.readouterr().err
    assert errors.count("refusing to load") == 4, errors
