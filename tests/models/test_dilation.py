"""Yu & Koltun's dilation network: context module (Table 1, identity initialisation), model and builder."""
import pytest
import torch
import torch.nn.functional as F

from seglab import data, models
from seglab.models.dilation import ContextModule, identity_init_

VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
CONTEXT_3X3_WIDTHS = {"basic": [1, 1, 1, 1, 1, 1, 1], "large": [2, 2, 4, 8, 16, 32, 32]}  # Table 1, × C


def expected_parameters(num_classes: int, context: str | None) -> int:
    """Front-end + context module parameters from the layer shapes of arXiv:1511.07122 §4 and Table 1."""
    frontend = sum(3 * 3 * cin * cout + cout for cin, cout in VGG16_CONVS)
    frontend += 7 * 7 * 512 * 4096 + 4096  # fc6 (dilation does not change the kernel)
    frontend += 4096 * 4096 + 4096  # fc7
    final = 4096 * num_classes + num_classes
    if context is None:
        return frontend + final
    widths = [num_classes] + [m * num_classes for m in CONTEXT_3X3_WIDTHS[context]]
    layers = sum(3 * 3 * cin * cout + cout for cin, cout in zip(widths, widths[1:]))
    layers += widths[-1] * num_classes + num_classes  # the 1×1 8th layer
    return frontend + final + layers


@pytest.mark.parametrize("context", ["basic", "large", None])
def test_parameter_count_matches_paper_layer_shapes(context):
    expected = expected_parameters(21, context)
    assert models.count_parameters("dilation_vgg16", 21, context=context) == expected
    if context == "basic":
        assert expected - expected_parameters(21, None) == 7 * (9 * 21 * 21 + 21) + 21 * 21 + 21


@pytest.mark.parametrize("context", ["basic", "large", None])
def test_output_has_input_size_for_odd_sizes(context):
    model = models.create("dilation_vgg16", 3, width_mult=0.0625, context=context).eval()
    for height, width in [(33, 47), (65, 64), (8, 95)]:
        with torch.no_grad():
            assert model(torch.randn(2, 3, height, width))["out"].shape == (2, 3, height, width)


@pytest.mark.parametrize("context", ["basic", "large"])
def test_gradients_reach_every_parameter(context):
    torch.manual_seed(0)
    model = models.create("dilation_vgg16", 3, width_mult=0.0625, context=context).train()
    out = model(torch.randn(2, 3, 45, 61))["out"]
    F.cross_entropy(out, torch.randint(0, 3, (2, 45, 61))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_identity_init_follows_equation_5_entry_by_entry():
    num_classes, c_in, c_out = 2, 4, 8
    conv = identity_init_(torch.nn.Conv2d(c_in, c_out, 3), num_classes)
    for b in range(c_out):
        for a in range(c_in):
            for i in range(3):
                for j in range(3):
                    same_group = a * num_classes // c_in == b * num_classes // c_out
                    expected = num_classes / c_out if (i, j) == (1, 1) and same_group else 0.0
                    assert conv.weight[b, a, i, j].item() == expected
    assert not conv.bias.any()


def test_fresh_basic_context_module_is_the_identity_on_nonnegative_input():
    x = torch.rand(2, 5, 21, 34, generator=torch.Generator().manual_seed(0))
    module = ContextModule(5, "basic")
    with torch.no_grad():
        torch.testing.assert_close(module(x), x, rtol=1e-6, atol=1e-6)
        signed = x - 0.5  # the truncation after layer 1 makes it ReLU on signed input
        torch.testing.assert_close(module(signed), signed.clamp(min=0), rtol=1e-6, atol=1e-6)


def test_fresh_large_context_module_is_the_identity_without_noise_and_close_with_it():
    x = torch.rand(2, 3, 19, 26, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    exact, noisy = ContextModule(3, "large", init_noise_std=0.0), ContextModule(3, "large")
    assert [m.out_channels for m in exact if isinstance(m, torch.nn.Conv2d)] == [6, 6, 12, 24, 48, 96, 96, 3]
    with torch.no_grad():
        torch.testing.assert_close(exact(x), x, rtol=1e-6, atol=1e-6)
        difference = (noisy(x) - x).abs().max().item()
    assert 0 < difference < 0.1


def test_context_module_rejects_unknown_variant():
    with pytest.raises(ValueError, match="huge"):
        ContextModule(3, "huge")


def test_weights_option_loads_a_saved_model(tmp_path):
    torch.manual_seed(0)
    model = models.create("dilation_vgg16", 3, width_mult=0.0625, context="large")
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    loaded = models.create("dilation_vgg16", 3, width_mult=0.0625, context="large", weights=str(tmp_path / "model.pt"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_dilation_vgg16_overfits_one_shapes_batch_with_sgd():
    dataset = data.Shapes("train", 8, image_size=64, transforms=data.eval_transforms())
    images = torch.stack([dataset[i][0] for i in range(8)]).as_subclass(torch.Tensor)
    masks = torch.stack([dataset[i][1]["mask"] for i in range(8)]).as_subclass(torch.Tensor)
    torch.manual_seed(0)
    model = models.create("dilation_vgg16", len(dataset.classes), width_mult=0.0625).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(images)["out"], masks, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
