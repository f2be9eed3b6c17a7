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
    with pytest.raises(FileNotFoundError, match="runs/typo: no such run directory or checkpoint file$"):
        ckpt.resolve_checkpoint(tmp_path / "runs" / "typo")


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


@pytest.mark.parametrize("content", [b"PK\x03\x04 a zip, not safetensors", "pickle", "truncated"])
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


# -- failures: each one line naming the file, nothing lost --------------------------------------------------
def _state(seed=0):
    return {"step": seed, "w": torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))}


@pytest.mark.parametrize("where", ["write", "flush"])
def test_a_full_disk_is_a_checkpoint_write_error_in_one_line_and_last_pt_survives(tmp_path, monkeypatch, where):
    import errno
    import io
    import os

    path = ckpt.save_checkpoint(_state(1), tmp_path / "last.pt")
    good = path.read_bytes()
    if where == "write":  # inside torch.save: its zip writer turns the OSError into "RuntimeError: unexpected pos"
        class Full(io.FileIO):  # a disk with 1000 bytes left
            def write(self, data):
                if self.tell() + len(data) > 1000:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write(data)

        monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: Full(fd, "wb"))
    else:  # the last buffered bytes, written by the final flush / fsync
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(ckpt.os, "fsync", fsync)
    with pytest.raises(ckpt.CheckpointWriteError) as error:
        ckpt.save_checkpoint(_state(2), path)
    assert str(error.value) == f"cannot write {path}: No space left on device"
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/full (root only); skipped where mounting is not permitted."""
    import shutil
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not permitted here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint_and_says_no_space(small_tmpfs):
    path = ckpt.save_checkpoint(_state(1), small_tmpfs / "last.pt")  # 16 kB
    big = {"step": 2, "w": torch.zeros(300_000)}  # 1.2 MB: more than the disk holds
    with pytest.raises(ckpt.CheckpointWriteError, match=f"^cannot write {path}: No space left on device$"):
        ckpt.save_checkpoint(big, path)
    with pytest.raises(ckpt.CheckpointWriteError, match="No space left on device$"):
        ckpt.save_safetensors({"w": big["w"]}, small_tmpfs / "model.safetensors")
    assert [p.name for p in small_tmpfs.iterdir()] == ["last.pt"] and ckpt.safe_load(path)["step"] == 1


def test_a_read_only_folder_is_named_for_checkpoints_and_output_directories(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refuse(*args, **kwargs):  # root writes through chmod, so the refusal is simulated where it would come
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(ckpt.CheckpointWriteError, match=f"^cannot write {tmp_path / 'last.pt'}: Permission denied$"):
        ckpt.save_checkpoint(_state(), tmp_path / "last.pt")
    with pytest.raises(ValueError, match=f"^cannot write to the output directory {tmp_path}: Permission denied$"):
        ckpt.writable_dir(tmp_path)
    monkeypatch.undo()
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match=f"output directory {tmp_path / 'taken'}: it is a file$"):
        ckpt.writable_dir(tmp_path / "taken")


@pytest.mark.parametrize("cut", ["empty", "half", "tail", "text"])
def test_an_empty_truncated_or_foreign_file_is_one_line_naming_it_and_its_size(tmp_path, cut):
    path = ckpt.save_checkpoint(_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "half": data[:len(data) // 2], "tail": data[:-30],
                      "text": b"not a checkpoint\n"}[cut])
    with pytest.raises(ValueError) as error:
        ckpt.safe_load(path)
    kb = f"{path.stat().st_size / 1000:.1f} kB"  # the 18 kB file cut to its half, or to all but 30 bytes
    expected = {"empty": f"{path} is empty (0 bytes)",
                "half": f"{path} is truncated or corrupt ({kb}, not a complete zip archive as torch.save writes)",
                "tail": f"{path} is truncated or corrupt ({kb}, not a complete zip archive as torch.save writes)",
                "text": f"{path} is truncated or corrupt (17 bytes, not a zip archive as torch.save writes)"}
    assert str(error.value) == expected[cut]


def test_an_empty_safetensors_file_says_empty(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"m.safetensors is empty \(0 bytes\)$"):
        ckpt.safe_load(tmp_path / "m.safetensors")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo this would have run",))


@pytest.mark.parametrize("payload, name", [(object(), "(object)"), (_RunsCode(), "system)")], ids=["object", "code"])
def test_a_file_holding_objects_is_refused_in_one_line_that_never_advises_weights_only_false(tmp_path, payload, name):
    torch.save({"model": payload}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as error:
        ckpt.safe_load(tmp_path / "evil.pt")
    message = str(error.value)
    assert "\n" not in message and "weights_only=False" not in message and "will likely succeed" not in message
    assert message.startswith(f"refusing to load {tmp_path / 'evil.pt'}: it holds objects other than tensors")
    assert name in message and message.endswith("nothing in the file ran")


def test_write_json_writes_nan_and_infinity_as_null_so_strict_parsers_read_it(tmp_path):
    import json

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    path = ckpt.write_json(tmp_path / "metrics.json", {"miou": 0.5, "iou": {"a": float("nan"), "b": 1.0},
                                                      "curve": [float("inf"), -float("inf"), 2], "n": 3})
    assert json.loads(path.read_text(), parse_constant=strict) == {"miou": 0.5, "iou": {"a": None, "b": 1.0},
                                                                  "curve": [None, None, 2], "n": 3}
    assert ckpt.json_text({"loss": float("nan"), "step": 4}) == '{"loss": null, "step": 4}'  # one jsonl line
