"""Where the project's files live: one copy of every default path (the checkout's layout).

Every module that needs the repository root, the CLI entry point, a default profile, the model folder
or a run folder imports it from here, so moving one of them is one edit.
"""

from __future__ import annotations

from pathlib import Path

#: The checkout: the folder that holds ``cli.py``.
ROOT = Path(__file__).resolve().parents[1]
#: The CLI entry point, run as a subprocess for model servers and the dispatcher.
CLI = ROOT / "cli.py"
TEMPLATES = ROOT / "templates"
#: Prometheus's config and SLO rules, for the local stack, the Ansible role and the tests.
PROMETHEUS_TEMPLATES = TEMPLATES / "prometheus"
PAPER_PROFILE = ROOT / "profiles" / "paper.yaml"
#: Measured on this machine by ``profile measure``; the local backend's default when present.
LOCAL_PROFILE = ROOT / "profiles" / "local.yaml"
MODELS = ROOT / "models"
RUNS = ROOT / "runs"
#: ``adapt``'s and ``status``'s run folder on the local backend.
DEFAULT_RUN_DIR = RUNS / "adapt"
#: The trace as ``../shared/data`` ships it next to a checkout.
SHARED_TRACE = ROOT / ".." / "shared" / "data" / "twitter-trace" / "workload.tbz2"


def local_profile() -> Path:
    """The local backend's profile: ``profiles/local.yaml`` when measured, else the paper's."""
    return LOCAL_PROFILE if LOCAL_PROFILE.exists() else PAPER_PROFILE
