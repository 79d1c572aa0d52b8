"""The package as a user gets it, and the lock it is tested with.

The slow test builds the wheel (``pip wheel .``, what ``pip install .`` and ``pipx install .`` build),
installs it into a fresh venv and runs the ``infadapter`` command from a folder outside the checkout.
To keep it to seconds, the venv gets no copy of the dependencies: ``--no-deps`` install of the wheel,
and a ``.pth`` file that appends this (locked) venv's site-packages after the new venv's own, so the
package itself can only come from the wheel. The test then checks that every path the installed
package reads lies inside the new venv: the templates, profiles and forecaster are in the wheel, not
borrowed from the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cli_helpers import ROOT, run_cli

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
#: The shared trace next to the checkout, unless the environment names another (conftest keeps it).
TRACE = Path(os.environ.get("INFADAPTER_TRACE") or ROOT.parent / "shared" / "data" / "twitter-trace" / "workload.tbz2")


def _requirements(section: str | None = None) -> list[Requirement]:
    """requirements.txt's requirements: all of them, or those of one ``# Heading`` section."""
    out, current = [], None
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            current = line[1:].split("(")[0].strip()
        elif line and (section is None or current == section):
            out.append(Requirement(line.split(" #", 1)[0].strip()))  # pip's end-of-line comments (`# off-cluster`)
    return out


def _locked() -> dict[str, tuple[str, int]]:
    """requirements.lock: canonical name -> (pinned version, number of hashes)."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if m:
            pins[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return pins


# -- the lock (fast) -------------------------------------------------------------------------------
def test_lock_pins_every_requirement_with_hashes() -> None:
    """requirements.txt edited without `bash scripts/lock.sh` fails here, naming the requirement."""
    pins = _locked()
    assert len(pins) > len(_requirements()), "the lock holds the transitive dependencies too"
    stale = [f"{r} (locked: {pins.get(canonicalize_name(r.name), ('none',))[0]})" for r in _requirements()
             if canonicalize_name(r.name) not in pins or pins[canonicalize_name(r.name)][0] not in r.specifier]
    assert not stale, f"requirements.lock is stale; run `bash scripts/lock.sh`: {stale}"
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"pins without --hash: {unhashed}"


def test_setup_installs_from_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes -r requirements.lock" in setup
    assert "sha256sum requirements.lock" in setup, "the re-install stamp is keyed on the lock"
    assert "-r requirements.txt" not in setup


def test_checkout_reads_its_own_folders() -> None:
    """Run from the checkout (not installed), paths point at the committed folders and pyproject's version."""
    from infadapter import paths, version

    assert not paths.INSTALLED
    assert paths.ROOT == ROOT
    assert paths.TEMPLATES == ROOT / "templates" and paths.FORECASTER.is_file()
    assert version() == VERSION
    r = run_cli(*shlex.split("python cli.py --version")[2:])  # docs/cli.md's command
    assert r.stdout.strip() == f"infadapter, version {VERSION}", r.stderr


# -- the wheel, installed (slow) -------------------------------------------------------------------
def _tracked(*paths: str) -> set[str]:
    r = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(r.stdout.split())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import hatchling  # noqa: F401  (the build backend, from the lock: the build needs no network)
    except ImportError:
        pytest.fail("hatchling is not in this venv: run `bash scripts/setup.sh` (it installs requirements.lock)")
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(dist)], check=True, timeout=300)
    (whl,) = dist.glob("infadapter-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed and the locked deps visible."""
    base = tmp_path_factory.mktemp("venv")
    env_dir = base / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    ask = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", ask], capture_output=True, text=True,
                                  check=True).stdout.strip())
    assert purelib.is_relative_to(env_dir), purelib
    # Appended after the venv's own site-packages: the dependencies come from here, infadapter cannot
    # (this venv does not hold it, and the new venv's copy comes first anyway).
    (purelib / "_locked_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                    "--no-deps", "--disable-pip-version-check", "-q", str(wheel)], check=True, timeout=300)
    return env_dir


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder outside the checkout, with nothing of it nearby."""
    box = tmp_path_factory.mktemp("elsewhere")
    assert ROOT not in box.parents
    return box


def _run(venv: Path, cwd: Path, *args: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    """Run as a user of the venv would: its bin/ first on PATH, nothing of the checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200",
                "XDG_DATA_HOME": str(cwd / "data"), "INFADAPTER_TRACE": str(TRACE), **env_overrides})
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _sh(venv: Path, cwd: Path, command: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    """A documented shell command, verbatim (tests/test_docs.py finds it here)."""
    return _run(venv, cwd, "bash", "-o", "pipefail", "-c", command, **env_overrides)


@pytest.mark.slow
def test_wheel_carries_the_data_and_the_runtime_dependencies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"infadapter-{VERSION}.dist-info/METADATA").decode()
        entry_points = z.read(f"infadapter-{VERSION}.dist-info/entry_points.txt").decode()
    shipped = {n.removeprefix("infadapter/_data/") for n in names if n.startswith("infadapter/_data/")}
    assert shipped == _tracked("cli.py", "templates", "profiles"), "the wheel ships exactly the tracked files"
    assert _tracked("infadapter") <= names, "every tracked module is in the wheel"
    assert "infadapter = infadapter.__main__:run" in entry_points
    declared = {canonicalize_name(Requirement(line.split(":", 1)[1]).name)
                for line in meta.splitlines() if line.startswith("Requires-Dist:")}
    assert declared == {canonicalize_name(r.name) for r in _requirements("Runtime")}


@pytest.mark.slow
def test_installed_paths_are_inside_the_venv(venv: Path, elsewhere: Path) -> None:
    probe = ("import json, infadapter, infadapter.paths as p; print(json.dumps({'file': infadapter.__file__, "
             "'installed': p.INSTALLED, 'shipped': [str(x) for x in (p.ROOT, p.CLI, p.TEMPLATES, p.PAPER_PROFILE, "
             "p.local_profile(), p.FORECASTER)], 'state': [str(x) for x in (p.RUNS, p.MODELS, p.LOCAL_PROFILE)]}))")
    r = _run(venv, elsewhere, f"{venv}/bin/python", "-c", probe)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["installed"] is True
    for p in [got["file"], *got["shipped"]]:
        assert Path(p).is_relative_to(venv) and Path(p).exists(), p
    # Built models, run folders and a measured profile go to the user's data folder, not site-packages.
    data = elsewhere / "data" / "infadapter"
    assert [Path(p) for p in got["state"]] == [data / "runs", data / "models", data / "profiles" / "local.yaml"]
    # Model servers and the dispatcher are started as `python <paths.CLI> ...`: that script runs too.
    r = _run(venv, elsewhere, f"{venv}/bin/python", got["shipped"][1], "--version")
    assert r.stdout.strip() == f"infadapter, version {VERSION}", r.stderr
    # The declared dependencies are what the lock installed (pip sees them through the .pth file).
    r = subprocess.run([sys.executable, "-m", "pip", "--python", f"{venv}/bin/python", "check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_installed_command_runs_from_any_folder(venv: Path, elsewhere: Path) -> None:
    """The commands docs/cli.md shows for the installed package, verbatim, from a folder outside the checkout."""
    r = _sh(venv, elsewhere, "infadapter --version")
    assert r.returncode == 0 and r.stdout.strip() == f"infadapter, version {VERSION}", r.stdout + r.stderr

    r = _sh(venv, elsewhere, "python -m infadapter --help")
    assert r.returncode == 0 and "Examples:" in r.stdout and "simulate" in r.stdout, r.stderr

    # The same program as `python cli.py`: the same plan, byte for byte.
    r = _sh(venv, elsewhere, "infadapter plan --load 120 --json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["feasible"] is True and plan["load"] == 120
    assert r.stdout == run_cli("plan", "--load", "120", "--json").stdout

    # The templates: a plan rendered into manifests.
    r = _sh(venv, elsewhere, "infadapter plan --load 120 --json | infadapter render --out manifests")
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "manifests" / "tfs-resnet50.deployment.yaml").is_file(), r.stdout

    # The profiles and the committed forecaster: `auto` picks the learned model only when its file exists.
    # No ../shared beside an installed package: the trace comes from INFADAPTER_TRACE (set by _sh).
    assert TRACE.exists(), f"the shared trace is missing: {TRACE} (set INFADAPTER_TRACE)"
    r = _sh(venv, elsewhere, "infadapter simulate --window paper --policy infadapter --json")
    assert r.returncode == 0, r.stderr
    sim = json.loads(r.stdout)
    assert sim["policy"] == "infadapter" and sim["forecaster"] == "learned" and sim["profile"] == "paper"
    assert sim["requests"] > 100_000 and 0 <= sim["slo_violation_rate"] < 0.01

    # Without a trace it says where one goes, in one line (nothing to download from here).
    r = _sh(venv, elsewhere, "infadapter simulate --window paper --policy infadapter --json",
            INFADAPTER_TRACE=str(elsewhere / "no-such-trace.tbz2"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_lock_refresh_changes_nothing(tmp_path: Path) -> None:
    """`bash scripts/lock.sh` on the committed lock reproduces it: the lock is what requirements.txt compiles
    to (uv keeps the pinned versions it finds in the output file). Resolves against PyPI."""
    out = tmp_path / "requirements.lock"
    out.write_bytes((ROOT / "requirements.lock").read_bytes())
    uv = Path(sys.executable).parent / "uv"
    env = {**os.environ, "LOCK": str(out), **({"UV": str(uv)} if uv.exists() else {})}
    r = subprocess.run(["bash", "-c", "bash scripts/lock.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (ROOT / "requirements.lock").read_text(), "requirements.lock: run bash scripts/lock.sh"
