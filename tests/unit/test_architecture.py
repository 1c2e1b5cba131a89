"""The package's shape: no import cycle, no private name used outside its module, no Snakemake.

The import graph is read from the source with :mod:`ast` (nothing is imported): every ``import`` and
``from … import`` anywhere in a module, relative imports resolved, those under ``if TYPE_CHECKING:``
left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = REPO / "workflow"
PACKAGE = "batchmix"


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Module name to file, for every module of the package under ``root``."""
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from … import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str, known: set[str] | None = None) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every runtime import in ``path``.

    ``from pkg import sub`` where ``pkg.sub`` is a module counts as importing ``pkg.sub``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if known is not None and sub in known:
                    found.append((sub, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module to the package modules it imports."""
    modules = package_modules(root)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, _, _ in imports_of(path, module, known):
            # the module itself, or the nearest enclosing package module that exists
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(path: Path, module: str, known: set[str]) -> list[str]:
    """Uses in ``path`` of another batchmix module's private names: ``from x import _y``,
    ``import batchmix._x``, and ``alias._name`` on a batchmix module imported under ``alias``."""
    offences = []
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    aliases: dict[str, str] = {}
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != PACKAGE:
                    continue
                if any(_private(part) for part in alias.name.split(".")):
                    offences.append(f"line {node.lineno}: import {alias.name}")
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if target.split(".")[0] != PACKAGE:
                continue
            if any(_private(part) for part in target.split(".")) and target != module:
                offences.append(f"line {node.lineno}: from {target} import …")
            for alias in node.names:
                if _private(alias.name) and target != module:
                    offences.append(f"line {node.lineno}: from {target} import {alias.name}")
                if f"{target}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            dotted = []
            while isinstance(owner, ast.Attribute):
                dotted.insert(0, owner.attr)
                owner = owner.value
            if isinstance(owner, ast.Name) and owner.id in aliases:
                target = ".".join([aliases[owner.id], *dotted])
                if target in known and target != module:
                    offences.append(f"line {node.lineno}: {target}.{node.attr}")
    return sorted(set(offences), key=lambda o: int(o.split(":")[0].split()[1]))


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_uses_another_modules_private_names():
    known = set(package_modules())
    files = dict(package_modules())
    files.update({str(p.relative_to(REPO)): p for p in sorted((REPO / "tests").rglob("*.py"))})
    files.update({str(p.relative_to(REPO)): p for p in sorted((REPO / "workflow/scripts").glob("*.py"))})
    offenders = {}
    for module, path in sorted(files.items()):
        found = private_imports(path, module if module in known else "", known)
        if found:
            offenders[module] = found
    assert not offenders, "private names used outside their module:\n" + "\n".join(
        f"  {m}: {'; '.join(o)}" for m, o in offenders.items()
    )


def test_the_package_never_imports_snakemake():
    known = set(package_modules())
    offenders = [
        f"{module} line {line}"
        for module, path in package_modules().items()
        for target, _, line in imports_of(path, module, known)
        if target.split(".")[0] == "snakemake"
    ]
    assert not offenders, f"batchmix imports snakemake: {offenders}"


# The checks themselves, on small sources: they must see what they are meant to see.


def _write_package(tmp_path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_relative_imports_is_found(tmp_path):
    _write_package(
        tmp_path,
        {
            "batchmix/__init__.py": "",
            "batchmix/a.py": "from .b import f\n",
            "batchmix/b.py": "from batchmix import c\n",
            "batchmix/c.py": "def g():\n    from . import a\n",
            "batchmix/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from batchmix.a import f\n",
        },
    )
    assert find_cycle(import_graph(tmp_path)) == ["batchmix.a", "batchmix.b", "batchmix.c", "batchmix.a"]
    (tmp_path / "batchmix/c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    assert find_cycle(import_graph(tmp_path)) is None


def test_private_uses_are_found(tmp_path):
    _write_package(
        tmp_path,
        {
            "batchmix/__init__.py": "",
            "batchmix/_core.py": "def _helper():\n    pass\n",
            "batchmix/lmm.py": "from batchmix._core import _helper\nfrom . import _core\n",
            "batchmix/ok.py": "def _mine():\n    pass\n_mine()\n",
            "batchmix/attr.py": "from batchmix import lmm\nlmm._secret\nimport batchmix.lmm as L\nL._other\n",
        },
    )
    modules = package_modules(tmp_path)
    found = {m: private_imports(p, m, set(modules)) for m, p in modules.items()}
    assert found["batchmix.ok"] == [] and found["batchmix._core"] == []
    assert any("import _helper" in o for o in found["batchmix.lmm"])
    assert any("batchmix._core" in o for o in found["batchmix.lmm"])
    assert sorted(o.split(": ")[1] for o in found["batchmix.attr"]) == ["batchmix.lmm._other", "batchmix.lmm._secret"]
