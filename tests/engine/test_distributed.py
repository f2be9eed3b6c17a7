"""Data-parallel training under torchrun on CPU (gloo). Two processes end with the weights of one process
training on the combined batch (the cross-entropy is normalised by the global count of labelled pixels),
so do two simulated nodes joined by a c10d rendezvous, and so does a group that torchrun restarts after a
worker was killed (it resumes from the last checkpoint by itself). Evaluation shards add up to the
single-process metrics, with an odd number of images (no padding, no double counting). Instance models
(Mask^X R-CNN with partial supervision, FCIS) train data-parallel."""
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seglab import models
from seglab.data import Shapes
from seglab.io import safe_load as load_checkpoint
from seglab.engine import instance, semantic

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

FAULTY = str(Path(__file__).with_name("faulty_train.py"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ITERS = 6


def train_args(out, batch_size):
    return ["train", "--model", "fcn32s_vgg16", "--width-mult", "0.0625", "--no-batch-norm",
            "--model-option", "padding=same", "--model-option", "dropout=0", "--data", "shapes",
            "--image-size", "32", "--num-train", "16", "--num-val", "7", "--iters", str(ITERS), "--lr", "0.05",
            "--log-every", "1", "--ckpt-every", "2", "--device", "cpu", "--seed", "3", "--batch-size", str(batch_size),
            "--out", str(out)]


def check(process: subprocess.CompletedProcess | subprocess.Popen, output: str = "") -> str:
    assert process.returncode == 0, output[-4000:]
    return output


def run(command) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return check(result, result.stdout + result.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    ours, theirs = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference / "last.pt")
    assert ours["step"] == theirs["step"] == ITERS
    for key, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()][-1]
    assert final.keys() == expected.keys() and final["step"] == ITERS
    assert final == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 8."""
    out = tmp_path_factory.mktemp("single") / "run"
    run([sys.executable, "-m", "seglab", *train_args(out, 8)])
    return out


def test_two_processes_give_the_weights_of_one_with_the_combined_batch(reference, tmp_path):
    run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "seglab", *train_args(tmp_path / "run", 4)])
    assert_same_run(tmp_path / "run", reference)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]


def test_two_nodes_joined_by_c10d_rendezvous_give_the_same_weights(reference, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    command = [*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
               "--rdzv-id=seglab-test", "-m", "seglab", *train_args(tmp_path / "run", 4)]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        check(node, output)
    assert_same_run(tmp_path / "run", reference)


def test_torchrun_restarts_a_killed_worker_and_the_group_resumes_from_the_last_checkpoint(reference, tmp_path):
    output = run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=1", FAULTY, "kill-worker", "3",
                  *train_args(tmp_path / "run", 4)])
    assert "resumed from" in output and "at step 2" in output
    assert_same_run(tmp_path / "run", reference)


def _evaluate_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.save(evaluations(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def evaluations():
    """Semantic metrics of a random FCN, and COCO AP and first-image detections of a random small Mask
    R-CNN with no score threshold, on 7 Shapes images."""
    torch.manual_seed(0)
    fcn = models.create("fcn32s_vgg16", 5, width_mult=0.0625, padding="same")
    scores, _ = semantic.evaluate(fcn, Shapes("val", 7, image_size=32), {"num_classes": 5, "mean": (0.5,) * 3,
                                                                        "std": (0.25,) * 3}, progress=False)
    maskrcnn = models.create("maskrcnn_resnet18_fpn", 5, fpn_channels=32, representation_size=64, mask_layers=[16],
                             min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], box_score_thresh=0.0)
    metrics, visuals = instance.evaluate(maskrcnn, Shapes("val", 7, image_size=64), progress=False)
    return scores, metrics, len(visuals[0][2]["boxes"])


def test_evaluation_shards_add_up_to_the_single_process_metrics(tmp_path):
    single_semantic, single_instance, detections = evaluations()
    assert detections > 0
    mp.spawn(_evaluate_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        scores, metrics, _ = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key, value in single_semantic.items():  # from the summed confusion matrix: exactly equal
            torch.testing.assert_close(torch.tensor(scores[key]), torch.tensor(value), rtol=0, atol=0,
                                       equal_nan=True, msg=key)
        for kind in ("bbox", "segm"):
            assert metrics[kind] == pytest.approx(single_instance[kind], nan_ok=True), kind
            for name, curve in single_instance["curves"][kind].items():
                assert metrics["curves"][kind][name] == pytest.approx(curve, nan_ok=True), (kind, name)


def test_sync_bn_needs_torchrun_on_cuda(tmp_path):
    from seglab.engine.config import TrainConfig
    from seglab.engine.train import Trainer

    config = TrainConfig(model="fcn32s_vgg16", width_mult=0.0625, batch_norm=True, image_size=32, num_train=4,
                         val_split=None, sync_bn=True, device="cpu", out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="sync_bn needs torchrun on CUDA"):
        Trainer(config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL)")
def test_sync_bn_trains_under_torchrun_on_cuda(tmp_path):
    args = train_args(tmp_path / "run", 4)
    args[args.index("--no-batch-norm")] = "--batch-norm"
    args[args.index("cpu")] = "cuda"
    output = run([*TORCHRUN, "--standalone", f"--nproc_per_node={torch.cuda.device_count()}", "-m", "seglab", *args,
                  "--sync-bn"])
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] == ITERS and checkpoint["config"]["sync_bn"], output[-2000:]
    assert any(key.endswith("running_mean") for key in checkpoint["model"])


INSTANCE_RUNS = {  # small configurations; Mask^X with partial supervision (set B's mask losses are zero)
    "maskxrcnn_resnet18_fpn": {"model_options": {"fpn_channels": 32, "representation_size": 48, "mask_layers": [16],
                                                 "anchor_sizes": [8, 16, 32, 64, 128], "min_size": 64, "max_size": 64,
                                                 "frozen_bn": False, "trainable_backbone_layers": 5,
                                                 "box_batch_size_per_image": 32},
                               "mask_classes": ["circle", "square"]},
    "fcis_resnet50": {"model_options": {"width_mult": 0.25, "reduce_channels": 32, "min_size": 64, "max_size": 64,
                                        "anchor_sizes": [16, 32, 64], "group_size": 3, "mask_size": 9,
                                        "output_stride": 8, "score_map_init": "kaiming", "frozen_bn": False,
                                        "trainable_backbone_layers": 5, "box_batch_size_per_image": 32}},
}


@pytest.mark.parametrize("model", sorted(INSTANCE_RUNS))
def test_instance_models_train_data_parallel_under_torchrun(model, tmp_path):
    """2 gloo processes × batch 2 over an epoch boundary: DDP accepts the instance models' graphs (every
    parameter reached on every rank, also when a rank's images carry no set-A mask), losses stay finite and
    the checkpoint loads and detects."""
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"  # JSON is YAML
    config.write_text(json.dumps({"model": model, **INSTANCE_RUNS[model], "data": "shapes", "image_size": 64,
                                  "num_train": 8, "val_split": None, "batch_size": 2, "iters": 3, "lr": 0.01,
                                  "log_every": 1, "device": "cpu", "seed": 4, "out": str(out)}))
    output = run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "seglab", "train", "--config", str(config)])
    assert load_checkpoint(out / "last.pt")["step"] == 3, output[-2000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged if "loss" in record] == [1, 2, 3]
    assert all(math.isfinite(record["loss"]) for record in logged if "loss" in record)
    with torch.no_grad():
        detections = models.load(out / "last.pt").eval()([torch.rand(3, 64, 64)])
    assert detections[0]["masks"].shape[1:] == (1, 64, 64)
