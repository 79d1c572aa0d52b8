"""Whether the kubelets of the nodes our pods run on still report, from their node Leases.

A kubelet renews its Lease (``kube-node-lease/<node>``) every quarter of the lease's duration. The node
controller marks a node NotReady only after its grace period (50 s upstream; 2 minutes in the local cluster),
and only then takes the node's pods out of their Services. Until then a stopped kubelet leaves the pods
serving, but nothing asked of that node happens: no new pod starts there, no resize is applied. So the
Kubernetes backend reports a kubelet that stopped renewing as an outage, and the loop holds the plan as it
does while the API server is away (one line when it starts, one when it ends).

Time is measured on our clock, from when we first saw the current ``renewTime`` (never by comparing the
kubelet's clock with ours), so clock skew cannot raise a false alarm; an alarm comes later by at most the
time between our reads. Nodes that kwok fakes (annotation ``kwok.x-k8s.io/node: fake``) have no kubelet and
are left out. A Role without ``get`` on leases in ``kube-node-lease`` (the in-cluster adapter's is namespaced)
turns the check off, said once by :attr:`KubeletWatch.note`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infadapter.backends.kubernetes.api import KubeApi, KubeError

log = logging.getLogger(__name__)

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}"
#: A kubelet is silent once its lease has not changed for this many lease durations (the kubelet renews at
#: a quarter of it: four renewals missed).
SILENT_DURATIONS = 1.0


@dataclass
class KubeletWatch:
    """Per node, the last ``renewTime`` seen and when (our monotonic clock) it was first seen."""

    clock: Callable[[], float] = time.monotonic
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: Per node name: whether kwok fakes it (read once: a node does not change kind).
    fake: dict[str, bool] = field(default_factory=dict)
    #: Set when the check is off (no right to read leases): why.
    note: str = ""

    def forget(self) -> None:
        """After the API server was away, every kubelet had to wait for it too: start measuring again."""
        self.seen.clear()

    def silent(self, api: KubeApi, nodes: Iterable[str]) -> tuple[str, float | None]:
        """("", None) when every node's kubelet renewed its lease lately; else what is silent and since when
        (Unix time). KubeError from the API server propagates (an outage of its own)."""
        if self.note:
            return "", None
        now = self.clock()
        quiet: list[tuple[str, float]] = []
        for node in sorted(set(nodes)):
            try:
                if node not in self.fake:
                    meta = (api.request("GET", f"/api/v1/nodes/{node}", f"get node {node}") or {}).get("metadata")
                    self.fake[node] = ((meta or {}).get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"
                if self.fake[node]:
                    continue
                lease = api.request("GET", LEASE_PATH.format(node), f"get the lease of node {node}") or {}
            except KubeError as exc:
                if exc.status in (401, 403):
                    self.note = f"kubelet heartbeats not checked: cannot read nodes or their leases ({exc})"
                    log.warning("%s", self.note)
                    return "", None
                if exc.status == 404:  # no lease (yet): nothing to judge by
                    continue
                raise
            spec = lease.get("spec") or {}
            renew = str(spec.get("renewTime") or "")
            limit = float(spec.get("leaseDurationSeconds") or 40) * SILENT_DURATIONS
            last = self.seen.get(node)
            if last is None or last[0] != renew:
                self.seen[node] = (renew, now)
                continue
            if now - last[1] > limit:
                quiet.append((node, now - last[1]))
        if not quiet:
            return "", None
        text = "; ".join(f"node {n}: its kubelet has not renewed its lease for {s:.0f} s" for n, s in quiet)
        return text + " (pods there serve on, but nothing asked of the node happens)", \
            time.time() - max(s for _, s in quiet)

    def raise_if_silent(self, api: KubeApi, pods: Iterable[Mapping[str, Any]], waiting_for: str) -> None:
        """KubeError (temporary) when a kubelet of the nodes ``pods`` are placed on is silent: a wait for what
        only it can do (``waiting_for``: a resize, a pod to start) gives up instead of blocking the loop, which
        then holds the plan until the kubelet is back."""
        nodes = {p["spec"]["nodeName"] for p in pods if (p.get("spec") or {}).get("nodeName")}
        silent, _since = self.silent(api, nodes)
        if silent:
            raise KubeError(f"{waiting_for}: {silent}", 0, temporary=True)
