"""Weight and checkpoint files: written atomically (temp file + fsync + rename), read safely (tensors and plain
Python types only, ``torch.load(weights_only=True)``; ``.safetensors`` files by the safetensors library, no
pickle at all), and a run directory resolved to its checkpoint.

A checkpoint is ``{"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "config", "meta"}``
holding only tensors and plain Python types, so the safe loader accepts it. A ``.safetensors`` file holds a
state dict, plus the model's ``meta`` as JSON in its string metadata (key ``SAFETENSORS_META_KEY``) when
``save_safetensors`` was given one: such a file reads back as the checkpoint ``{"model", "meta"}``.

Every failure is one line naming the file: a write that fails (disk full, read-only folder) raises
``CheckpointWriteError`` (an OSError) and keeps the previous file; an empty, truncated, corrupt or foreign file
to read raises ValueError. ``write_json`` / ``json_text`` write strict JSON (NaN as null) for reports.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


SAFETENSORS_META_KEY = "seglab_meta"  # the string metadata entry of a .safetensors file holding seglab's meta


class CheckpointWriteError(OSError):
    """A checkpoint or weights file that could not be written (disk full, read-only folder, …): its one-line
    message names the file and the reason, ``errno`` is the system's; the previous file is left intact."""


def _size_text(size: int) -> str:
    """A file size as people read it: ``0 bytes``, ``812 bytes``, ``2.1 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def safe_load(path: str | Path):
    """The contents of a checkpoint or state-dict file, read on the CPU by the weights-only unpickler, or, for a
    ``.safetensors`` file, by the safetensors library: its tensors, or ``{"model": tensors, "meta": meta}`` when
    it carries seglab's meta (``save_safetensors``).

    A file holding anything else (arbitrary objects, code that would run on unpickling) is refused with a
    ValueError naming it, and nothing in it runs; so is a ``.safetensors`` file that safetensors cannot read, and
    an empty, truncated or corrupt file ("PATH is truncated or corrupt (2.1 MB, …)"). A missing file gives
    FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))  # the class or function the file asked for, if any
        if found is None:
            raise ValueError(_corrupt(path)) from error
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain Python types "
                         f"({found.group(1)}), which seglab never writes; it loads weights only, so nothing in the "
                         f"file ran") from error
    except (RuntimeError, EOFError, KeyError, OSError) as error:  # torch's zip reader or the unpickler ran out of file
        if isinstance(error, OSError) and error.errno not in (None, errno.EINVAL):
            raise  # the system refused to read it (permissions, I/O error): its own message names the file
        raise ValueError(_corrupt(path)) from error


def _corrupt(path: Path) -> str:
    """The one line saying that ``path`` is not the whole zip archive that ``torch.save`` writes."""
    with open(path, "rb") as f:
        zip_start = f.read(4) == b"PK\x03\x04"
    what = "not a complete zip archive" if zip_start else "not a zip archive"
    return f"{path} is truncated or corrupt ({_size_text(path.stat().st_size)}, {what} as torch.save writes)"


def _load_safetensors(path: Path):
    """``safe_load`` of a ``.safetensors`` file (no pickle involved)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"cannot read {path} as a safetensors file: {reason}") from error
    if SAFETENSORS_META_KEY not in metadata:
        return tensors
    try:
        meta = json.loads(metadata[SAFETENSORS_META_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its {SAFETENSORS_META_KEY} metadata is not JSON ({error})") from error
    return {"model": tensors, "meta": meta}


class _Recorder:
    """A binary file that remembers the OSError of a failed write: torch's zip writer reports it as a
    RuntimeError ("unexpected pos …") that has lost the errno."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):  # the rest (flush, fileno, tell, …) is the file's
        return getattr(self.file, name)


@contextlib.contextmanager
def _replacing(path: Path, durable: bool = True):
    """A binary file to write that replaces ``path`` (created with its folder) only once the block completes:
    a temporary file beside it, fsync'd (``durable``: the new file survives a power loss too), then renamed;
    removed instead when the block raises. A write that fails (disk full, read-only folder) raises
    ``CheckpointWriteError``."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            try:
                yield recorder
            except Exception as error:
                if recorder.error is None or recorder.error is error:
                    raise
                raise recorder.error from error
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, CheckpointWriteError):
            failed = CheckpointWriteError(f"cannot write {path}: "
                                          f"{os.strerror(error.errno) if error.errno else error}")
            failed.errno = error.errno
            raise failed from error
        raise


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact, a failed write
    (disk full, …) also raises ``CheckpointWriteError`` ("cannot write PATH: No space left on device")."""
    path = Path(path)
    with _replacing(path) as f:
        torch.save(state, f)
    return path


def save_safetensors(state_dict: dict, path: str | Path, meta: dict | None = None) -> Path:
    """Write the tensors of ``state_dict`` to the safetensors file ``path``, atomically (as ``save_checkpoint``),
    with ``meta`` (a seglab model's ``meta``) JSON-encoded under ``SAFETENSORS_META_KEY`` in its string metadata.

    Tensors go to the CPU, contiguous; a tensor sharing its storage with one written before (tied or aliased
    weights, which safetensors refuses) is written as a copy, so it loads back as its own tensor.
    """
    from safetensors.torch import save

    tensors, storages = {}, set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"cannot write {path}: safetensors holds tensors only, {key} is of type "
                             f"{type(value).__name__}")
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in storages:
            tensor = tensor.clone()  # a fresh storage: nothing later can share it
        else:
            storages.add(storage)
        tensors[key] = tensor
    # one metadata entry at most: safetensors writes the map in no fixed order, so one keeps the bytes reproducible
    metadata = {SAFETENSORS_META_KEY: json.dumps(meta)} if meta is not None else None
    path = Path(path)
    with _replacing(path) as f:
        f.write(save(tensors, metadata))
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory → its ``best.pt`` (or ``last.pt`` when no validation ran); a file → itself; a
    FileNotFoundError naming ``path`` when it is neither."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or checkpoint file")
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no best.pt or last.pt in run directory {path}")
    return path


def writable_dir(path: str | Path) -> Path:
    """``path`` as a directory, created if missing; a ValueError naming it when it cannot be written ("cannot
    write to the output directory runs/x: Permission denied"), checked by creating a file there."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file")
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ValueError(f"cannot write to the output directory {path}: {error.strerror or error}") from error
    return path


def json_text(value, indent: int | None = None) -> str:
    """``value`` as strict JSON, which every parser reads: NaN and ±infinity (a metric with nothing to measure)
    become ``null`` (``json.dumps`` would write ``NaN``); e.g. one line of a ``metrics.jsonl``."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value, indent: int | None = 2) -> Path:
    """Write ``value`` to ``path`` as ``json_text`` (NaN as ``null``), e.g. ``metrics.json``, whole or not at all
    (as ``save_image``)."""
    path = Path(path)
    with _replacing(path, durable=False) as f:
        f.write(json_text(value, indent).encode())
    return path


def save_image(image, path: str | Path) -> Path:
    """Save the PIL image ``image`` to ``path`` in the format its suffix names, whole or not at all (a temporary
    file renamed): an interrupted ``predict`` leaves no truncated file that ``--skip-existing`` takes as done."""
    path = Path(path)
    with _replacing(path, durable=False) as f:
        image.save(f, format=Image.registered_extensions()[path.suffix.lower()])
    return path


def save_npz(path: str | Path, **arrays) -> Path:
    """``numpy.savez_compressed(path, **arrays)``, whole or not at all (as ``save_image``)."""
    path = Path(path)
    with _replacing(path, durable=False) as f:
        np.savez_compressed(f, **arrays)
    return path


def _finite(value):
    """``value`` with every non-finite float inside (dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def evaluated_weights(checkpoint: dict) -> dict:
    """A training run's checkpoint with its ``"model"`` replaced by the weights its validation evaluated: the
    average of an ``--ema`` run's ``last.pt`` (``"ema"``, AveragedModel's ``module.*``), else as it is."""
    ema = checkpoint.get("ema") if isinstance(checkpoint, dict) else None
    if not ema:
        return checkpoint
    prefix = "module."
    return {**checkpoint, "model": {key[len(prefix):]: value for key, value in ema.items() if key.startswith(prefix)}}


def load_state(model: nn.Module, state: dict, source, missing_ok=()) -> None:
    """``model.load_state_dict(state)``, strict but for the keys ``missing_ok`` (which keep their initial values);
    a ValueError naming ``source`` and the first key that does not fit (a shape that differs, a key missing from
    the file or one the model lacks) when the weights do not."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # the shapes differ
        own = model.state_dict()
        mismatched = [(key, tuple(value.shape), tuple(own[key].shape)) for key, value in state.items()
                      if key in own and value.shape != own[key].shape]
        if not mismatched:
            raise
        key, theirs, ours = mismatched[0]
        more = f" (and {len(mismatched) - 1} more keys)" if len(mismatched) > 1 else ""
        raise ValueError(f"{source} does not fit the model: {key} has shape {theirs} there, {ours} in the model"
                         f"{more}") from error
    missing_ok = set(missing_ok)
    missing = [key for key in result.missing_keys if key not in missing_ok]
    for keys, where in ((missing, "is missing there"), (result.unexpected_keys, "is not in the model")):
        if keys:
            more = f" (and {len(keys) - 1} more keys)" if len(keys) > 1 else ""
            raise ValueError(f"{source} does not fit the model: key {keys[0]} {where}{more}")
