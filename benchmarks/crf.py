"""Dense CRF: seglab.crf.dense_crf (PyTorch, CPU) vs pydensecrf (Krähenbühl's C++, single-threaded).

Workload: a real photograph from scikit-image resized to W×H, 21 labels, realistic unaries (a colour
quantisation of the photo as the label map, made coarse ×8 and noisy, through a softmax), pydensecrf's
example kernels (smoothness θγ = 3, w2 = 3; appearance θα = 80, θβ = 13, w1 = 10), 10 iterations.
Each timing is the lattice build plus the iterations, the median of ``--repeats`` runs interleaved
with the peer in one process, at 1 and 2 torch threads. The seglab time is split into the build (both
lattices and their normalisation) and the iterations. The last columns check agreement on the same run.
A second table checks agreement for each kernel normalisation (``dense_crf(normalization=...)`` against
pydensecrf's NORMALIZE_SYMMETRIC / AFTER / BEFORE / NO_NORMALIZATION) at the first size.

    python benchmarks/crf.py [--repeats 7] [--image coffee] [--sizes 500x375 1024x768] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from seglab.crf import NORMALIZATIONS, dense_crf
from seglab.engine.benchmark import cpu_name

NUM_LABELS = 21
KERNELS = dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0)


def photo(name: str, width: int, height: int) -> np.ndarray:
    """A scikit-image sample photograph as writable uint8 (H, W, 3)."""
    from skimage import data

    return np.array(Image.fromarray(getattr(data, name)()).convert("RGB").resize((width, height), Image.BILINEAR))


def realistic_probs(image: np.ndarray, num_labels: int, seed: int = 0) -> np.ndarray:
    """(C, H, W) float32 softmax of a coarse, noisy label map that follows the photo's colour regions."""
    height, width = image.shape[:2]
    labels = np.array(Image.fromarray(image).quantize(colors=num_labels, kmeans=2), dtype=np.int64) % num_labels
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), num_labels).permute(2, 0, 1).float()[None]
    coarse = torch.nn.functional.avg_pool2d(onehot, 8, ceil_mode=True)
    blurred = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(seed))
    return torch.softmax(4.0 * blurred + 0.5 * noise, 0).numpy()


#: seglab's ``normalization`` -> pydensecrf's NormalizationType name.
PEER_NORMALIZATION = {"symmetric": "NORMALIZE_SYMMETRIC", "after": "NORMALIZE_AFTER", "before": "NORMALIZE_BEFORE",
                      "none": "NO_NORMALIZATION"}


def pydensecrf_q(image: np.ndarray, probs: np.ndarray, normalization: str = "symmetric") -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    num_labels, height, width = probs.shape
    norm = getattr(dcrf, PEER_NORMALIZATION[normalization])
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=KERNELS["gaussian_sxy"], compat=KERNELS["gaussian_compat"], normalization=norm)
    crf.addPairwiseBilateral(sxy=KERNELS["bilateral_sxy"], srgb=KERNELS["bilateral_srgb"], rgbim=image,
                             compat=KERNELS["bilateral_compat"], normalization=norm)
    return np.array(crf.inference(10)).reshape(num_labels, height, width)


@torch.no_grad()
def seglab_q(image: np.ndarray, probs: torch.Tensor, iterations: int = 10, normalization: str = "symmetric"
             ) -> np.ndarray:
    return dense_crf(image, probs, iterations, normalization=normalization, **KERNELS).numpy()


def agreement(reference: np.ndarray, result: np.ndarray, probs: np.ndarray) -> str:
    """The agreement columns: max / mean |ΔQ|, argmax agreement, labels the peer's CRF changed."""
    delta = np.abs(result - reference)
    agree = (result.argmax(0) == reference.argmax(0)).mean()
    changed = (reference.argmax(0) != probs.argmax(0)).mean()
    return f"{delta.max():.1e} / {delta.mean():.1e} | {100 * agree:.4f}% | {100 * changed:.1f}% |"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(image_name: str, width: int, height: int, threads: int, repeats: int) -> str:
    torch.set_num_threads(threads)
    image = photo(image_name, width, height)
    probs = realistic_probs(image, NUM_LABELS)
    probs_t = torch.from_numpy(probs)
    seglab_q(image, probs_t)  # warm-up
    peer, ours, build = [], [], []
    for _ in range(repeats):
        peer.append(timed(lambda: pydensecrf_q(image, probs)))
        ours.append(timed(lambda: seglab_q(image, probs_t)))
        build.append(timed(lambda: seglab_q(image, probs_t, iterations=0)))
    p, o, b = (statistics.median(t) for t in (peer, ours, build))
    return (f"| {width}×{height}, {NUM_LABELS} labels | {threads} | {p:.3f} | {o:.3f} | {o / p:.2f} | {b:.3f} | "
            f"{o - b:.3f} | {agreement(pydensecrf_q(image, probs), seglab_q(image, probs_t), probs)}")


def normalization_rows(image_name: str, width: int, height: int) -> list[str]:
    """One agreement row per kernel normalisation, each side run with that setting."""
    image = photo(image_name, width, height)
    probs = realistic_probs(image, NUM_LABELS)
    probs_t = torch.from_numpy(probs)
    return [f"| {width}×{height} | {name} | {PEER_NORMALIZATION[name]} | "
            f"{agreement(pydensecrf_q(image, probs, name), seglab_q(image, probs_t, normalization=name), probs)}"
            for name in NORMALIZATIONS]


def size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H) in pixels."""
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WxH such as 500x375, got {text!r}")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--image", default="coffee", help="scikit-image sample: coffee, astronaut, chelsea, ...")
    parser.add_argument("--sizes", type=size, nargs="+", default=[(500, 375), (1024, 768)], metavar="WxH",
                        help="image sizes in pixels (default: 500x375 1024x768)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default: 1 2)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} "
          f"threads available; image skimage.data.{args.image}; median of {args.repeats}\n")
    print("| workload | torch threads | pydensecrf (s) | seglab (s) | ratio (seglab / peer) | seglab build (s) | "
          "seglab 10 iterations (s) | max / mean abs ΔQ | argmax agreement | labels the CRF changed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width, height in args.sizes:
        for threads in args.threads:
            print(row(args.image, width, height, threads, args.repeats), flush=True)
    print("\n| workload | normalization | pydensecrf | max / mean abs ΔQ | argmax agreement | "
          "labels the CRF changed |")
    print("|---|---|---|---:|---:|---:|")
    print("\n".join(normalization_rows(args.image, *args.sizes[0])))


if __name__ == "__main__":
    main()
