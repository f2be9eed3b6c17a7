"""Prediction at scale: folders mirrored into the output, batches that give the batch-1 results, --resize,
--skip-existing, --save-probs, ONNX batches, and bad input refused before any work."""
import contextlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import seglab
from seglab.cli import main
from seglab.engine.inference import infer_logits, predict_labels
from seglab.data.images import read_image
from seglab.engine import inputs
from seglab.engine.inputs import find_inputs
from seglab.engine.predict import predict
from seglab.export import OnnxModel, to_onnx

SMALL_MASKRCNN = dict(frozen_bn=False, trainable_backbone_layers=5, fpn_channels=32, representation_size=64,
                      mask_layers=(16,), anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_test=100,
                      rpn_post_nms_top_n_test=50, min_size=64, max_size=64, box_score_thresh=0.0)


def semantic_model(seed: int = 0) -> torch.nn.Module:
    """A tiny DeepLabv3 (4 classes) in eval mode, initialised from ``seed``: its predictions vary over an image."""
    torch.manual_seed(seed)
    return seglab.models.create("deeplabv3_resnet50", 4, width_mult=0.0625).eval()


def write_image(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def labels(path):
    return torch.from_numpy(np.array(Image.open(path))).long()


def test_folder_outputs_mirror_the_inputs_paths_and_explicit_files_keep_their_folders_name(tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "a" / "b" / "img.png", 24, 32, 0)
    write_image(folder / "top.JPG", 24, 32, 1)
    (folder / "notes.txt").write_text("not an image: left out by the default extensions")
    for seed, parent in enumerate(["x", "y"]):
        write_image(tmp_path / parent / "coffee.png", 20, 28, seed + 2)
    summary = predict(semantic_model(), [folder, tmp_path / "x" / "coffee.png", tmp_path / "y" / "coffee.png"],
                      tmp_path / "out")
    assert files_under(tmp_path / "out") == sorted(
        ["a/b/img.png", "a/b/img_overlay.png", "top.png", "top_overlay.png", "x/coffee.png", "x/coffee_overlay.png",
         "y/coffee.png", "y/coffee_overlay.png"])
    assert summary.startswith("wrote 8 files") and "for 4 inputs" in summary
    assert labels(tmp_path / "out" / "a" / "b" / "img.png").shape == (24, 32)


def test_two_inputs_mapping_to_one_output_are_refused_before_any_work(tmp_path):
    write_image(tmp_path / "in" / "first.png", 16, 16, 0)
    write_image(tmp_path / "in" / "scene.png", 16, 16, 1)
    write_image(tmp_path / "in" / "scene.jpg", 16, 16, 2)
    with pytest.raises(ValueError, match=r"scene\.jpg and .*scene\.png would both write .*scene\.png"):
        predict(semantic_model(), [tmp_path / "in"], tmp_path / "out")
    assert files_under(tmp_path / "out") == [] if (tmp_path / "out").exists() else True


def test_batches_of_same_size_images_give_exactly_the_batch_one_label_maps(tmp_path):
    model = semantic_model()
    sizes = [(32, 40), (32, 40), (27, 35), (32, 40), (27, 35), (32, 40)]
    images = [write_image(tmp_path / "in" / f"{i}.png", h, w, i) for i, (h, w) in enumerate(sizes)]
    for batch_size in (1, 4):
        predict(model, [tmp_path / "in"], tmp_path / f"b{batch_size}", batch_size=batch_size)
    for i, image in enumerate(images):
        expected = predict_labels(model, image[None], model.meta["mean"], model.meta["std"])[0]
        got = labels(tmp_path / "b4" / f"{i}.png")
        assert torch.equal(got, expected) and torch.equal(labels(tmp_path / "b1" / f"{i}.png"), expected)
        assert (tmp_path / "b4" / f"{i}.png").read_bytes() == (tmp_path / "b1" / f"{i}.png").read_bytes()
    assert len(torch.unique(torch.cat([labels(p).flatten() for p in (tmp_path / "b4").glob("?.png")]))) > 1


def test_resize_batches_any_sizes_like_resizing_one_at_a_time_with_labels_at_each_images_size(tmp_path):
    model = semantic_model(1)
    sizes = [(30, 40), (41, 33), (24, 24)]
    for i, (h, w) in enumerate(sizes):
        write_image(tmp_path / "in" / f"{i}.png", h, w, i)
    for batch_size in (1, 3):
        predict(model, [tmp_path / "in"], tmp_path / f"b{batch_size}", batch_size=batch_size, resize=(32, 32))
    for i, (h, w) in enumerate(sizes):
        assert labels(tmp_path / "b3" / f"{i}.png").shape == (h, w)
        assert torch.equal(labels(tmp_path / "b3" / f"{i}.png"), labels(tmp_path / "b1" / f"{i}.png"))
    with pytest.raises(ValueError, match="--resize and --resize-short"):
        predict(model, [tmp_path / "in"], tmp_path / "both", resize=(32, 32), resize_short=32)


def test_save_probs_writes_float16_softmax_of_the_logits(tmp_path):
    model = semantic_model(2)
    image = write_image(tmp_path / "in" / "scene.png", 28, 36, 0)
    predict(model, [tmp_path / "in"], tmp_path / "out", save_probs=True, batch_size=2)
    saved = np.load(tmp_path / "out" / "scene_probs.npz")
    assert list(saved) == ["probs"] and saved["probs"].dtype == np.float16 and saved["probs"].shape == (4, 28, 36)
    expected = infer_logits(model, image[None], model.meta["mean"], model.meta["std"])[0].softmax(0)
    assert np.abs(saved["probs"].astype(np.float32) - expected.numpy()).max() < 2e-3
    saved_labels = torch.from_numpy(saved["probs"].astype(np.float32)).argmax(0)
    agreement = saved_labels == labels(tmp_path / "out" / "scene.png")
    assert agreement.float().mean() > 0.99  # float16 can only flip near-ties


def test_skip_existing_predicts_only_inputs_with_a_missing_output_and_says_how_many_it_skipped(tmp_path):
    model = semantic_model()
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", 16, 20, i)
    predict(model, [tmp_path / "in"], tmp_path / "out")
    (tmp_path / "out" / "1_overlay.png").unlink()
    before = (tmp_path / "out" / "0.png").stat().st_mtime_ns
    summary = predict(model, [tmp_path / "in"], tmp_path / "out", skip_existing=True)
    assert summary.startswith("wrote 2 files") and "for 1 inputs" in summary and "skipped 2 inputs" in summary
    assert (tmp_path / "out" / "1_overlay.png").is_file() and (tmp_path / "out" / "0.png").stat().st_mtime_ns == before


def test_an_interrupted_predict_leaves_no_truncated_file_and_skip_existing_redoes_that_input(tmp_path, monkeypatch):
    model = semantic_model()
    for i in range(2):
        write_image(tmp_path / "in" / f"{i}.png", 16, 20, i)
    real_save, saves = Image.Image.save, []

    def dies_inside_the_second_overlay(image, fp, *args, **kwargs):  # saves: 0.png, 0_overlay.png, 1.png, 1_overlay
        saves.append(fp)
        if len(saves) == 4:
            with contextlib.nullcontext(fp) if hasattr(fp, "write") else open(fp, "wb") as file:
                file.write(b"\x89PNG\r\n")  # a few bytes of the file, then the process is interrupted
            raise KeyboardInterrupt
        return real_save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dies_inside_the_second_overlay)
    with pytest.raises(KeyboardInterrupt):
        predict(model, [tmp_path / "in"], tmp_path / "out", save_probs=True)
    assert files_under(tmp_path / "out") == ["0.png", "0_overlay.png", "0_probs.npz", "1.png"]  # no temporary left
    monkeypatch.setattr(Image.Image, "save", real_save)
    summary = predict(model, [tmp_path / "in"], tmp_path / "out", save_probs=True, skip_existing=True)
    assert "for 1 inputs" in summary and "skipped 1 inputs" in summary
    with Image.open(tmp_path / "out" / "1_overlay.png") as overlay:
        overlay.load()  # whole
    assert np.load(tmp_path / "out" / "1_probs.npz")["probs"].shape == (4, 16, 20)


def test_instance_batches_detect_the_same_boxes_as_one_image_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = seglab.models.create("maskrcnn_resnet18_fpn", 3, **SMALL_MASKRCNN).eval()
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", 48, 56, i)
    for batch_size in (1, 3):
        predict(model, [tmp_path / "in"], tmp_path / f"b{batch_size}", batch_size=batch_size, score_threshold=0.0)
    for i in range(3):
        one, batched = (json.loads((tmp_path / f"b{b}" / f"{i}.json").read_text()) for b in (1, 3))
        assert len(one) == len(batched) > 0
        assert np.abs(np.array([d["box"] for d in one]) - np.array([d["box"] for d in batched])).max() < 0.05
        assert [d["label"] for d in one] == [d["label"] for d in batched]
        assert Image.open(tmp_path / "b3" / f"{i}_instances.png").size == (56, 48)
    with pytest.raises(ValueError, match="--save-probs applies to semantic models only"):
        predict(model, [tmp_path / "in"], tmp_path / "probs", save_probs=True)


def test_onnx_batches_of_a_batch_one_export_equal_the_pytorch_models_one_at_a_time(tmp_path):
    # a static export takes batches of one (its dynamic twin takes any batch: to_onnx checks a batch of two)
    model = semantic_model(3)
    to_onnx(model, tmp_path / "model.onnx", height=32, width=40, dynamic=False)
    images = [write_image(tmp_path / "in" / f"{i}.png", 32, 40, i) for i in range(3)]
    predict(OnnxModel(tmp_path / "model.onnx"), [tmp_path / "in"], tmp_path / "out", batch_size=3)
    for i, image in enumerate(images):
        expected = predict_labels(model, image[None], model.meta["mean"], model.meta["std"])[0]
        assert (labels(tmp_path / "out" / f"{i}.png") == expected).float().mean() > 0.999


@pytest.mark.parametrize("case", ["empty folder", "glob matches nothing", "missing", "unreadable"])
def test_bad_inputs_are_refused_naming_the_file_before_any_work(case, tmp_path):
    write_image(tmp_path / "in" / "good.png", 16, 16, 0)
    sources, options = [tmp_path / "in"], {}
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        sources, match = [tmp_path / "empty"], "empty: no file in this folder matches an image or video extension"
    elif case == "glob matches nothing":
        options, match = {"glob": "*.tif"}, r"in: no file in this folder matches --glob '\*\.tif'"
    elif case == "missing":
        sources, match = [tmp_path / "in", tmp_path / "gone.png"], "gone.png: no such file or folder"
    else:
        (tmp_path / "in" / "zz.png").write_bytes(b"\x89PNG not really")
        match = "cannot read .*zz.png"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        predict(semantic_model(), sources, tmp_path / "out", **options)
    assert not (tmp_path / "out" / "good.png").exists()


def test_output_folder_inside_an_input_folder_is_not_predicted_again(tmp_path):
    write_image(tmp_path / "in" / "scene.png", 16, 16, 0)
    (tmp_path / "in" / "pred").mkdir()
    (tmp_path / "in" / "pred" / "scene.png").write_bytes(b"an earlier output")
    assert [item.name.as_posix() for item in find_inputs([tmp_path / "in"], exclude=tmp_path / "in" / "pred")] \
        == ["scene"]


def test_cli_predict_takes_a_folder_glob_batch_size_and_skip_existing(tmp_path, capsys):
    model = semantic_model()
    torch.save({"model": model.state_dict(), "meta": model.meta}, tmp_path / "model.pt")
    for i in range(3):
        write_image(tmp_path / "in" / "sub" / f"{i}.png", 16, 20, i)
    write_image(tmp_path / "in" / "left_out.jpg", 16, 20, 9)
    args = ["predict", "--checkpoint", str(tmp_path / "model.pt"), str(tmp_path / "in"), "--glob", "*.png",
            "--batch-size", "2", "--out", str(tmp_path / "out")]
    main(args)
    assert "wrote 6 files" in capsys.readouterr().out
    assert files_under(tmp_path / "out") == sorted(f"sub/{i}{s}.png" for i in range(3) for s in ("", "_overlay"))
    main(args + ["--skip-existing"])
    assert "skipped 3 inputs whose outputs exist" in capsys.readouterr().out



def test_image_batches_stack_one_size_each_and_hold_at_most_two_batches_of_images(tmp_path, monkeypatch):
    for i in range(13):  # five sizes, interleaved
        write_image(tmp_path / "in" / f"{i:02d}.png", 16, 16 + i % 5, i)
    items, reads = find_inputs([tmp_path / "in"]), []
    monkeypatch.setattr(inputs, "read_image", lambda path: reads.append(path) or read_image(path))
    seen = []
    for batch in inputs.image_batches(items, 2, by_size=True):
        assert len(batch) <= 2 and len({tuple(image.shape) for _, image in batch}) == 1
        seen += [item.name.as_posix() for item, _ in batch]
        assert len(reads) - len(seen) <= 2 * 2  # images read and not yet given out
    assert sorted(seen) == [f"{i:02d}" for i in range(13)]
