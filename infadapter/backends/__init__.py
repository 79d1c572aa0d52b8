"""Backends apply plans: local processes, Kubernetes, or a dry-run folder. They never decide.

A new backend is one package and one entry in :data:`BACKENDS`. The entry names, as import strings (loaded on
use, so a backend's dependencies load only when it runs and ``--help`` stays fast), the five things the rest
of the program asks a backend for:

- ``backend``: its class, implementing :class:`infadapter.backends.base.Backend`;
- ``config``: its run configuration, a subclass of :class:`infadapter.adapter.runner.AdapterConfig` with a
  ``from_flags(shared, **own)`` class method that builds it from the flags every backend shares and its own;
- ``options``: a light module (it imports click alone) holding ``ADAPT``, the backend's own ``adapt`` flags,
  and ``STATUS``, its own ``status`` flags (lists of :class:`click.Option`); ``cli.py adapt --help`` lists
  them under the backend's heading, and a flag of another backend given on the command line is refused;
- ``setup``: its preparation step for the one runner (:class:`infadapter.adapter.runner.BackendSetup`);
- ``status``: its status collector (:class:`infadapter.backends.base.StatusCollector`) for ``cli.py status``.

``cli.py adapt``, ``experiment`` and ``status`` read all five from here; none of them names a backend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from infadapter.errors import BadInput


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's parts live ("module:attribute", or a module for ``options``; imported on use)."""

    backend: str
    config: str
    options: str
    setup: str
    status: str
    help: str = ""
    #: Its own flags that ``cli.py experiment`` sets for every run (None: it cannot run experiments, e.g. it
    #: serves no request whose outcome could be compared).
    experiment: dict[str, Any] | None = None
    #: Whether it runs the cluster's own autoscalers (``hpa-upstream:``/``vpa-upstream:`` policies).
    upstream: bool = False


BACKENDS: dict[str, BackendEntry] = {
    "local": BackendEntry(
        backend="infadapter.backends.local.backend:LocalBackend",
        config="infadapter.backends.local.setup:RunConfig",
        options="infadapter.backends.local.options",
        setup="infadapter.backends.local.setup:LocalSetup",
        status="infadapter.adapter.status:RunFolderStatus",
        help="model servers, a router and Prometheus on this machine",
        experiment={}),
    "kubernetes": BackendEntry(
        backend="infadapter.backends.kubernetes.backend:KubernetesBackend",
        config="infadapter.backends.kubernetes.setup:ClusterRunConfig",
        options="infadapter.backends.kubernetes.options",
        setup="infadapter.backends.kubernetes.setup:ClusterSetup",
        status="infadapter.backends.kubernetes.status:KubernetesStatus",
        help="Deployments in a Kubernetes namespace",
        # A replay of the load serves no request: an experiment sends it to the pods.
        experiment={"traffic": "live"},
        upstream=True),
    "dry-run": BackendEntry(
        backend="infadapter.backends.dryrun.backend:DryRunBackend",
        config="infadapter.backends.kubernetes.setup:ClusterRunConfig",
        options="infadapter.backends.dryrun.options",
        setup="infadapter.backends.kubernetes.setup:ClusterSetup",
        status="infadapter.adapter.status:RunFolderStatus",
        help="the manifests each plan would apply, written to a folder"),
}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


def experiment_backends() -> tuple[str, ...]:
    """The backends ``cli.py experiment`` can run policies on."""
    return tuple(name for name, e in BACKENDS.items() if e.experiment is not None)


def entry(name: str) -> BackendEntry:
    """The registry entry of ``name``; BadInput naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInput(f"--backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}") from None


def backend_class(name: str) -> Any:
    """The class of backend ``name`` (imported now)."""
    return _load(entry(name).backend)


def backend_config(name: str) -> Any:
    """The run configuration class of backend ``name`` (``from_flags(shared, **own)`` builds one)."""
    return _load(entry(name).config)


def backend_options(name: str, command: str = "adapt") -> list[Any]:
    """Backend ``name``'s own flags of ``command`` (``adapt`` or ``status``): click options, imported now."""
    return list(getattr(_load(entry(name).options), command.upper(), ()))


def backend_setup(name: str) -> Any:
    """A new preparation step of backend ``name`` (see :class:`infadapter.adapter.runner.BackendSetup`)."""
    return _load(entry(name).setup)()


def backend_status(name: str) -> Any:
    """The status collector of backend ``name`` (see :class:`infadapter.backends.base.StatusCollector`)."""
    return _load(entry(name).status)()
