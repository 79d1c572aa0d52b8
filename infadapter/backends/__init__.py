"""Backends apply plans: local processes, Kubernetes, or a dry-run folder. They never decide.

A new backend is one module with a class implementing :class:`infadapter.backends.base.Backend` and
one entry in :data:`BACKENDS`.
"""

from __future__ import annotations

#: name -> "module:Class"; imported on demand so a backend's dependencies load only when used.
BACKENDS: dict[str, str] = {
    "local": "infadapter.backends.local:LocalBackend",
    "kubernetes": "infadapter.backends.kubernetes:KubernetesBackend",
    "dry-run": "infadapter.backends.dryrun:DryRunBackend",
}
