"""Reading weight files safely: tensors and plain Python types only (``torch.load(weights_only=True)``)."""
from __future__ import annotations

import pickle
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
