"""The permutohedral lattice against an exact dense Gaussian filter (float64 numpy) and against itself.

Exactness against the lattice of pydensecrf (Krähenbühl's C++) is checked through the full CRF pipeline
in ``test_dense_crf.py``; here the reference is the brute-force N×N kernel the lattice approximates.
"""
import numpy as np
import pytest
import torch

from seglab.crf import NORMALIZATIONS, LatticeFilter, PermutohedralLattice
from seglab.crf import lattice as lattice_module

H, W = 9, 11


def positions(height=H, width=W, sxy=2.0):
    """(H*W, 2) pixel positions x/sxy, y/sxy in row-major order, as dense_crf builds them."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y], -1).reshape(-1, 2) / sxy


def two_region_image(seed):
    """A 9×11 uint8 image: a dark left and a bright right part, plus seeded colour noise (std 10)."""
    rng = np.random.default_rng(seed)
    image = np.where((np.arange(W) < 5)[None, :, None], 60.0, 180.0) + rng.normal(0, 10, (H, W, 3))
    return np.clip(np.round(image), 0, 255)


def bilateral(image, sxy=2.0, srgb=20.0):
    return np.concatenate([positions(sxy=sxy), image.reshape(-1, 3) / srgb], 1)


def exact_symmetric_filter(features, x):
    """D^-1/2 K D^-1/2 x with K_ij = exp(-|f_i - f_j|²/2), D = diag(K·1), in float64."""
    sq = ((features[:, None] - features[None]) ** 2).sum(-1)
    kernel = np.exp(-sq / 2)
    norm = 1 / np.sqrt(kernel.sum(1))[:, None]
    return norm * (kernel @ (norm * x))


def lattice_symmetric_filter(features, x, pad_multiple=1):
    """The same filter on the permutohedral lattice, normalised with the lattice's own K·1."""
    lattice = PermutohedralLattice(torch.from_numpy(features)[None].float(), pad_multiple=pad_multiple)
    norm = 1 / torch.sqrt(lattice.normalizer().double())
    return lattice.operators(torch.float64, in_scale=norm, out_scale=norm).apply(torch.from_numpy(x)).numpy()


CASES = {  # name -> (features, bound on ‖Δ‖/‖ref‖, bound on the correlation); bounds ≈ 1.5 × measured error
    "gaussian-2d": (positions(), 0.15, 0.99),  # measured 0.098, correlation 0.9937
    "bilateral-random-colours": (bilateral(np.random.default_rng(0).integers(0, 256, (H, W, 3)).astype(float)),
                                 0.13, 0.99),  # measured 0.085, correlation 0.9975
    "bilateral-two-regions": (bilateral(two_region_image(0)), 0.40, 0.94),  # measured 0.268, correlation 0.9618
}


@pytest.mark.parametrize("name", list(CASES))
def test_lattice_approximates_exact_gaussian_filter(name):
    """The whole normalised operator (applied to the identity) against the brute-force dense kernel."""
    features, max_error, min_correlation = CASES[name]
    identity = np.eye(features.shape[0])
    reference = exact_symmetric_filter(features, identity)
    ours = lattice_symmetric_filter(features, identity)
    error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    correlation = np.corrcoef(ours.ravel(), reference.ravel())[0, 1]
    print(f"\n{name}: lattice vs exact relative error {error:.4f}, correlation {correlation:.5f}")
    assert error < max_error
    assert correlation > min_correlation


def test_lattice_filter_on_random_signals_is_close_to_exact():
    """A seeded (N, 4) signal through the bilateral lattice: same accuracy as the operator test."""
    rng = np.random.default_rng(1)
    features = bilateral(rng.integers(0, 256, (H, W, 3)).astype(float))
    x = rng.standard_normal((H * W, 4))
    reference = exact_symmetric_filter(features, x)
    ours = lattice_symmetric_filter(features, x)
    error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    print(f"\nrandom signal: lattice vs exact relative error {error:.4f}")
    assert error < 0.14  # measured 0.092


def test_lattice_filter_sum_equals_sum_of_filters():
    """``LatticeFilter.sum`` of two lattices over the same points = the sum of their outputs."""
    rng = np.random.default_rng(2)
    gaussian = PermutohedralLattice(torch.from_numpy(positions(sxy=1.5))[None].float())
    appearance = PermutohedralLattice(
        torch.from_numpy(bilateral(rng.integers(0, 256, (H, W, 3)).astype(float)))[None].float())
    scale = torch.from_numpy(rng.uniform(0.5, 2.0, H * W))
    f1 = gaussian.operators(torch.float64, in_scale=scale, out_scale=2 * scale)
    f2 = appearance.operators(torch.float64, out_scale=scale)
    x = torch.from_numpy(rng.standard_normal((H * W, 3)))
    combined = LatticeFilter.sum([f1, f2]).apply(x)
    torch.testing.assert_close(combined, f1.apply(x) + f2.apply(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LatticeFilter.sum([f1]).apply(x), f1.apply(x), rtol=0, atol=0)


def assert_same_lattice(lattice, reference):
    """Every splat, blur and slice table of two lattices equal, exactly."""
    for name in ("_splat_point", "_splat_offsets", "_splat_bary", "_slice_vertex", "_slice_bary", "_blur_index",
                 "_blur_weight"):
        torch.testing.assert_close(getattr(lattice, name), getattr(reference, name), rtol=0, atol=0)

def test_building_and_slicing_block_by_block_equals_all_at_once(monkeypatch):
    """The lattice's simplices and codes computed over blocks of points (a large image's) are exactly those
    computed at once; ``accumulate`` (in place, sliced by blocks) adds what ``apply`` returns, and −apply·M."""
    rng = np.random.default_rng(5)
    features = torch.from_numpy(np.stack([bilateral(rng.integers(0, 256, (H, W, 3)).astype(float))] * 2)).float()
    features[1] += 0.3  # two sets, so the set index enters the codes
    whole = PermutohedralLattice(features)
    monkeypatch.setattr(lattice_module, "_BUILD_BLOCK", 7)  # 2·99 + 2 padding points: 29 blocks
    blocked = PermutohedralLattice(features)
    assert_same_lattice(blocked, whole)

    monkeypatch.setattr(lattice_module, "_SLICE_BLOCK", 10)
    filter_ = whole.kernel("symmetric", torch.float64, weight=2.0)
    x, start = torch.from_numpy(rng.random((2 * H * W, 3))), torch.from_numpy(rng.standard_normal((2 * H * W, 3)))
    matrix = torch.from_numpy(rng.standard_normal((3, 3)))
    torch.testing.assert_close(filter_.accumulate(x, start.clone()), start + filter_.apply(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(filter_.accumulate(x, start.clone(), matrix), start - filter_.apply(x) @ matrix,
                               rtol=1e-12, atol=1e-12)



def test_int64_codes_give_the_lattice_of_int32_codes(monkeypatch):
    """Features spanning too many filter widths for int32 vertex codes take the int64 path: same lattice."""
    rng = np.random.default_rng(6)
    features = torch.from_numpy(np.stack([bilateral(rng.integers(0, 256, (H, W, 3)).astype(float))] * 2)).float()
    features[1] += 0.3
    code_dtypes = []
    vertex_codes = lattice_module._vertex_codes

    def recording(*args):
        codes = vertex_codes(*args)
        code_dtypes.append(codes.dtype)
        return codes

    monkeypatch.setattr(lattice_module, "_vertex_codes", recording)
    narrow = PermutohedralLattice(features)
    monkeypatch.setattr(lattice_module, "_INT32_CODES", 0)
    wide = PermutohedralLattice(features)
    assert code_dtypes == [torch.int32, torch.int64]
    assert_same_lattice(wide, narrow)

@pytest.mark.parametrize("pad_multiple", [1, 4])
def test_batched_lattice_is_block_diagonal(pad_multiple):
    """Features (B, N, d) filter each set exactly as a lattice built from that set alone."""
    rng = np.random.default_rng(3)
    n = H * W  # 99: not a multiple of 4, so every set gets its own padding point when pad_multiple=4
    features = torch.from_numpy(rng.normal(0, 2, (3, n, 3))).float()
    features[1] += 0.5  # overlapping sets: a shared lattice would mix them
    x = torch.from_numpy(rng.standard_normal((3 * n, 2)))
    batched = PermutohedralLattice(features, pad_multiple=pad_multiple)
    out = batched.operators(torch.float64).apply(x).view(3, n, 2)
    normalizer = batched.normalizer().view(3, n)
    assert batched.num_points == 3 * n
    for b in range(3):
        alone = PermutohedralLattice(features[b:b + 1], pad_multiple=pad_multiple)
        torch.testing.assert_close(out[b], alone.operators(torch.float64).apply(x.view(3, n, 2)[b]),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(normalizer[b], alone.normalizer(), rtol=1e-6, atol=1e-6)


def test_padding_changes_the_lattice_only_when_points_do_not_fill_blocks_of_four():
    """pydensecrf's all-zero padding point (pad_multiple=4) joins the lattice only when N % 4 != 0."""
    rng = np.random.default_rng(4)
    cloud = rng.normal(2, 1, (99, 3))  # the origin lies just outside the cloud, its simplex touches it
    x = rng.standard_normal((99, 2))

    def filtered(n, pad_multiple):
        lattice = PermutohedralLattice(torch.from_numpy(cloud[:n])[None].float(), pad_multiple=pad_multiple)
        return lattice.operators(torch.float64).apply(torch.from_numpy(x[:n])), lattice.num_vertices

    (plain, v1), (padded, v4) = filtered(99, 1), filtered(99, 4)
    assert v4 > v1  # the padding point's simplex adds vertices next to the cloud's ...
    assert (plain - padded).abs().max() > 1e-3  # ... and they change the blur (measured 0.13)
    (plain, v1), (padded, v4) = filtered(96, 1), filtered(96, 4)
    assert v4 == v1
    assert torch.equal(plain, padded)


def test_normalizer_is_filter_response_to_ones():
    rng = np.random.default_rng(5)
    lattice = PermutohedralLattice(torch.from_numpy(rng.normal(0, 1, (2, 30, 4))).float())
    expected = lattice.operators().apply(torch.ones(60, 1)).view(-1)
    assert lattice.normalizer().shape == (60,)
    torch.testing.assert_close(lattice.normalizer(), expected)
    assert (lattice.normalizer() > 0).all()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_kernel_normalises_the_lattice_matrix_like_densecrf(normalization):
    """``kernel`` applied to the identity = w·K̃ recomputed in float64 from the lattice's own dense K and
    D = K·1: D^-1/2 K D^-1/2, D^-1 K (rows sum to 1), K D^-1 (columns sum to 1), K."""
    rng = np.random.default_rng(6)
    lattice = PermutohedralLattice(
        torch.from_numpy(bilateral(rng.integers(0, 256, (H, W, 3)).astype(float)))[None].float())
    identity = torch.eye(H * W, dtype=torch.float64)
    k = lattice.operators(torch.float64).apply(identity)
    d = k.sum(1)
    expected = {"symmetric": k / d.sqrt()[:, None] / d.sqrt()[None], "after": k / d[:, None],
                "before": k / d[None], "none": k}[normalization]
    ours = lattice.kernel(normalization, torch.float64, weight=2.5).apply(identity)
    torch.testing.assert_close(ours, 2.5 * expected, rtol=1e-5, atol=1e-9)


def test_kernel_rejects_unknown_normalization():
    lattice = PermutohedralLattice(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="normalization must be one of"):
        lattice.kernel("after-and-before")


@pytest.mark.parametrize("shape", [(99, 2), (2, 3, 4, 2), (5,)])
def test_lattice_rejects_features_that_are_not_3d(shape):
    with pytest.raises(ValueError, match=r"features must be \(B, N, d\)"):
        PermutohedralLattice(torch.zeros(shape))
