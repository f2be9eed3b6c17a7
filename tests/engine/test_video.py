"""Video prediction: overlay videos read back with PyAV (frames, frame rate, size, codec), per-frame label PNGs equal
to predicting the decoded frames one by one, odd sizes, streaming in batches, and bad or unsupported input."""
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import seglab
from seglab import viz
from seglab.engine import video
from seglab.engine.inference import predict_labels
from seglab.engine.predict import predict

av = pytest.importorskip("av")
SMALL_MASKRCNN = dict(frozen_bn=False, trainable_backbone_layers=5, fpn_channels=32, representation_size=64,
                      mask_layers=(16,), anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_test=100,
                      rpn_post_nms_top_n_test=50, min_size=64, max_size=64, box_score_thresh=0.0)


def write_video(path, frames=12, height=48, width=64, fps=5, seed=0):
    """An MP4 (libx264 or mpeg4; yuv420p, yuv444p for odd sizes) of random blocks changing every frame; its frames as
    PyAV decodes them come back from ``decoded``."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (frames, 3, height // 8 + 1, width // 8 + 1), generator=generator, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(video.codec(), rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        for block in blocks:
            pixels = block.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :height, :width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels.permute(1, 2, 0).numpy(), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decoded(path):
    with av.open(str(path)) as container:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]


def semantic_model():
    torch.manual_seed(0)
    return seglab.models.create("deeplabv3_resnet50", 4, width_mult=0.0625).eval()


def test_semantic_overlay_video_keeps_frames_rate_and_size_and_its_masks_equal_frame_by_frame_prediction(tmp_path):
    source = write_video(tmp_path / "clips" / "street.mp4")
    model = semantic_model()
    summary = predict(model, [tmp_path / "clips"], tmp_path / "out", batch_size=5, video_masks=True)
    written = tmp_path / "out" / "street_overlay.mp4"
    with av.open(str(written)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
        assert stream.average_rate == Fraction(5) and stream.codec_context.name == {"libx264": "h264"}.get(
            video.codec(), video.codec())
    frames, drawn = decoded(source), decoded(written)
    assert len(frames) == len(drawn) == 12
    assert f"videos encoded with {video.codec()}" in summary and summary.startswith("wrote 13 files")
    for index, frame in enumerate(frames):
        expected = predict_labels(model, frame[None], model.meta["mean"], model.meta["std"])[0]
        mask = Image.open(tmp_path / "out" / "street" / f"frame_{index:06d}.png")
        assert mask.mode == "P" and torch.equal(torch.from_numpy(np.array(mask)).long(), expected)
        overlay = torch.from_numpy(np.array(viz.overlay(frame, expected, model.meta["palette"]))).float()
        assert (drawn[index].permute(1, 2, 0).float() - overlay).abs().mean() < 12  # lossy codec, 8-bit chroma halved
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_odd_frame_sizes_are_padded_to_even_ones_and_said_so(tmp_path):
    source = write_video(tmp_path / "odd.mp4", frames=3, height=47, width=63)
    summary = predict(semantic_model(), [source], tmp_path / "out", batch_size=2)
    written = tmp_path / "out" / "odd_overlay.mp4"
    with av.open(str(written)) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height, context.pix_fmt) == (64, 48, "yuv420p")
    assert len(decoded(written)) == 3 and "63×47 frames padded to 64×48" in summary


def test_frames_are_streamed_a_batch_at_a_time(tmp_path):
    source = write_video(tmp_path / "long.mp4", frames=7)
    calls = []

    def plain(frames):
        calls.append(len(frames))
        return [(Image.fromarray(frame.permute(1, 2, 0).numpy()), None) for frame in frames]

    assert video.map_video(source, tmp_path / "out.mp4", plain, batch_size=3) == 7
    assert calls == [3, 3, 1] and len(decoded(tmp_path / "out.mp4")) == 7


def test_instance_video_draws_every_frame(tmp_path):
    source = write_video(tmp_path / "cars.mp4", frames=3, height=40, width=48)
    torch.manual_seed(0)
    model = seglab.models.create("maskrcnn_resnet18_fpn", 3, **SMALL_MASKRCNN).eval()
    predict(model, [source], tmp_path / "out", batch_size=2, score_threshold=0.0, video_masks=True)
    written = tmp_path / "out" / "cars_overlay.mp4"
    assert len(decoded(written)) == 3
    masks = sorted((tmp_path / "out" / "cars").glob("frame_*.png"))
    assert len(masks) == 3 and Image.open(masks[0]).size == (48, 40)


def test_a_video_that_cannot_be_opened_is_refused_before_any_work(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"cannot open video .*broken\.mp4"):
        predict(semantic_model(), [tmp_path / "in"], tmp_path / "out")
    assert not (tmp_path / "out" / "a.png").exists()


def test_without_pyav_video_prediction_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ValueError, match=r"video prediction needs PyAV: pip install 'seglab\[video\]'"):
        video.probe(tmp_path / "clip.mp4")
