"""Free TCP ports for the servers we start, chosen outside the kernel's ephemeral range.

A port the OS picks for ``bind(port 0)`` comes from the ephemeral range, the same range ``connect()``
draws source ports from. A server we restart "on the same port" (haproxy, kube-apiserver) then races
every outgoing connection on the machine: once the dead server's port is free, any client may get it
as its source port and hold it, and the restart fails with "address already in use". Ports below the
ephemeral range are never handed out that way. (The "address already in use" CI saw on a restarted
kube-apiserver had another cause, a killed server's threads still exiting: see ``wait_exited`` in
``scripts/local-cluster.sh``.)

Standard library only: ``scripts/local-cluster.sh`` runs this file with the system ``python3``.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Linux's default, for systems where /proc does not say.
DEFAULT_EPHEMERAL = (32768, 60999)
# Below this lie well-known and registered services' ports.
LOWEST = 10000
TRIES = 200


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral port range (first, last), or Linux's default where it cannot be read."""
    try:
        first, last = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return first, last


def candidates(ephemeral: tuple[int, int]) -> range:
    """The ports to draw from: below the ephemeral range, or above it where the range starts low."""
    first, last = ephemeral
    if first - LOWEST >= 1000:
        return range(LOWEST, first)
    return range(last + 1, 65536) if 65535 - last >= 1000 else range(0)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, outside the ephemeral range where the system leaves room for it."""
    pool = candidates(ephemeral_range())
    rng = random.SystemRandom()
    for _ in range(TRIES if len(pool) else 0):
        port = rng.choice(pool)
        if _bindable(host, port):
            return port
    # No room outside the ephemeral range (or all tries taken): let the OS pick, as before.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    print(free_port())
