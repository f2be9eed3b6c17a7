"""``seglab benchmark``: multiply-accumulates against hand counts and torchvision's published ResNet-50 figure,
RoI-op counts from their definitions, and a measured inference and training step."""
import math

import pytest
import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from seglab import cli, models
from seglab.engine.benchmark import count_macs, measure
from seglab.ops import roi_align, roi_pool
from seglab.ops.counting import counting


def test_macs_of_a_small_net_equal_the_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=2),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 10))
    hand = (8 * 3 * 9 * 10 * 10  # conv 1: out channels x in channels x 3x3 taps x 10x10 outputs
            + 4 * (8 // 2) * 9 * 5 * 5  # conv 2, 2 groups: each output reads 4 of the 8 channels, 5x5 outputs
            + 100 * 10)  # linear
    assert count_macs(net, torch.randn(1, 3, 10, 10)) == hand


def test_resnet50_macs_are_torchvisions_published_4_09_g():
    with torch.device("meta"):  # counting needs shapes only
        net, image = resnet50(), torch.empty(1, 3, 224, 224)
    published = ResNet50_Weights.IMAGENET1K_V1.meta["_ops"]  # torchvision's "GFLOPS" column (MACs)
    assert count_macs(net, image) / 1e9 == pytest.approx(published, abs=5e-4)


def test_seglab_deeplabv3_macs_are_torchvisions_published_178_7_g_at_520():
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    with torch.device("meta"):
        net, image = models.create("deeplabv3_resnet50", 21, aux=True), torch.empty(1, 3, 520, 520)
    published = DeepLabV3_ResNet50_Weights.DEFAULT.meta["_ops"]  # with its aux head, at the weights' 520 px
    assert count_macs(net.eval(), image) / 1e9 == pytest.approx(published, abs=5e-4)


def test_roi_ops_count_four_macs_per_bilinear_sample_and_one_per_compared_value():
    features = torch.randn(1, 5, 32, 32)
    boxes = [torch.tensor([[0.0, 0.0, 13.0, 13.0], [2.0, 3.0, 20.0, 9.0]])]
    with counting() as total:
        roi_align(features, boxes, 7, spatial_scale=1.0, sampling_ratio=2)
    assert total.macs == 2 * 5 * 49 * (2 * 2) * 4  # RoIs x channels x bins x samples x taps
    with counting() as total:
        roi_pool(features, [boxes[0][:1]], 7, spatial_scale=1.0)
    assert total.macs == 5 * 14 * 14  # the box covers pixels 0..13 on both axes, 7 bins of 2 pixels each
    with counting() as total:
        roi_align(features, [boxes[0][:1]], 7, spatial_scale=0.5, sampling_ratio=0)  # adaptive: ceil(6.5 / 7) = 1
    assert total.macs == 5 * 49 * 1 * 4


def test_measure_times_inference_and_a_training_step_that_changes_the_weights():
    model = models.create("fcn8s_vgg16", 3, width_mult=0.0625, padding="same")
    before = [p.detach().clone() for p in model.parameters()]
    inference = measure(model, size=(32, 32), batch=2, repeats=2, warmup=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert inference.macs == count_macs(model.eval(), torch.randn(2, 3, 32, 32))
    assert inference.parameters == sum(p.numel() for p in model.parameters())
    assert 0 < inference.p50 <= inference.p95 and math.isclose(inference.images_per_s, 2 / inference.p50)
    assert inference.host_peak_mib > 0 and inference.device_peak_mib is None
    trained = measure(model, size=(32, 32), batch=2, repeats=2, warmup=1, train=True)
    assert trained.mode == "train" and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_an_instance_model_is_measured_with_its_roi_ops_counted():
    model = models.create("maskrcnn_resnet18_fpn", 3, min_size=64, max_size=64, fpn_channels=32,
                          representation_size=64, mask_layers=(16,), box_score_thresh=0.0)
    result = measure(model, size=(64, 64), batch=1, repeats=1, warmup=0)
    with counting() as roi:
        count_macs(model.eval(), [torch.rand(3, 64, 64)])
    assert roi.macs > 0 and result.macs > roi.macs
    assert measure(model, size=(64, 64), batch=2, repeats=1, warmup=0, train=True).p50 > 0


def test_compile_really_compiles_a_tiny_model_and_reports_the_first_call():
    # the one real compile of the suite: a tiny model (compiling takes ~20 s on 2 cores)
    model = models.create("fcn32s_vgg16", 2, width_mult=0.0625, padding="same")
    result = measure(model, size=(16, 16), repeats=1, warmup=0, compile=True)
    assert result.compile_s is not None and result.compile_s > result.p50


def test_benchmark_command_prints_the_machine_and_a_table_row(capsys):
    cli.main(["benchmark", "--model", "fcn8s_vgg16", "--num-classes", "3", "--model-option", "width_mult=0.0625",
              "--model-option", "padding=same", "--size", "16", "16", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("cpu: ") and "torch " in lines[0]
    assert lines[1].startswith("| model | mode | parameters | GMACs (forward) |")
    assert lines[3].startswith("| fcn8s_vgg16 | inference | ") and len(lines) == 4



def test_a_model_built_by_name_has_the_same_random_weights_in_every_run(monkeypatch, capsys):
    """Random weights decide how many detections an instance model makes, so how long it takes: seeded."""
    seen = []
    monkeypatch.setattr("seglab.engine.benchmark.measure",
                        lambda model, **options: seen.append(next(model.parameters()).detach().clone()))
    monkeypatch.setattr("seglab.engine.benchmark.table_row", lambda measurement: "")
    for _ in range(2):
        torch.rand(3)  # the global generator moves on between runs
        cli.main(["benchmark", "--model", "fcn8s_vgg16", "--num-classes", "3", "--model-option", "width_mult=0.0625"])
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
