"""Where the project's files live: one copy of every default path, in a checkout and when installed.

Every module that needs the repository root, the CLI entry point, a default profile, the model folder
or a run folder imports it from here, so moving one of them is one edit.

One rule decides where the shipped files are read from. A built package (``pip install .``, a wheel)
carries the top-level ``templates/``, ``profiles/`` (with the committed forecaster) and ``cli.py`` inside
itself as ``infadapter/_data/`` (pyproject.toml's ``force-include``); that folder exists only there, so
its presence means "installed". Otherwise this is a checkout (or an editable install of one) and the
files are read where they are committed, beside the package. The top-level folders stay the one copy
in git: Ansible renders the same templates.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: The copies a built package ships (absent in a checkout: nothing creates it there).
_SHIPPED = _PACKAGE / "_data"
#: True when this copy of the package was installed from a wheel rather than run from a checkout.
INSTALLED = _SHIPPED.is_dir()
#: The folder that holds ``cli.py``, ``templates/`` and ``profiles/``: the checkout, or the shipped copy.
ROOT = _SHIPPED if INSTALLED else _PACKAGE.parent
#: Where built models, run folders and this machine's measured profile go: the checkout itself, or, when
#: installed, ``$XDG_DATA_HOME/infadapter`` (``~/.local/share/infadapter``). Not site-packages: it is
#: read-only for a system install and wiped by an upgrade; and one folder whatever the working folder, so
#: ``status`` finds what ``adapt`` ran.
STATE = (Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "infadapter"
         if INSTALLED else ROOT)

#: The CLI entry point, run as a subprocess for model servers and the dispatcher. A script path (not
#: ``-m infadapter``) so a checkout that is not installed can start them from any working folder.
CLI = ROOT / "cli.py"
TEMPLATES = ROOT / "templates"
#: Prometheus's config and SLO rules, for the local stack, the Ansible role and the tests.
PROMETHEUS_TEMPLATES = TEMPLATES / "prometheus"
PAPER_PROFILE = ROOT / "profiles" / "paper.yaml"
#: The local backend's profile as committed (measured on an idle machine by the developers).
SHIPPED_LOCAL_PROFILE = ROOT / "profiles" / "local.yaml"
#: Measured on this machine by ``profile measure`` (its default ``--out``); the local backend's default
#: when present. The committed file in a checkout.
LOCAL_PROFILE = STATE / "profiles" / "local.yaml"
#: The learned forecaster trained on the Twitter trace, committed; ``forecast train`` regenerates it.
FORECASTER = ROOT / "profiles" / "forecaster.npz"
MODELS = STATE / "models"
RUNS = STATE / "runs"
#: ``adapt``'s and ``status``'s run folder on the local backend.
DEFAULT_RUN_DIR = RUNS / "adapt"
#: The trace as ``../shared/data`` ships it next to a checkout. An installed package has no such
#: neighbour (this path, beside site-packages, does not exist): it reads ``--trace``,
#: ``INFADAPTER_TRACE`` or the user cache (infadapter/trace.py).
SHARED_TRACE = _PACKAGE.parent / ".." / "shared" / "data" / "twitter-trace" / "workload.tbz2"


def local_profile() -> Path:
    """The local backend's profile: this machine's when measured, else the shipped one, else the paper's."""
    return next((p for p in (LOCAL_PROFILE, SHIPPED_LOCAL_PROFILE) if p.exists()), PAPER_PROFILE)
