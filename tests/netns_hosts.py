"""Test hosts as network namespaces, each running Debian's sshd, for real-SSH Ansible converge runs.

A :class:`NetnsLab` makes one namespace per host plus a controller namespace that holds a bridge; each
host is joined to the bridge by a veth pair. Addresses come from a private test range and exist only
inside these namespaces, so nothing here can reach or be reached from any other machine; Ansible runs
inside the controller namespace (``lab.controller_cmd(...)``).

Namespaces share the filesystem (and /etc/passwd) with the machine, so every host gets its own
root-like directory (``host.root``) and the test inventory points each role's paths into it. That is a
test-only arrangement: on real machines the roles' default paths (/etc, /srv, /opt) apply.

Everything is torn down by :meth:`NetnsLab.close` (sshd processes, namespaces, the temp directory),
also when start-up fails halfway.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """Why the lab cannot run here (missing root, ip or sshd), or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "ssh", "ssh-keygen", "ssh-keyscan"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (apt-get install openssh-server; scripts/setup.sh does it)"
    return None


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Host:
    """One test host: a namespace, an address on the lab's bridge, a root-like directory and its sshd."""

    name: str
    netns: str
    address: str
    root: Path
    sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class NetnsLab:
    """Namespaced SSH hosts on a private bridge; use as a context manager."""

    def __init__(self, names: list[str], subnet: str = "10.203.7", base_dir: Path | None = None) -> None:
        self.names = names
        self.subnet = subnet
        tag = f"ia7{os.getpid() % 100000}"
        self.tag = tag
        self.controller_ns = f"{tag}c"
        self.dir = Path(tempfile.mkdtemp(prefix="ia7-", dir=base_dir))
        self.user = getpass.getuser()
        self.client_key = self.dir / "client_key"
        self.known_hosts = self.dir / "known_hosts"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> NetnsLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the namespaces, the bridge, the keys and one sshd per host; wait until all answer."""
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ia7-test-client", "-f", str(self.client_key))
        self._add_netns(self.controller_ns)
        c = self.controller_ns
        _run("ip", "-n", c, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", c, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        _run("ip", "-n", c, "link", "set", "br0", "up")
        # sshd refuses to start without its privilege-separation directory (Debian's init script makes it).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for i, name in enumerate(self.names):
            ns = f"{self.tag}h{i}"
            address = f"{self.subnet}.{11 + i}"
            root = self.dir / "hosts" / name
            root.mkdir(parents=True)
            self._add_netns(ns)
            _run("ip", "link", "add", f"{self.tag}v{i}", "netns", ns, "type", "veth",
                 "peer", "name", f"{self.tag}b{i}", "netns", c)
            _run("ip", "-n", ns, "link", "set", f"{self.tag}v{i}", "name", "eth0")
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", c, "link", "set", f"{self.tag}b{i}", "master", "br0", "up")
            host = Host(name=name, netns=ns, address=address, root=root)
            self.hosts[name] = host
            self._start_sshd(host)
        self._wait_and_collect_host_keys()

    def close(self) -> None:
        """Stop every sshd, delete the namespaces and the temp directory; safe to call twice."""
        # The ssh clients' persistent control masters live in the controller namespace: ending them first
        # closes the connections, so each sshd reaps its own per-connection children.
        if self.controller_ns in self._namespaces:
            self._kill_namespace_processes(self.controller_ns)
        for host in self.hosts.values():
            proc = host.sshd
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            host.sshd = None
        # Anything still running inside the namespaces is ours (a session child that outlived its sshd).
        for ns in self._namespaces:
            self._kill_namespace_processes(ns)
        for ns in reversed(self._namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------
    def controller_cmd(self, *cmd: str) -> list[str]:
        """``cmd`` wrapped to run inside the controller namespace (the only place the hosts are reachable)."""
        return ["ip", "netns", "exec", self.controller_ns, *cmd]

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` over real SSH from the controller namespace."""
        return subprocess.run(
            self.controller_cmd("ssh", *self.ssh_options(), f"{self.user}@{self.hosts[host].address}", command),
            capture_output=True, text=True, timeout=60,
        )

    def ssh_options(self) -> list[str]:
        """Client options: the generated key, the collected host keys, strict checking, no agent."""
        return [
            "-i", str(self.client_key),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]

    @staticmethod
    def _kill_namespace_processes(ns: str) -> None:
        for attempt in range(50):
            pids = [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if attempt < 25 else signal.SIGKILL)
            time.sleep(0.1)

    def _add_netns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _start_sshd(self, host: Host) -> None:
        d = self.dir / "sshd" / host.name
        d.mkdir(parents=True)
        key = d / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{host.name}-host", "-f", str(key))
        authorized = d / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o600)
        config = d / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "Port 22",
                    f"ListenAddress {host.address}",
                    f"HostKey {key}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    f"AllowUsers {self.user}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # The temp directory is not laid out as sshd's strict mode wants a home directory.
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        log = open(d / "sshd.log", "wb")  # noqa: SIM115 - the child process owns it until close()
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, SSHD, "-D", "-e", "-f", str(config)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def _wait_and_collect_host_keys(self, timeout_s: float = 30.0) -> None:
        lines: list[str] = []
        for host in self.hosts.values():
            deadline = time.monotonic() + timeout_s
            while True:
                if host.sshd is not None and host.sshd.poll() is not None:
                    log = (self.dir / "sshd" / host.name / "sshd.log").read_text(errors="replace")
                    raise RuntimeError(f"sshd of {host.name} exited: {log.strip()[-500:]}")
                scan = subprocess.run(
                    self.controller_cmd("ssh-keyscan", "-T", "2", "-t", "ed25519", host.address),
                    capture_output=True, text=True,
                )
                found = [ln for ln in scan.stdout.splitlines() if ln and not ln.startswith("#")]
                if found:
                    lines.extend(found)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd of {host.name} did not answer on {host.address}:22")
                time.sleep(0.2)
        self.known_hosts.write_text("\n".join(lines) + "\n")
