"""The layout rules of docs/architecture.md, checked on the source: imports only point down the layers, no
module imports another file's private names, and the engine and CLI decide "semantic or instance?" only at
the task seam."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "seglab"
# Top to bottom; a module may import from its own layer and the layers below it.
LAYERS = [
    {"cli", "__main__", "serve"},
    {"export"},
    {"engine"},
    {"report", "interop"},
    {"models"},
    {"backbones", "metrics", "losses", "viz"},
    {"data"},
    {"crf", "ops"},
    {"io", "hub"},
]
# The modules that low layers must never import (issue 14's rule: nothing below reaches up into them).
UPPER = {"engine", "cli", "export", "report"}
LOWER = {"ops", "crf", "backbones", "models", "data", "metrics"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def part(path: Path) -> str:
    """The top-level part of seglab a file belongs to: its folder, or its module name."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> list[tuple[str, list[str]]]:
    """(seglab part, imported names) of every import of a seglab module in ``path``; the part is the name after
    ``seglab.`` ("engine", "io", …), or "" for the package itself (``from .. import data``: then the names are
    parts)."""
    inside = path.relative_to(PACKAGE).with_suffix("").parts
    package = ["seglab", *inside[:-1]]  # the package a relative import starts from (a module's, or an __init__'s own)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name.split("."), []) for alias in node.names]
    return [(".".join(module[1:2]), names) for module, names in found if module[0] == "seglab"]


def targets(path: Path) -> list[tuple[str, str]]:
    """(part imported, how it reads) of every seglab import in ``path``."""
    return [(name, f"seglab.{name}") for part_name, names in imported(path) if not part_name for name in names
            if name != "__version__"] + [(part_name, f"seglab.{part_name}") for part_name, _ in imported(path)
                                         if part_name]


def layer(name: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if name in members)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = part(path)
    for target, shown in targets(path):
        if own == "__init__" or target == own:
            continue
        assert layer(target) >= layer(own), f"{path.relative_to(PACKAGE)} imports {shown} (a layer above)"
        if own in LOWER:
            assert target not in UPPER, f"{path.relative_to(PACKAGE)} imports {shown}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_another_files_private_names(path):
    for module, names in imported(path):
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        assert not private, f"{path.relative_to(PACKAGE)} imports {private} from seglab.{module}"


def test_the_engine_and_the_cli_branch_on_the_task_only_at_the_seam():
    seam = {PACKAGE / "engine" / name for name in ("tasks.py", "semantic.py", "instance.py")}
    branching = re.compile(r"""["'](semantic|instance)["']|\btask\s*(==|!=|in\b)|isinstance\([^)]*(MaskRCNN|FCIS)""")
    offenders = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
                 for path in [*sorted((PACKAGE / "engine").glob("*.py")), PACKAGE / "cli.py"] if path not in seam
                 for number, line in enumerate(path.read_text().splitlines(), 1) if branching.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_layers_name_every_part_of_the_package():
    parts = {part(path) for path in modules()} - {"__init__"}
    assert parts <= set().union(*LAYERS), sorted(parts - set().union(*LAYERS))
