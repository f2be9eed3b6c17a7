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
