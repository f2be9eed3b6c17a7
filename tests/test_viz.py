import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab import viz
from seglab.data.palette import voc_palette
from seglab.viz import colorize, grid, overlay, plot_curves, plot_per_class_iou


def random_mask(seed, shape=(13, 17), num_classes=21):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, num_classes, shape)
    mask[rng.random(shape) < 0.1] = 255
    return mask


@pytest.mark.parametrize("as_tensor", [False, True])
def test_colorize_round_trips_class_ids_and_uses_the_palette(as_tensor):
    mask = random_mask(0)
    palette = voc_palette()
    img = colorize(torch.from_numpy(mask) if as_tensor else mask, palette)
    assert img.mode == "P" and img.size == (17, 13)
    np.testing.assert_array_equal(np.array(img), mask)
    rgb = np.array(img.convert("RGB"))
    np.testing.assert_array_equal(rgb, np.array(palette, dtype=np.uint8)[mask])


def test_viz_voc_palette_is_the_alias_of_the_data_palette():
    assert viz.voc_palette is voc_palette


def test_colorize_rejects_values_outside_0_255():
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[0, 256]]), voc_palette())


def test_colorize_pads_a_short_palette_with_black():
    img = colorize(np.array([[0, 1, 2]]), [(10, 20, 30), (40, 50, 60)])
    assert np.array(img.convert("RGB")).tolist() == [[[10, 20, 30], [40, 50, 60], [0, 0, 0]]]


def test_overlay_alpha_0_is_the_image_and_alpha_1_the_palette_colours():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    mask = random_mask(1)
    palette = voc_palette()
    labelled = mask != 255
    for img in (image, torch.from_numpy(image).permute(2, 0, 1).contiguous()):
        assert np.array_equal(np.array(overlay(img, mask, palette, alpha=0.0)), image)
        opaque = np.array(overlay(img, mask, palette, alpha=1.0))
        np.testing.assert_array_equal(opaque[labelled], np.array(palette, np.uint8)[mask][labelled])
        np.testing.assert_array_equal(opaque[~labelled], image[~labelled])


def test_overlay_half_alpha_is_the_rounded_mean_of_image_and_colour():
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    out = overlay(image, np.array([[1, 255]]), [(0, 0, 0), (201, 0, 50)], alpha=0.5)
    assert out.mode == "RGB"
    assert np.array(out).tolist() == [[[150, 50, 75], [100, 100, 100]]]


def test_overlay_rejects_image_and_mask_of_different_sizes():
    with pytest.raises(ValueError, match="matching mask"):
        overlay(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), np.int64), voc_palette())


def test_grid_size_is_cells_plus_padding_and_cells_land_at_their_offsets():
    w, h, pad = 10, 8, 3
    colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(9, 9, 9), (200, 100, 0)]]
    rows = [[Image.new("RGB", (w, h), c) for c in colours[0]],
            # other sizes and modes are resized to the first cell
            [Image.new("RGB", (20, 5), colours[1][0]), colorize(np.ones((3, 3), int),
                                                              [(0, 0, 0), colours[1][1]])]]
    out = grid(rows, pad=pad)
    assert out.size == (3 * w + 4 * pad, 2 * h + 3 * pad)
    pixels = np.array(out)
    for r, row in enumerate(colours):
        for c, colour in enumerate(row):
            y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
            assert (pixels[y0:y0 + h, x0:x0 + w] == colour).all(), (r, c)
    assert (pixels[-pad:] == 255).all()  # padding and the missing third cell of row 2 are white
    assert (pixels[h + 2 * pad:, 2 * (w + pad) + pad:] == 255).all()

    titled = grid(rows, titles=["input", "truth", "prediction"], pad=pad)
    title_h = titled.height - out.height
    assert titled.width == out.width and title_h > 0
    assert (np.array(titled)[:title_h] < 128).any()  # the titles are drawn in black
    with pytest.raises(ValueError, match="titles"):
        grid(rows, titles=["only one"])


def write_jsonl(path, with_val):
    lines = [{"step": s, "loss": 2.0 / s, "lr": 0.01 * (1 - s / 100)} for s in range(1, 100, 5)]
    if with_val:
        lines += [{"step": s, "val/miou": s / 200, "val/pixel_acc": s / 120} for s in (50, 100)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


@pytest.mark.parametrize("with_val", [False, True])
def test_plot_curves_writes_a_readable_png_with_and_without_validation(tmp_path, with_val):
    write_jsonl(tmp_path / "metrics.jsonl", with_val)
    plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as img:
        img.load()
        assert img.format == "PNG"
        assert img.width == (1350 if with_val else 900)  # 4.5 inch per panel at 100 dpi


def test_plot_curves_names_the_line_of_a_bad_record(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"loss": 2.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: .*'step'"):
        plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")


def test_plot_per_class_iou_writes_a_readable_png(tmp_path):
    plot_per_class_iou([0.9, float("nan"), 0.3], ["bg", "cat", "dog"], tmp_path / "iou.png")
    with Image.open(tmp_path / "iou.png") as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > 0
