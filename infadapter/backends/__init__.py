"""Backends apply plans: local processes, Kubernetes, or a dry-run folder. They never decide.

A new backend is one module with a class implementing :class:`infadapter.backends.base.Backend`, a
preparation step (:class:`infadapter.adapter.runner.BackendSetup`: build it from the run's flags, say what
the loop observes) and one entry in :data:`BACKENDS`. ``cli.py adapt --backend NAME`` and the one
runner (:class:`infadapter.adapter.runner.AdapterRun`) find both here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from infadapter.errors import BadInput


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's class and its preparation step live ("module:attribute", imported on use so a
    backend's dependencies load only when it runs)."""

    backend: str
    setup: str
    help: str = ""


BACKENDS: dict[str, BackendEntry] = {
    "local": BackendEntry("infadapter.backends.local.backend:LocalBackend",
                          "infadapter.backends.local.setup:LocalSetup",
                          "model servers, a router and Prometheus on this machine"),
    "kubernetes": BackendEntry("infadapter.backends.kubernetes.backend:KubernetesBackend",
                               "infadapter.backends.kubernetes.setup:ClusterSetup",
                               "Deployments in a Kubernetes namespace"),
    "dry-run": BackendEntry("infadapter.backends.dryrun:DryRunBackend",
                            "infadapter.backends.kubernetes.setup:ClusterSetup",
                            "the manifests each plan would apply, written to a folder"),
}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def entry(name: str) -> BackendEntry:
    """The registry entry of ``name``; BadInput naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInput(f"--backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}") from None


def backend_class(name: str) -> Any:
    """The class of backend ``name`` (imported now)."""
    return _load(entry(name).backend)


def backend_setup(name: str) -> Any:
    """A new preparation step of backend ``name`` (see :class:`infadapter.adapter.runner.BackendSetup`)."""
    return _load(entry(name).setup)()
