"""The engine's import graph: no cycle among batchmix.lmm / batchmix.uncertainty modules, no private imports.

Read from the sources (every import statement, also those inside functions), so that an import
hidden in a function body counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "workflow" / "batchmix"
SUBPACKAGES = ["lmm", "uncertainty"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import statement of a file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [alias.name for alias in node.names]))
    return out


def engine_files() -> list[Path]:
    return sorted(p for sub in SUBPACKAGES for p in (PACKAGE / sub).glob("*.py"))


def test_the_engine_modules_exist():
    names = {module_name(p) for p in engine_files()}
    assert {
        "batchmix.lmm.core",
        "batchmix.lmm.results",
        "batchmix.lmm.missing",
        "batchmix.lmm.onecomp",
        "batchmix.lmm.block",
        "batchmix.lmm.general",
        "batchmix.uncertainty.bootstrap",
        "batchmix.uncertainty.posterior",
        "batchmix.uncertainty.priors",
    } <= names


def test_no_import_cycle_between_engine_modules():
    files = {module_name(p): p for p in engine_files()}
    graph = {}
    for name, path in files.items():
        targets = set()
        for target, names in imports_of(path):
            # ``from . import core`` imports the module batchmix.lmm.core, not the package's names
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            candidates = submodules or [target]
            targets |= {c for c in candidates if c in files and c != name}
        graph[name] = targets
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " → ".join(stack + [node, nxt]))
            if not state.get(nxt):
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [])


def test_core_imports_no_engine():
    core = PACKAGE / "lmm" / "core.py"
    targets = {t for t, _ in imports_of(core)}
    assert not {t for t in targets if t.startswith("batchmix.lmm.")}, targets


@pytest.mark.parametrize("path", engine_files(), ids=lambda p: module_name(p))
def test_no_private_name_of_another_module_is_imported(path):
    for target, names in imports_of(path):
        if not target.startswith("batchmix"):
            continue
        assert not any(part.startswith("_") for part in target.split(".")), (path.name, target)
        assert not [n for n in names if n.startswith("_")], (path.name, target, names)
