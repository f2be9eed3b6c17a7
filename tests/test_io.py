import pytest
import torch

from seglab import io as ckpt
from seglab.engine import rng


def test_save_is_atomic_a_failed_write_never_replaces_last(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    good = path.read_bytes()

    def partial_write(obj, f):  # the process dies half-way through writing the new checkpoint
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", partial_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temp file is cleaned up
    assert ckpt.safe_load(path)["step"] == 1


def test_load_uses_weights_only_and_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": object()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        ckpt.safe_load(path)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = rng.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.save_checkpoint({"rng": state}, tmp_path / "r.pt")
    rng.set_rng_state(ckpt.safe_load(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resolve_checkpoint_prefers_best_then_last(tmp_path):
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        ckpt.resolve_checkpoint(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert ckpt.resolve_checkpoint(tmp_path).name == "last.pt"
    (tmp_path / "best.pt").write_bytes(b"")
    assert ckpt.resolve_checkpoint(tmp_path).name == "best.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.safe_load(tmp_path / "missing.pt")


def test_safetensors_round_trip_copies_aliased_views_and_keeps_the_meta(tmp_path):
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    state = {"tied.weight": weight, "decoder.weight": weight, "row": weight[1], "transposed": weight.t(),
             "empty": torch.zeros(0), "num_batches_tracked": torch.tensor(3)}
    meta = {"model": "fcn8s_vgg16", "classes": ["background", "cat"], "mean": [0.485, 0.456, 0.406]}
    path = ckpt.save_safetensors(state, tmp_path / "tied.safetensors", meta=meta)
    assert [p.name for p in tmp_path.iterdir()] == ["tied.safetensors"]  # no temp file left behind
    loaded = ckpt.safe_load(path)
    assert loaded["meta"] == meta and loaded["model"].keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded["model"][key], value) and loaded["model"][key].dtype == value.dtype, key
    # without a meta the file is a plain state dict, as a safetensors file written by any other tool
    ckpt.save_safetensors({"w": weight}, tmp_path / "plain.safetensors")
    plain = ckpt.safe_load(tmp_path / "plain.safetensors")
    assert plain.keys() == {"w"} and torch.equal(plain["w"], weight)


def test_save_safetensors_refuses_a_value_that_is_not_a_tensor_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"safetensors holds tensors only, step is of type int"):
        ckpt.save_safetensors({"w": torch.ones(2), "step": 3}, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip, not safetensors", "pickle", "truncated"])
def test_a_safetensors_file_that_safetensors_cannot_read_gives_one_line_naming_it(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    if content == "pickle":  # torch.save's format under the wrong name: never unpickled
        torch.save({"w": torch.ones(2)}, path)
    elif content == "truncated":
        ckpt.save_safetensors({"w": torch.ones(8)}, path)
        path.write_bytes(path.read_bytes()[:-4])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        ckpt.safe_load(path)
    message = str(error.value)
    assert message.startswith(f"cannot read {path} as a safetensors file: ") and "\n" not in message


def test_a_pickle_based_pt_file_is_still_read_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "step": 7, "meta": {"model": "fcn8s_vgg16"}}
    ckpt.save_checkpoint(state, tmp_path / "last.pt")
    loaded = ckpt.safe_load(tmp_path / "last.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    torch.save({"model": object()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*evil.pt: it holds objects other than tensors"):
        ckpt.safe_load(tmp_path / "evil.pt")
