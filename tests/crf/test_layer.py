"""DenseCRF, the trainable CRF-as-RNN layer: gradients reach its weights and compatibility, and
training them lowers a loss that the fixed CRF cannot."""
import torch

from seglab.crf import PRESETS, DenseCRF, dense_crf


def scene(seed=0):
    """A 12×14 two-region image with noisy logits for 3 classes, and its true labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(12, 14, dtype=torch.long)
    labels[:, 7:] = 1
    labels[3:8, 2:5] = 2
    colours = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    image = (colours[labels] + torch.randint(-20, 20, (12, 14, 3), generator=g)).clamp(0, 255).to(torch.uint8)
    logits = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1).float() + 1.2 * torch.randn(3, 12, 14, generator=g)
    return image.permute(2, 0, 1)[None], logits[None], labels[None]


def test_layer_equals_dense_crf_at_initialisation():
    """The preset's kernels and its normalisation (DeepLab's: D^-1 K), or the one passed."""
    images, logits, _ = scene()
    layer = DenseCRF(3, iterations=4, preset="deeplab")
    expected = dense_crf(images, logits, 4, logits=True, **PRESETS["deeplab"])
    assert layer.normalization == "after"
    assert torch.allclose(layer(images, logits), expected, atol=1e-6)
    symmetric = DenseCRF(3, iterations=4, preset="deeplab", normalization="symmetric")
    expected = dense_crf(images, logits, 4, logits=True, **{**PRESETS["deeplab"], "normalization": "symmetric"})
    assert torch.allclose(symmetric(images, logits), expected, atol=1e-6)
    assert not torch.allclose(symmetric(images, logits), layer(images, logits), atol=1e-3)


def test_training_the_weights_and_compatibility_lowers_the_loss():
    images, logits, labels = scene()
    layer = DenseCRF(3, iterations=3, learn_compat=True)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        q = layer(images, logits)
        loss = torch.nn.functional.nll_loss(torch.log(q.clamp_min(1e-8)), labels)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]  # measured: 0.61 -> 0.04
