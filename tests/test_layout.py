"""The package's layout stays readable: no import circles, every import points down the layers, no
private name crosses a module boundary, few loose files at the top (README "Layout").

An AST walk over `sublearn/`: every import counts, including those inside functions and under
`TYPE_CHECKING`, since a lazy import still ties two modules together. Importing `a.b.c` also runs
`a/__init__` and `a/b/__init__`, so those edges count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sublearn"

# Bottom up; a module may import its own layer or a lower one. A longer prefix wins
# (sublearn.stages.roster sits below the other stages, sublearn.stages.pipeline above them).
LAYERS: list[list[str]] = [
    ["sublearn", "sublearn.errors", "sublearn.logs"],
    ["sublearn.rundir", "sublearn.config", "sublearn.configs"],
    ["sublearn.backends", "sublearn.defenses"],
    ["sublearn.channels", "sublearn.analysis"],
    ["sublearn.traits", "sublearn.mnist"],
    ["sublearn.pipeline_config"],
    ["sublearn.training"],
    ["sublearn.stages", "sublearn.stages.roster"],
    ["sublearn.stages.teacher", "sublearn.stages.generate", "sublearn.stages.filter", "sublearn.stages.defend",
     "sublearn.stages.classify", "sublearn.stages.train", "sublearn.stages.theorem", "sublearn.stages.evaluate",
     "sublearn.stages.report"],
    ["sublearn.stages.pipeline"],
    ["sublearn.tools"],
    ["sublearn.cli", "sublearn.__main__", "sublearn.api"],
]
# The stages talk through files: one stage never imports another (the roster and the pipeline may).
STAGES = LAYERS[8]
MAX_LOOSE_FILES = 10


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, list[tuple[str, str | None, int]]]:
    """module -> [(imported module, imported name or None, line)] for every sublearn import."""
    found: dict[str, list[tuple[str, str | None, int]]] = {}
    for module, path in modules.items():
        rows: list[tuple[str, str | None, int]] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                rows += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "sublearn"]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, path, node)
                if target.split(".")[0] != "sublearn":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    # `from sublearn.stages import report` imports a module, not a name.
                    rows.append((sub, None, node.lineno) if sub in modules else (target, alias.name, node.lineno))
        found[module] = rows
    return found


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the sublearn modules importing it runs (its own target and their parent packages)."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, rows in _imports(modules).items():
        for target, _, _ in rows:
            if target in modules and target != module:
                edges[module].add(target)
            parts = target.split(".")
            # The packages above the target run first, except those above the importer: they already have.
            for i in range(1, len(parts)):
                name = ".".join(parts[:i])
                if name in modules and not module.startswith(name + "."):
                    edges[module].add(name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def _stage(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def test_the_layout_walk_sees_what_it_checks() -> None:
    modules = _modules()
    # The walk would pass vacuously on an empty or unparsed tree; these edges exist by design.
    edges = _edges(modules)
    assert len(modules) > 60
    assert "sublearn.errors" in edges["sublearn.rundir"]
    assert "sublearn.stages.roster" in edges["sublearn.stages.train"]
    # Every module sits on a layer.
    assert [m for m in modules if _layer(m) < 0] == []
    # The cycle finder finds a planted circle (and a three-module one).
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    assert _cycles(_edges(_modules())) == []


def test_every_import_points_down_the_layers() -> None:
    modules = _modules()
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in _edges(modules).items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert upward == []


def test_stages_do_not_import_each_other() -> None:
    modules = _modules()
    crossing = [f"{m} imports {t}" for m, targets in _edges(modules).items() for t in sorted(targets)
                if _stage(m) and _stage(t) and _stage(m) != _stage(t)]
    assert crossing == []


def test_no_private_name_is_imported_across_modules() -> None:
    modules = _modules()
    imports = _imports(modules)
    private = [f"{m}:{line} imports {t}.{name}" for m, rows in imports.items() for t, name, line in rows
               if name and name.startswith("_") and not name.startswith("__") and t != m]
    # `import sublearn.x as y; y._name` or `from sublearn import x; x._name` is the same thing.
    for module, path in modules.items():
        aliases = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if isinstance(node, ast.ImportFrom):
                        full = f"{_resolve(module, path, node)}.{alias.name}"
                    else:
                        full = alias.name
                    if full in modules and full != module:
                        aliases[alias.asname or alias.name] = full
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert private == []


def test_few_loose_files_at_the_top() -> None:
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_FILES, loose


@pytest.mark.parametrize("package", ["backends", "channels", "traits", "analysis", "training", "stages", "tools",
                                     "mnist"])
def test_every_room_says_what_it_holds(package: str) -> None:
    init = ROOT / package / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"sublearn/{package}/__init__.py"
