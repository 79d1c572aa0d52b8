"""ruff over the repository, and the one-way dependency rule of the package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The pure core never imports another layer (CONVENTIONS.md 1; ARCHITECTURE.md dependency direction): a
# module of infadapter/core/ imports only the core, the error types, the safe file loading and the paths.
CORE_DIR = ROOT / "infadapter" / "core"
CORE_MAY_IMPORT = ("infadapter.core", "infadapter.errors", "infadapter.loading", "infadapter.paths")
FORBIDDEN_LIBS = ("aiohttp", "kubernetes", "prometheus_api_client", "prometheus_client", "requests", "subprocess",
                  "socket", "onnxruntime", "cli")
#: A registry names a module in a string ("infadapter.backends.local.backend:LocalBackend"): such an import happens at
#: run time, so the cycle check counts it as an arrow like any import statement.
IMPORT_STRING = re.compile(r"^(infadapter(?:\.\w+)+)(?::\w+)?$")


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports: statements at any depth, ``from a import b`` as both ``a`` and ``a.b``, and
    import strings held in string constants."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = IMPORT_STRING.match(node.value)
            if m:
                names.add(m.group(1))
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "infadapter").rglob("*.py")}


def test_core_holds_the_pure_modules():
    names = {p.stem for p in CORE_DIR.glob("*.py")}
    for module in ("profile", "plan", "solver", "policies", "control", "vpa", "forecast", "cpusamples", "service",
                   "queues"):
        assert module in names, f"core module {module} is missing from infadapter/core/"


@pytest.mark.parametrize("path", sorted(CORE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_core_modules_import_no_other_layer(path):
    imported = _imports(path)
    bad = sorted(n for n in imported if n.startswith("infadapter") and not n.startswith(CORE_MAY_IMPORT)
                 and n != "infadapter")
    bad += sorted(n for n in imported if n.split(".")[0] in FORBIDDEN_LIBS)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_package_never_imports_cli():
    for path in (ROOT / "infadapter").rglob("*.py"):
        assert "cli" not in _imports(path), path


def _import_graph() -> dict[str, set[str]]:
    modules = _package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imports(path):
            # "from infadapter.x import y" names a module when y is one, else the module x itself.
            target = imported if imported in modules else imported.rpartition(".")[0]
            if target in modules and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_package_has_no_import_cycle():
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_sees_import_strings():
    # A registry's "module:attribute" string is an arrow: two modules naming each other that way form a cycle.
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(graph) == [["a", "b"]]
    assert "infadapter.backends.local.backend" in _imports(ROOT / "infadapter" / "backends" / "__init__.py")


def test_no_more_than_twelve_modules_directly_in_the_package():
    top = sorted(p.name for p in (ROOT / "infadapter").glob("*.py"))
    assert len(top) <= 12, top
