"""The test session never touches the user's home: its cache, forecaster and CLI runs use their own folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infadapter.core.forecast import default_model_path
from infadapter.observe.trace import cache_dir
from tests.cli_helpers import run_cli
from tests.conftest import SESSION_DIR

REAL_CACHE = Path.home() / ".cache"


def test_the_session_cache_is_its_own_folder() -> None:
    assert os.environ["XDG_CACHE_HOME"] == str(SESSION_DIR / "cache")
    assert cache_dir().is_relative_to(SESSION_DIR)
    assert default_model_path().is_relative_to(Path(__file__).resolve().parents[1])  # the committed model
    assert not cache_dir().is_relative_to(REAL_CACHE)


@pytest.mark.slow
def test_cli_subprocesses_inherit_the_session_cache(tmp_path: Path) -> None:
    """A CLI run with HOME pointing at an empty folder still works and writes only to the session cache."""
    home = tmp_path / "home"
    home.mkdir()
    r = run_cli("simulate", "--window", "1300920:120", "--policy", "static:resnet18=4", "--json",
                env={"HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy"] == "static:resnet18=4"
    # A dry-run adapt draws adapt.png: matplotlib's config folder is the session's too.
    r = run_cli("adapt", "--backend", "dry-run", "--out", str(tmp_path / "dry"), "--rate", "5", "--duration", "2",
                "--interval", "2", env={"HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dry" / "adapt.png").exists()
    assert list(home.iterdir()) == [], "the CLI wrote into HOME"
