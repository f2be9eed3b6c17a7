"""Entries of the files that list a dataset (split lists, COCO ``file_name`` fields) must stay inside the
dataset root: absolute paths, drives and ``..`` components are refused."""
from __future__ import annotations

from pathlib import Path, PureWindowsPath


def check_entry(entry: str, source: str | Path) -> str:
    """``entry`` unchanged when it is a relative path with no ``..`` component; else ValueError naming
    ``source`` (the file that lists it) and the entry."""
    if not isinstance(entry, str):
        raise ValueError(f"{source}: entry {entry!r} is not a path string")
    # PureWindowsPath splits on both "/" and "\\" and sees drives and roots, so it catches every spelling
    parts = PureWindowsPath(entry)
    if parts.anchor or ".." in parts.parts:
        raise ValueError(f"{source}: entry {entry!r} points outside the dataset root "
                         "(absolute paths and '..' are not allowed)")
    return entry


def read_lines(path: str | Path, what: str) -> list[str]:
    """The stripped, non-blank lines of the text file ``path``; FileNotFoundError names ``what`` and it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_split_list(path: str | Path) -> list[str]:
    """The ids of a split list (one per line), each checked with ``check_entry``."""
    return [check_entry(entry, path) for entry in read_lines(path, "split list")]
