"""ruff over the repository, and the one-way dependency rule of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The pure core never imports I/O layers (CONVENTIONS.md 1; ARCHITECTURE.md dependency direction).
CORE = ["profile", "plan", "solver", "policies", "vpa", "forecast", "errors"]
FORBIDDEN = ("infadapter.monitor", "infadapter.backends", "infadapter.loop", "infadapter.commands",
             "infadapter.serving", "cli", "aiohttp", "kubernetes", "prometheus_api_client")


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_io_layer(module):
    path = ROOT / "infadapter" / f"{module}.py"
    if not path.exists():
        pytest.fail(f"core module {module} is missing")
    bad = sorted(n for n in _imports(path) if n.startswith(FORBIDDEN))
    assert not bad, f"infadapter/{module}.py imports {bad}"


def test_package_never_imports_cli():
    for path in (ROOT / "infadapter").rglob("*.py"):
        assert "cli" not in _imports(path), path
