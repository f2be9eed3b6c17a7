"""``dense_crf`` / ``mean_field`` against pydensecrf (Krähenbühl's C++ densecrf), and their own identities.

Parity runs on scikit-image photographs with realistic unaries: a label map from quantised intensity,
made coarse (×8 block-downsampled, nearest-upsampled) and noisy, then softmaxed, so that the CRF moves
labels onto edges. Everything else uses small seeded synthetic images.
"""
from functools import lru_cache

import numpy as np
import pytest
import torch

from seglab.crf import (NORMALIZATIONS, PRESETS, LatticeFilter, PermutohedralLattice, dense_crf, mean_field,
                        unary_from_probs)


@pytest.fixture(scope="module")
def dcrf():
    return pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf is the reference implementation")


@pytest.fixture(scope="module")
def pydensecrf_utils():
    return pytest.importorskip("pydensecrf.utils", reason="pydensecrf is the reference implementation")


def coarse_noisy_probs(label, num_classes, seed, factor=8, scale=4.0, noise=1.0):
    """(C, H, W) float32 softmax of ``scale``·one-hot(coarse label) + seeded N(0, noise²) logits."""
    height, width = label.shape
    coarse = label[::factor, ::factor].repeat(factor, 0).repeat(factor, 1)[:height, :width]
    rng = np.random.default_rng(seed)
    logits = scale * np.eye(num_classes)[coarse].transpose(2, 0, 1)
    logits = logits + noise * rng.standard_normal((num_classes, height, width))
    probs = np.exp(logits - logits.max(0))
    return (probs / probs.sum(0)).astype(np.float32)


PHOTOS = {  # name -> ((W, H), C); 151×97 = 14647 pixels is not a multiple of 4 (pydensecrf's padding)
    "astronaut": ((160, 120), 6),
    "coffee": ((151, 97), 21),
    "chelsea": ((160, 120), 8),
}


@lru_cache(maxsize=None)
def photo_case(name):
    """A resized scikit-image photograph (H, W, 3) uint8 and its (C, H, W) unary probabilities."""
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photographs")
    from PIL import Image

    size, num_classes = PHOTOS[name]
    image = np.array(Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.BILINEAR))
    grey = image.astype(np.float64).mean(2)
    label = np.digitize(grey, np.quantile(grey, np.linspace(0, 1, 7)[1:-1]))  # 6 intensity regions
    return image, coarse_noisy_probs(label, num_classes, seed=sum(map(ord, name)))


def synthetic_case(height=24, width=30, num_classes=4, seed=0, factor=4):
    """Seeded rectangles of random colours on a background, with colour noise, and matching probabilities."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.int64)
    for k in range(1, num_classes):
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        label[y:y + rng.integers(4, height // 2 + 4), x:x + rng.integers(4, width // 2 + 4)] = k
    colours = rng.integers(0, 256, (num_classes, 3))
    image = np.clip(colours[label] + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    return image, coarse_noisy_probs(label, num_classes, seed + 1, factor=factor)


def pydensecrf_normalization(dcrf, normalization):
    """seglab's ``normalization`` name -> pydensecrf's NormalizationType constant."""
    return {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER, "before": dcrf.NORMALIZE_BEFORE,
            "none": dcrf.NO_NORMALIZATION}[normalization]


def pydensecrf_q(dcrf, image, probs, iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0,
                 bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0, bilateral=True,
                 normalization="symmetric"):
    """pydensecrf's DenseCRF2D with U = unary_from_softmax(p); numpy compats become MatrixCompatibility."""
    from pydensecrf.utils import unary_from_softmax

    def compat(c):
        return c if np.isscalar(c) else np.ascontiguousarray(np.asarray(c, dtype=np.float32))

    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    norm = pydensecrf_normalization(dcrf, normalization)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=compat(gaussian_compat), normalization=norm)
    if bilateral:
        crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image).copy(),
                                 compat=compat(bilateral_compat), normalization=norm)
    return np.array(crf.inference(iterations)).reshape(num_classes, height, width)


def report(label, reference, ours, probs):
    diff = np.abs(reference - ours)
    agreement = (reference.argmax(0) == ours.argmax(0)).mean()
    changed = (reference.argmax(0) != probs.argmax(0)).mean()
    print(f"\n{label}: max |ΔQ| {diff.max():.3g}, mean |ΔQ| {diff.mean():.3g}, argmax agreement {agreement:.6f}, "
          f"labels changed by the CRF {changed:.3f}")
    return diff, agreement, changed


# --- parity with pydensecrf -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", list(PHOTOS))
def test_dense_crf_matches_pydensecrf_on_photographs(dcrf, name, preset):
    """Every preset on every photograph: pydensecrf's addPairwiseGaussian + addPairwiseBilateral, 10 steps."""
    image, probs = photo_case(name)
    kw = PRESETS[preset]
    reference = pydensecrf_q(dcrf, image, probs, **kw)
    ours = dense_crf(image, torch.from_numpy(probs), **kw).numpy()
    assert ours.shape == probs.shape and ours.dtype == np.float32
    diff, agreement, changed = report(f"{name} {image.shape[:2]} {preset}", reference, ours, probs)
    assert changed >= 0.01  # the CRF does something, so agreement is meaningful
    assert agreement >= 0.999
    assert diff.max() < 1e-4 and diff.mean() < 1e-6  # measured ≤ 1e-5 and ≤ 3e-8


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("name", list(PHOTOS))
def test_each_normalization_matches_pydensecrf_with_that_setting(dcrf, name, normalization):
    """D^-1/2 K D^-1/2, D^-1 K, K D^-1 and K against pydensecrf's NORMALIZE_SYMMETRIC / AFTER / BEFORE and
    NO_NORMALIZATION on both kernels; DeepLab's kernels (w1 = 4, θα = 121, θβ = 5), 10 steps."""
    image, probs = photo_case(name)
    kw = {**PRESETS["deeplab"], "normalization": normalization}
    reference = pydensecrf_q(dcrf, image, probs, **kw)
    ours = dense_crf(image, torch.from_numpy(probs), **kw).numpy()
    diff, agreement, changed = report(f"{name} {image.shape[:2]} {normalization}", reference, ours, probs)
    assert changed >= 0.01
    assert agreement >= 0.999
    # Unnormalised, a message is w·Σ_j K_ij Q_j with K·1 up to 1471 here: float32 rounding of such energies
    # moves Q more. Measured max ≤ 3.5e-6 normalised, ≤ 4.9e-4 for "none"; mean ≤ 3.4e-8; agreement 1.0.
    assert diff.max() < (2e-3 if normalization == "none" else 1e-4) and diff.mean() < 1e-6


@pytest.mark.parametrize("preset", ["deeplab", "deeplab-v2"])
def test_deeplab_presets_use_densecrf_v1_per_pixel_normalisation(dcrf, preset):
    """DeepLab's released CRF (densecrf v1's PottsPotential, w·(KQ)_i / (K·1)_i) is pydensecrf's
    NORMALIZE_AFTER; the presets select it, and it gives another Q than the symmetric default."""
    image, probs = photo_case("astronaut")
    kernels = {key: value for key, value in PRESETS[preset].items() if key != "normalization"}
    reference = pydensecrf_q(dcrf, image, probs, **kernels, normalization="after")
    ours = dense_crf(image, torch.from_numpy(probs), **PRESETS[preset]).numpy()
    assert PRESETS[preset]["normalization"] == "after"
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)
    symmetric = dense_crf(image, torch.from_numpy(probs), **kernels).numpy()
    assert np.abs(symmetric - reference).max() > 0.1


def test_dense_crf_defaults_are_the_default_preset(dcrf):
    image, probs = synthetic_case()
    p = torch.from_numpy(probs)
    assert torch.equal(dense_crf(image, p), dense_crf(image, p, **PRESETS["default"]))


def test_matrix_compat_per_kernel_matches_pydensecrf_matrix_compatibility(dcrf):
    """Non-symmetric C×C matrices per kernel: pydensecrf's MatrixCompatibility symmetrises them too."""
    image, probs = photo_case("coffee")
    num_classes = probs.shape[0]
    rng = np.random.default_rng(7)
    m1 = (-3 * np.eye(num_classes) + 0.5 * rng.standard_normal((num_classes, num_classes))).astype(np.float32)
    m2 = (-10 * np.eye(num_classes) + 1.0 * rng.standard_normal((num_classes, num_classes))).astype(np.float32)
    reference = pydensecrf_q(dcrf, image, probs, gaussian_compat=m1, bilateral_compat=m2)
    ours = dense_crf(image, torch.from_numpy(probs), gaussian_compat=torch.from_numpy(m1),
                     bilateral_compat=torch.from_numpy(m2)).numpy()
    diff, agreement, changed = report("coffee matrix compat", reference, ours, probs)
    assert changed >= 0.01
    assert agreement >= 0.999
    assert diff.max() < 1e-4 and diff.mean() < 1e-6


def test_gaussian_kernel_alone_matches_pydensecrf(dcrf):
    """bilateral_compat=0 is pydensecrf with the smoothness kernel only (odd size: padded lattice)."""
    image, probs = synthetic_case(23, 31, num_classes=5, seed=3)
    reference = pydensecrf_q(dcrf, image, probs, bilateral=False)
    ours = dense_crf(image, torch.from_numpy(probs), bilateral_compat=0.0).numpy()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("dim,n", [(1, 50), (2, 64), (3, 97), (5, 203)])
def test_mean_field_on_lattice_matches_pydensecrf_add_pairwise_energy(dcrf, dim, n, normalization):
    """``PermutohedralLattice.kernel`` + ``mean_field`` on arbitrary features = pydensecrf's DenseCRF with
    addPairwiseEnergy in the same normalisation: a Potts kernel and a matrix-compatibility kernel."""
    rng = np.random.default_rng(dim * 1000 + n)
    num_classes, iterations, weight = 4, 5, 2.0
    f1 = rng.normal(0, 2, (n, dim)).astype(np.float32)
    f2 = rng.normal(0, 1, (n, dim)).astype(np.float32)
    matrix = rng.normal(0, 1.5, (num_classes, num_classes)).astype(np.float32)
    unary = rng.uniform(0, 3, (num_classes, n)).astype(np.float32)

    norm = pydensecrf_normalization(dcrf, normalization)
    crf = dcrf.DenseCRF(n, num_classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseEnergy(np.ascontiguousarray(f1.T), compat=weight, normalization=norm)
    crf.addPairwiseEnergy(np.ascontiguousarray(f2.T), compat=matrix, normalization=norm)
    reference = np.array(crf.inference(iterations)).T

    def kernel(features, weight=1.0):  # pad_multiple=4, like pydensecrf
        return PermutohedralLattice(torch.from_numpy(features)[None]).kernel(normalization, torch.float32, weight)

    m = torch.from_numpy(matrix)
    messages = [(kernel(f1, weight), None), (kernel(f2), 0.5 * (m + m.T))]
    ours = mean_field(torch.from_numpy(unary.T.copy()), messages, iterations).numpy()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_unary_from_probs_is_pydensecrf_unary_from_softmax(pydensecrf_utils):
    _, probs = synthetic_case()
    probs[0, :3, :3] = 0  # below the clip
    probs = probs / probs.sum(0)
    reference = pydensecrf_utils.unary_from_softmax(probs)
    ours = unary_from_probs(torch.from_numpy(probs)).reshape(probs.shape[0], -1).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=0)


# --- identities -----------------------------------------------------------------------------------------


def test_scalar_compat_equals_its_matrix_forms():
    """Scalar (Potts) weights = ``compat=−I`` scaled by each weight = per-kernel −w·I matrices = the paper's
    μ(l, l') = [l ≠ l'] (which differs from −I by a per-pixel constant that cancels in the softmax)."""
    image, probs = synthetic_case(num_classes=5, seed=1)
    num_classes = probs.shape[0]
    p = torch.from_numpy(probs)
    eye = torch.eye(num_classes)
    potts = dense_crf(image, p, gaussian_compat=3, bilateral_compat=10)
    minus_identity = dense_crf(image, p, gaussian_compat=3, bilateral_compat=10, compat=-eye)
    per_kernel = dense_crf(image, p, gaussian_compat=-3 * eye, bilateral_compat=-10 * eye)
    paper = dense_crf(image, p, gaussian_compat=3, bilateral_compat=10, compat=torch.ones(num_classes, num_classes) - eye)
    assert (potts.argmax(0) != p.argmax(0)).float().mean() > 0.01
    torch.testing.assert_close(minus_identity, potts, rtol=0, atol=1e-5)
    torch.testing.assert_close(per_kernel, potts, rtol=0, atol=1e-5)
    torch.testing.assert_close(paper, potts, rtol=0, atol=1e-5)


def test_batch_equals_images_alone():
    """(N, 3, H, W) tensor + (N, C, H, W) probs = each image alone; the output keeps the probs' shape."""
    cases = [synthetic_case(seed=s) for s in (0, 1, 2)]
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image, _ in cases])
    probs = torch.stack([torch.from_numpy(p) for _, p in cases])
    batched = dense_crf(images, probs)
    assert batched.shape == probs.shape
    for b, (image, p) in enumerate(cases):
        alone = dense_crf(image, torch.from_numpy(p))
        assert alone.shape == p.shape
        torch.testing.assert_close(batched[b], alone, rtol=0, atol=1e-6)


def test_buffered_iterations_without_autograd_equal_the_autograd_path():
    """Under no_grad the score and Q are reused in place across iterations; with autograd every Q is kept.
    Both give the same Q, for Potts weights and for a compatibility matrix."""
    image, probs = synthetic_case()
    p = torch.from_numpy(probs)
    compat = -torch.eye(p.shape[0]) + 0.1 * torch.ones(p.shape[0], p.shape[0])
    for options in ({}, {"compat": compat}):
        with torch.no_grad():
            buffered = dense_crf(image, p, **options)
        tracked = dense_crf(image, p.clone().requires_grad_(), **options)
        assert tracked.requires_grad
        torch.testing.assert_close(buffered, tracked.detach(), rtol=0, atol=1e-6)



def test_grad_mode_without_anything_requiring_grad_takes_the_buffered_path(monkeypatch):
    """A plain call (grad mode on, as in most scripts, but no input requiring a gradient) reuses the buffers
    like ``no_grad``: same Q, no autograd graph; a weight requiring grad switches to the autograd path."""
    image, probs = synthetic_case()
    p = torch.from_numpy(probs)
    calls = []
    accumulate = LatticeFilter.accumulate
    monkeypatch.setattr(LatticeFilter, "accumulate", lambda self, *a, **k: calls.append(1) or accumulate(self, *a, **k))
    plain = dense_crf(image, p)
    assert calls and not plain.requires_grad
    with torch.no_grad():
        buffered = dense_crf(image, p)
    torch.testing.assert_close(plain, buffered, rtol=0, atol=0)
    calls.clear()
    tracked = dense_crf(image, p, bilateral_compat=torch.tensor(10.0, requires_grad=True))
    assert not calls and tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), buffered, rtol=0, atol=1e-6)

@pytest.mark.parametrize("classes", [1, 4])
def test_inputs_are_left_untouched(classes):
    """The unary is made in place on a copy of the probabilities, never on them (one class: the layout is a view)."""
    image, probs = synthetic_case()
    p = torch.from_numpy(probs[:classes] / probs[:classes].sum(0))
    before = p.clone()
    for logits in (False, True):
        with torch.no_grad():
            dense_crf(image, p, logits=logits)
        assert torch.equal(p, before)


def test_tensor_image_equals_numpy_image():
    image, probs = synthetic_case()
    p = torch.from_numpy(probs)
    assert torch.equal(dense_crf(torch.from_numpy(image), p), dense_crf(image, p))


def test_logits_give_the_same_result_as_probabilities():
    """U = −logits; log-probabilities (none below the 1e-5 clip), shifted per pixel, are the same unary."""
    image, probs = synthetic_case()
    p = torch.from_numpy(probs)
    assert p.min() > 1e-5
    shift = torch.from_numpy(np.random.default_rng(5).normal(0, 3, probs.shape[1:]).astype(np.float32))
    expected = dense_crf(image, p)
    torch.testing.assert_close(dense_crf(image, p.log(), logits=True), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(dense_crf(image, p.log() + shift, logits=True), expected, rtol=0, atol=1e-5)


def test_zero_iterations_return_the_clipped_renormalised_probabilities():
    image, probs = synthetic_case()
    probs[:, :4, :4] = np.array([1, 0, 0, 0], dtype=np.float32)[:, None, None]  # zeros get clipped to 1e-5
    p = torch.from_numpy(probs)
    clipped = p.clamp(1e-5, 1)
    torch.testing.assert_close(dense_crf(image, p, iterations=0), clipped / clipped.sum(0), rtol=0, atol=1e-6)


def test_each_kernel_changes_the_result():
    image, probs = synthetic_case(seed=4)
    p = torch.from_numpy(probs)
    both = dense_crf(image, p)
    assert (both - dense_crf(image, p, bilateral_compat=0)).abs().max() > 1e-2
    assert (both - dense_crf(image, p, gaussian_compat=0)).abs().max() > 1e-2
    unary_only = dense_crf(image, p, gaussian_compat=0, bilateral_compat=0)
    torch.testing.assert_close(unary_only, dense_crf(image, p, iterations=0), rtol=0, atol=1e-6)


def test_float64_probabilities_give_float64():
    image, probs = synthetic_case()
    q64 = dense_crf(image, torch.from_numpy(probs).double())
    assert q64.dtype == torch.float64
    torch.testing.assert_close(q64.float(), dense_crf(image, torch.from_numpy(probs)), rtol=0, atol=1e-5)


# --- errors ---------------------------------------------------------------------------------------------


def test_rejects_bad_inputs():
    image, probs = synthetic_case()
    p = torch.from_numpy(probs)
    num_classes = probs.shape[0]
    with pytest.raises(ValueError, match="but the probabilities are"):
        dense_crf(image[:-1], p)
    with pytest.raises(ValueError, match="but the probabilities are"):
        dense_crf(torch.from_numpy(image).permute(2, 0, 1)[None].expand(2, -1, -1, -1), p[None])
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(image.astype(np.float32), p)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        dense_crf(np.concatenate([image, image[..., :1]], 2), p)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        dense_crf(torch.from_numpy(image).permute(2, 0, 1)[None, :2], p[None])
    with pytest.raises(ValueError, match="logits=True"):
        dense_crf(image, 2 * p)
    with pytest.raises(ValueError, match="logits=True"):
        dense_crf(image, p.log())
    with pytest.raises(ValueError, match="compatibility matrix must be"):
        dense_crf(image, p, compat=torch.eye(num_classes + 1))
    with pytest.raises(ValueError, match="compatibility matrix must be"):
        dense_crf(image, p, bilateral_compat=torch.eye(num_classes - 1))
    with pytest.raises(ValueError, match="a number or a C×C matrix"):
        dense_crf(image, p, gaussian_compat=torch.ones(num_classes))
    with pytest.raises(ValueError, match="normalization must be one of"):
        dense_crf(image, p, normalization="per-pixel")


# --- gradients ------------------------------------------------------------------------------------------


def tiny_case():
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    logits = torch.from_numpy(rng.normal(0, 1, (3, 5, 6)))
    return image, logits


def test_gradcheck_logits():
    image, logits = tiny_case()
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: dense_crf(image, z, 2, logits=True), (logits,))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradcheck_kernel_weights(normalization):
    """The weight enters each normalisation's filter on another side (after or without D)."""
    image, logits = tiny_case()
    weights = (torch.tensor(3.0, dtype=torch.float64, requires_grad=True),
               torch.tensor(10.0, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(
        lambda a, b: dense_crf(image, logits, 2, gaussian_compat=a, bilateral_compat=b,
                               normalization=normalization, logits=True), weights)


def test_gradcheck_compat_matrix():
    image, logits = tiny_case()
    compat = torch.from_numpy(np.random.default_rng(12).normal(0, 1, (3, 3))).requires_grad_()
    probs = torch.softmax(logits, 0)
    assert torch.autograd.gradcheck(lambda m: dense_crf(image, probs, 2, compat=m), (compat,))


# --- devices --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_cuda_matches_cpu(normalization):
    cases = [synthetic_case(40, 52, num_classes=5, seed=s) for s in (6, 7)]
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image, _ in cases])
    probs = torch.stack([torch.from_numpy(p) for _, p in cases])
    cpu = dense_crf(images, probs, normalization=normalization)
    gpu = dense_crf(images.cuda(), probs.cuda(), normalization=normalization)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)
    single = dense_crf(torch.from_numpy(cases[0][0]).cuda(), probs[0].cuda(), normalization=normalization)
    torch.testing.assert_close(single.cpu(), cpu[0], rtol=0, atol=1e-4)
