"""The package's structure: layering, no import cycles, no private imports, small files.

The layers, lowest first (docs/architecture.rst draws them)::

    functional, factory  <  observers  <  quantizers  <  qconfig, switches  <  nn
        <  model, fold, graph, integer, ptq  <  hw, interop  <  demo  <  aquatic (the package root)

A module may import from its own layer and those below, never from above, and never
inside a function (an import that defers nothing only hides a cycle).
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, Iterator, List, NamedTuple, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "aquatic"

LAYERS: Dict[str, int] = {
    "functional": 0,
    "factory": 0,
    "observers": 1,
    "quantizers": 2,
    "qconfig": 3,
    "switches": 3,
    "nn": 4,
    "model": 5,
    "model_float": 5,
    "walk": 5,
    "mapping": 5,
    "fold": 5,
    "fuse": 5,
    "integer": 5,
    "graph": 5,
    "ptq": 5,
    "hw": 6,
    "interop": 6,
    "demo": 9,  # the main job: it uses the package as a user does
    "": 8,  # aquatic/__init__.py
}

MAX_LINES = 400


class Import(NamedTuple):
    source: str  # importing module, e.g. "aquatic.nn.linear"
    target: str  # imported module, e.g. "aquatic.nn.twin"
    names: Tuple[str, ...]  # names imported from it ("*" for a plain import)
    lazy: bool  # inside a function or class body
    line: int


def _modules() -> Dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> Iterator[Import]:
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, node, path.name == "__init__.py")
                if target.split(".")[0] != "aquatic":
                    continue
                names = tuple(alias.name for alias in node.names)
                # ``from aquatic import nn`` imports the module aquatic.nn.
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
                lazy = id(node) not in top
                for sub in submodules:
                    yield Import(module, sub, ("*",), lazy, node.lineno)
                rest = tuple(n for n in names if f"{target}.{n}" not in MODULES)
                if rest:
                    yield Import(module, target, rest, lazy, node.lineno)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "aquatic":
                        yield Import(module, alias.name, ("*",), id(node) not in top, node.lineno)


IMPORTS = list(_imports())


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    unknown = sorted({_group(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"add these top-level modules to LAYERS: {unknown}"


def test_no_import_from_a_higher_layer():
    bad = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if LAYERS[_group(i.target)] > LAYERS[_group(i.source)]
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_imports_inside_functions():
    bad = [f"{i.source}:{i.line} imports {i.target} inside a function" for i in IMPORTS if i.lazy]
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_from_other_modules():
    bad = [
        f"{i.source}:{i.line} imports {name} from {i.target}"
        for i in IMPORTS
        for name in i.names
        if name.startswith("_")
    ]
    assert not bad, "make shared helpers public where they are shared:\n" + "\n".join(bad)


def test_no_private_module_imported_from_another_package():
    bad = []
    for i in IMPORTS:
        private = [p for p in i.target.split(".") if p.startswith("_")]
        if private and _group(i.source) != _group(i.target):
            bad.append(f"{i.source}:{i.line} imports the private module {i.target}")
    assert not bad, "\n".join(bad)


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    # Tarjan's strongly connected components (Tarjan 1972), iteratively.
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    edges: Dict[str, Set[str]] = {module: set() for module in MODULES}
    for i in IMPORTS:
        if i.target in MODULES and i.target != i.source:
            # A package's own __init__ importing its submodules is how packages work.
            if (
                i.source
                and i.target.startswith(i.source + ".")
                and MODULES[i.source].name == ("__init__.py")
            ):
                continue
            edges[i.source].add(i.target)
    cycles = _cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concept"
