"""The house plan stays visible: tiler's folders are layers and imports flow one way.

Every import of a tiler module by another (top-level or inside a function, ``if TYPE_CHECKING``
blocks included) must go to the same layer or a lower one, and no module may reach itself through
imports (no cycle, counting function-level imports). At most ten modules sit loose at tiler/'s top
level; every folder is a layer named here (and in the README's architecture section)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tiler"

# lowest first; a module may import from its own layer and the layers before it
LAYERS = (
    ("errors",),
    ("geometry",),
    ("raster",),
    ("workdir",),
    ("ldm",),
    ("tasks",),
    ("execution",),
    ("quality", "convert", "train"),
    ("workflow",),
    ("api",),  # the Python API offers every command, the workflow and the report included
    ("cli", "__main__"),
)
# the package root re-exports the Python API (loaded on first use): its one import from above
ROOT_EXPORTS = {"tiler.api"}
LOOSE_AT_MOST = 10


def layer_of(module: str) -> int:
    """The layer index of ``tiler.X...`` (``tiler`` itself, the package root: layer 0)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module}: in no layer; add its folder to LAYERS and the README")


def module_name(path: Path) -> str:
    parts = ["tiler", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The tiler modules ``path`` imports anywhere in its body (``from a.b import c`` counts as a.b,
    or a.b.c where c is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "tiler"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "tiler":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _is_module(candidate) else base)
    return found - {name}


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / Path(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


GRAPH = {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_flow_down_the_layers(module):
    allowed = ROOT_EXPORTS if module == "tiler" else set()
    upward = sorted(
        target for target in GRAPH[module] - allowed if layer_of(target) > layer_of(module)
    )
    assert not upward, (
        f"{module} (layer {LAYERS[layer_of(module)]}) imports from higher layers: {upward}"
    )


def test_no_import_cycles():
    """Depth-first search for a module reached again from itself."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str):
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target in GRAPH and target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_top_level_is_small_and_every_folder_is_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= LOOSE_AT_MOST, loose
    folders = sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    )
    layered = {name for names in LAYERS for name in names}
    assert set(folders) <= layered, set(folders) - layered
    readme = (PACKAGE.parent / "README.md").read_text()
    missing = [folder for folder in folders if f"{folder}/" not in readme]
    assert not missing, f"folders the README's architecture section does not name: {missing}"


def test_the_test_sees_what_it_checks():
    """A check that finds nothing would pass: the graph holds the package's layers and edges."""
    assert {"tiler.geometry.grid", "tiler.tasks.superres", "tiler.cli"} <= set(GRAPH)
    assert "tiler.geometry.grid" in GRAPH["tiler.tasks.ldm"]
    assert (
        layer_of("tiler.cli.options")
        > layer_of("tiler.execution.run")
        > layer_of("tiler.raster.mask")
    )
