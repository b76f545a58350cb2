"""The package's architecture, checked: imports run one way, with no circles.

Layers, from the bottom: :mod:`bigarray.errors`; the storage core :mod:`bigarray.core`
(numpy, fsspec and the error module only); the faces (seed API, lazy handle, dask, xarray,
torch); the tools (command line, converters, copy, demo). A module may import its own layer
or a lower one, never a higher one. Imports made inside functions count: they are how a
circle hides.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bigarray"

FACES = {"arrays", "lazy", "dask_backend", "xarray_backend", "xarray_schema", "xarray_store"}
FACES |= {"torch", "chunks"}
TOOLS = {"cli", "convert", "copy", "demo", "__main__"}
# what the storage core may never import, at any depth of a function
CORE_FORBIDDEN = {"dask", "distributed", "xarray", "tqdm", "rich", "torch", "h5py", "zarr"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports (top level or inside a function), as dotted names:
    bigarray modules resolved, third-party ones by their top-level package."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
    resolved = set()
    for mod in out:
        if mod.startswith("bigarray"):
            while mod not in known and "." in mod:
                mod = mod.rsplit(".", 1)[0]
            resolved.add(mod)
        else:
            resolved.add(mod.split(".")[0])
    resolved.discard(name)
    return resolved


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(name: str) -> int:
    if name == "bigarray.errors":
        return 0
    if name == "bigarray.core" or name.startswith("bigarray.core."):
        return 1
    short = name.split(".", 1)[1] if "." in name else ""
    if short in FACES:
        return 2
    if short in TOOLS:
        return 3
    if name == "bigarray":
        return 4  # the package's namespace re-exports the faces
    raise AssertionError(f"{name}: not placed in a layer; add it to FACES or TOOLS")


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        _layer(name)


def test_imports_run_downwards() -> None:
    wrong = []
    for name, deps in _graph().items():
        for dep in deps:
            if dep.startswith("bigarray") and _layer(dep) > _layer(name):
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("name", sorted(n for n in _modules() if _layer(n) <= 1))
def test_core_imports_no_face_library(name: str) -> None:
    bad = sorted(_graph()[name] & CORE_FORBIDDEN)
    assert not bad, f"{name} (storage core) imports {bad}"


def test_no_import_circles() -> None:
    graph = _graph()
    inner = {n: {d for d in deps if d in graph and d != "bigarray"} for n, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(inner[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(inner):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checker_sees_imports_inside_functions(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .core.store import Store\n    import dask.array\n")
    got = _imports("bigarray.m", src, {"bigarray.core.store", "bigarray.core"})
    assert got == {"bigarray.core.store", "dask"}


def test_no_public_module_reaches_into_private_names_of_another() -> None:
    wrong = []
    mods = _modules()
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("bigarray")
            ):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        wrong.append(
                            f"{name}: from {'.' * node.level}{node.module} import {alias.name}"
                        )
    assert not wrong, "private names imported across modules:\n" + "\n".join(sorted(wrong))


def _report() -> dict[str, list[str]]:  # for humans: python -c "...; print(_report())"
    out = defaultdict(list)
    for name, deps in _graph().items():
        out[name] = sorted(d for d in deps if d.startswith("bigarray"))
    return dict(out)
