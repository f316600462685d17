"""The package's layers: no module imports a module of a higher layer (lazy imports included).

    core (errors, io, paths, progress, genres, defaults) <- data <- models, run <- backends, export
        <- train, evaluate <- predict, scoring, explain, pipeline, batch <- serve, cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "postergenre"
LAYERS = [
    {"errors", "io", "paths", "progress", "genres", "defaults", ""},
    {"data"},
    {"models", "run"},
    {"backends", "export"},
    {"train", "evaluate"},
    {"predict", "scoring", "explain", "pipeline", "batch"},
    {"serve", "cli", "__main__"},
]


def layer_of(module: str) -> int:
    """The layer of `postergenre.X.Y` (by its first part X)."""
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"postergenre.{top} belongs to no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `postergenre` import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "postergenre":  # `from postergenre import x`: x may be a name
                names = [f"postergenre.{a.name}" for a in node.names
                         if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found
            if name == "postergenre" or name.startswith("postergenre.")]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = layer_of(module_name(path))
    upward = [f"line {line}: {name}" for line, name in imports(path)
              if name != "postergenre" and layer_of(name) > own]
    assert not upward, f"{module_name(path)} (layer {own}) imports upward: {upward}"


def test_rich_and_typer_stay_in_the_cli() -> None:
    offenders = []
    for path in SOURCES:
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("rich", "typer")]
    assert not offenders, offenders


def test_every_module_has_a_layer() -> None:
    for path in SOURCES:
        layer_of(module_name(path))
