"""Weight and checkpoint files: written atomically (temp file + fsync + rename), read safely (tensors and plain
Python types only, ``torch.load(weights_only=True)``), and a run directory resolved to its checkpoint.

A checkpoint is ``{"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "config", "meta"}``
holding only tensors and plain Python types, so the safe loader accepts it.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch


def safe_load(path: str | Path):
    """The contents of a checkpoint or state-dict file, read on the CPU by the weights-only unpickler.

    A file holding anything else (arbitrary objects, code that would run on unpickling) is refused with a
    ValueError naming it, and nothing in it runs. A missing file gives FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain Python types, "
                         f"which seglab never writes (weights-only loading: {reason})") from error


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
