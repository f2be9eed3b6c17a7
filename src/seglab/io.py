"""Weight and checkpoint files: written atomically (temp file + fsync + rename), read safely (tensors and plain
Python types only, ``torch.load(weights_only=True)``; ``.safetensors`` files by the safetensors library, no
pickle at all), and a run directory resolved to its checkpoint.

A checkpoint is ``{"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "config", "meta"}``
holding only tensors and plain Python types, so the safe loader accepts it. A ``.safetensors`` file holds a
state dict, plus the model's ``meta`` as JSON in its string metadata (key ``SAFETENSORS_META_KEY``) when
``save_safetensors`` was given one: such a file reads back as the checkpoint ``{"model", "meta"}``.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import nn


SAFETENSORS_META_KEY = "seglab_meta"  # the string metadata entry of a .safetensors file holding seglab's meta


def safe_load(path: str | Path):
    """The contents of a checkpoint or state-dict file, read on the CPU by the weights-only unpickler, or, for a
    ``.safetensors`` file, by the safetensors library: its tensors, or ``{"model": tensors, "meta": meta}`` when
    it carries seglab's meta (``save_safetensors``).

    A file holding anything else (arbitrary objects, code that would run on unpickling) is refused with a
    ValueError naming it, and nothing in it runs; so is a ``.safetensors`` file that safetensors cannot read.
    A missing file gives FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain Python types, "
                         f"which seglab never writes (weights-only loading: {reason})") from error


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


@contextlib.contextmanager
def _replacing(path: Path):
    """A binary file to write that replaces ``path`` (created with its folder) only once the block completes:
    a temporary file beside it, fsync'd, then renamed; removed instead when the block raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
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
    """A run directory → its ``best.pt`` (or ``last.pt`` when no validation ran); a file → itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no best.pt or last.pt in run directory {path}")
    return path


def writable_dir(path: str | Path) -> Path:
    """``path`` as a directory, created if missing; a ValueError naming it when it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ValueError(f"cannot write to the output directory {path}: {error.strerror or error}") from error
    return path


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
