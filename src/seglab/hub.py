"""Weights by name, through torchvision's weights API: ``torchvision.models.get_model_weights(arch)`` gives the
``*_Weights`` enum of a torchvision architecture (``"vgg16"``, ``"resnet50"``, ``"deeplabv3_resnet50"``, …),
whose members carry the file's URL and ``meta`` (categories, published metrics) and the input transforms.

A file is downloaded once (torch's progress bar, hash checked on download) into torch's hub cache,
``$TORCH_HOME/hub/checkpoints/<basename of the URL>``, and read from there without network ever after, by
seglab's weights-only loader (no pickle code runs). Without network, the error names the URL and the exact
path where the file can be put by hand.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum, get_model_weights

from .io import safe_load


def weight_names(arch: str) -> list[str]:
    """The weight names torchvision publishes for ``arch``, as its enum spells them, plus ``DEFAULT``."""
    return [member.name for member in get_model_weights(arch)] + ["DEFAULT"]


def weights(arch: str, name: str) -> WeightsEnum:
    """The enum member ``name`` of torchvision's weights for ``arch`` (``DEFAULT``: torchvision's default); an
    unknown name raises ValueError listing the valid ones."""
    enum = get_model_weights(arch)
    if name == "DEFAULT":
        return enum.DEFAULT
    if name not in enum.__members__:
        raise ValueError(f"torchvision has no {arch} weights {name!r}; it publishes {', '.join(weight_names(arch))} "
                         f"(or give the path of a weights file)")
    return enum[name]


def cache_path(member: WeightsEnum) -> Path:
    """Where torch's hub cache keeps ``member``'s file: ``<torch.hub.get_dir()>/checkpoints/<URL basename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(member.url).path)


def state_dict(member: WeightsEnum) -> dict:
    """The state dict of ``member``: from the cache, downloaded into it first when absent."""
    path = cache_path(member)
    if not path.is_file():
        _download(member.url, path)
    return safe_load(path)


def _download(url: str, path: Path) -> None:
    """``url`` to ``path`` with torch's progress bar and hash check (the hash prefix in torchvision's file names);
    a ValueError naming the URL and the cache path when it fails (no network, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, progress=True)
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError; a hash mismatch a RuntimeError
        reason = str(getattr(error, "reason", None) or error).strip().splitlines()[0]
        raise ValueError(f"cannot download {url} ({reason}); without network, put that file at {path}") from None


def normalization(member: WeightsEnum) -> dict | None:
    """The input normalisation ``member``'s transforms apply, ``{"mean": (r, g, b), "std": (r, g, b)}`` as
    fractions of 255 (``(x / 255 - mean) / std``), or None where they apply none (detection models normalise
    themselves)."""
    transforms = member.transforms()
    if not hasattr(transforms, "mean"):
        return None
    return {"mean": tuple(transforms.mean), "std": tuple(transforms.std)}


def is_name(source) -> bool:
    """Whether ``source`` is a weight name rather than a file: a string that is no existing file and has neither a
    suffix nor a directory in it."""
    return isinstance(source, str) and not Path(source).is_file() and not (Path(source).suffix or os.sep in source)


def state_dict_from(source: str, arch: str) -> tuple[dict, WeightsEnum | None]:
    """``(state dict, enum member or None)`` of ``source``: an existing file (which always wins over a name), else
    one of torchvision's weight names for ``arch``. A path that does not exist raises FileNotFoundError."""
    if not is_name(source):
        return safe_load(source), None  # a missing file: FileNotFoundError naming it
    member = weights(arch, source)
    return state_dict(member), member
