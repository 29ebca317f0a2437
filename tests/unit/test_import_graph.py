"""The package's import graph, read from its source (ast): no import circle, an engine without Airflow, and no
private name (``_x``) imported or used across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import airflow_pgmigrate

PACKAGE = Path(airflow_pgmigrate.__file__).parent


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``root`` (a package directory)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(module imported, name imported from it or None, line) for every import in the file, nested ones included
    (an import inside a function is an edge of the graph all the same)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, None, node.lineno) if full in modules else (base, alias.name, node.lineno))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = _modules(root)
    return {name: {target for target, _, _ in _imports(name, path, modules) if target in modules and target != name}
            for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each is an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def airflow_imports(root: Path, layer: str) -> list[str]:
    """Imports of Airflow by the modules of ``layer`` (a dotted package)."""
    modules = _modules(root)
    return [f"{name}:{line} imports {target}" for name, path in modules.items()
            if name == layer or name.startswith(layer + ".")
            for target, _, line in _imports(name, path, modules) if target.split(".")[0] == "airflow"]


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, methods, assigned names and attributes (``self._x``),
    annotated class attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return {name for name in names if _private(name)}


def private_crossings(root: Path) -> list[str]:
    """Private names of one module imported or used by another: ``from m import _x``, ``m._x`` for a package module
    ``m``, and ``obj._x`` where the module itself defines no ``_x`` but another package module does."""
    modules = _modules(root)
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    defined = {name: _defined_private_names(tree) for name, tree in trees.items()}
    anywhere = set().union(*defined.values())
    found = []
    for name, tree in trees.items():
        imported = _imports(name, modules[name], modules)
        found += [f"{name}:{line} imports {target}.{what}" for target, what, line in imported
                  if what is not None and _private(what) and target.split(".")[0] == root.name]
        aliases = {alias.asname or alias.name for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
                   if f"{getattr(node, 'module', None) or ''}.{alias.name}".strip(".") in modules
                   or alias.name in modules}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in aliases:
                found.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
            elif node.attr not in defined[name] and node.attr in anywhere:
                found.append(f"{name}:{node.lineno} uses .{node.attr} of another module")
    return found


def test_the_package_has_no_import_circle():
    assert circles(import_graph(PACKAGE)) == []


def test_the_engine_does_not_import_airflow():
    assert airflow_imports(PACKAGE, "airflow_pgmigrate.engine") == []


def test_no_private_name_is_imported_or_used_across_modules():
    assert private_crossings(PACKAGE) == []


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A package with each fault once, so that the checks above are seen to find what they look for."""
    root = tmp_path / "pkg"
    (root / "engine").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "engine/__init__.py": "",
        "engine/a.py": "from pkg.engine import b\n\n\ndef _helper():\n    return b\n",
        "engine/b.py": "def f():\n    from pkg.engine.a import _helper\n    return _helper\n",
        "engine/c.py": "from airflow.sdk import BaseOperator\n",
        "engine/d.py": "class Rewriter:\n    def _rename(self):\n        return 1\n",
        "engine/e.py": "from pkg.engine import d\n\n\ndef g(r):\n    return r._rename(), d._hidden\n",
        "ops.py": "import airflow\n",
    }
    for relative, text in files.items():
        (root / relative).write_text(text)
    return root


def test_the_checks_find_a_circle_airflow_in_the_engine_and_private_names(bad_package: Path):
    assert circles(import_graph(bad_package)) == [["pkg.engine.a", "pkg.engine.b"]]
    assert airflow_imports(bad_package, "pkg.engine") == ["pkg.engine.c:1 imports airflow.sdk"]
    assert sorted(private_crossings(bad_package)) == [
        "pkg.engine.b:2 imports pkg.engine.a._helper",
        "pkg.engine.e:5 uses ._rename of another module",
        "pkg.engine.e:5 uses d._hidden",
    ]
