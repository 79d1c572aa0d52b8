"""The test inventory for the namespaced SSH hosts of :mod:`netns_hosts`, and a way to run playbooks there.

Three hosts stand in for the three machines of docs/ansible.md: ``cp1`` (k8s_control and nfs_server),
``wk1`` (k8s_workers) and ``ad1`` (adapter). Every role's paths point into the host's own root-like
directory, because namespaces share one filesystem (see netns_hosts).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from netns_hosts import NetnsLab

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
HOSTS = ["cp1", "wk1", "ad1"]
SYSTEM_PYTHON = "/usr/bin/python3"
GROUPS = {"k8s_control": ["cp1"], "k8s_workers": ["wk1"], "nfs_server": ["cp1"], "adapter": ["ad1"]}
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.M)


def host_paths(root: Path) -> dict[str, str]:
    """Every role path of one host, under its root-like directory (test-only; real hosts use the defaults)."""
    r = str(root)
    return {
        # microk8s (check mode only, but the rendered paths must still be the host's own)
        "microk8s_manifest_dir": f"{r}/etc/infadapter/manifests",
        "microk8s_kubeconfig_path": f"{r}/etc/infadapter/kubeconfig",
        "microk8s_clustered_lock": f"{r}/var/snap/microk8s/current/var/lock/clustered.lock",
        # storage
        "nfs_server_export_path": f"{r}/srv/infadapter/models",
        "nfs_server_exports_dir": f"{r}/etc/exports.d",
        "nfs_client_conf_dir": f"{r}/etc/nfsmount.conf.d",
        # monitoring
        "prometheus_manifest_dir": f"{r}/etc/infadapter/manifests/monitoring",
        "prometheus_systemd_dir": f"{r}/etc/systemd/system",
        # images
        "image_cache_tarball_dir": f"{r}/var/cache/infadapter/images",
        "image_cache_certs_dir": f"{r}/var/snap/microk8s/current/args/certs.d",
        # models
        "models_export_dir": f"{r}/srv/infadapter/models",
        # adapter
        "adapter_install_dir": f"{r}/opt/infadapter/app",
        "adapter_venv_dir": f"{r}/opt/infadapter/venv",
        "adapter_config_dir": f"{r}/etc/infadapter",
        "adapter_state_dir": f"{r}/var/lib/infadapter",
        "adapter_systemd_dir": f"{r}/etc/systemd/system",
        "adapter_kubeconfig": f"{r}/etc/infadapter/kubeconfig",
    }


SOURCE_ITEMS = ["cli.py", "infadapter", "profiles", "templates", "pyproject.toml", "requirements.txt"]


def snapshot_source(dest: Path) -> Path:
    """A frozen copy of what the adapter role ships, so edits to the working tree during a test run (other
    people work in it) cannot make the second run differ from the first."""
    import shutil

    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in SOURCE_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / item)
    return dest


def write_inventory(lab: NetnsLab, models_build_dir: Path, bundle_path: Path) -> Path:
    """The lab's inventory: real SSH to each namespace, paths under each host's root, services off."""
    source = snapshot_source(lab.dir / "source")
    base_python = getattr(sys, "_base_executable", sys.executable)
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    all_vars = {
        "ansible_connection": "ssh",
        "ansible_user": lab.user,
        "ansible_become": False,  # the lab logs in as the user running the tests (root here)
        "ansible_ssh_private_key_file": str(lab.client_key),
        "ansible_ssh_common_args": " ".join(lab.ssh_options()[2:]),
        # Debian's Python runs the modules (it has python3-apt for the apt module).
        "ansible_python_interpreter": SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else base_python,
        # No network inside the namespaces: apt must not refresh its lists (packages are pre-installed by
        # scripts/setup.sh, so the package tasks report ok).
        "microk8s_apt_cache_valid_time": 0,
        "nfs_server_apt_cache_valid_time": 0,
        "nfs_client_apt_cache_valid_time": 0,
        # No systemd and no kernel NFS server in the namespaces: services are switched off.
        "microk8s_service_manage": False,
        "nfs_server_service_manage": False,
        "nfs_client_service_manage": False,
        "prometheus_service_manage": False,
        "image_cache_service_manage": False,
        "adapter_service_manage": False,
        # snapd needs systemd and squashfs mounts, which namespaces lack (cluster.yml runs in --check).
        "microk8s_snapd_install": False,
        # No MicroK8s here: the monitoring manifests are rendered and checked, not applied.
        "prometheus_addon_enable": False,
        "prometheus_apply": False,
        "prometheus_access": "nodeport",
        "image_cache_registry_mirrors": [
            {"registry": "docker.io", "url": f"http://{lab.hosts['cp1'].address}:5000", "skip_verify": True}
        ],
        "nfs_server_export_network": f"{lab.subnet}.0/24",
        # Tiny models: one variant at a small resolution keeps the build and copy quick.
        "models_variants": ["resnet18"],
        "models_resolution": 32,
        "models_build_dir": str(models_build_dir),
        # The venv reads the project's installed dependencies instead of an index (none is reachable
        # from the namespaces), and pip is told not to look for one.
        "adapter_venv_extra_site_dirs": [site_packages],
        "adapter_pip_extra_args": "--no-index",
        "adapter_python": base_python,
        "adapter_bundle_path": str(bundle_path),
        "adapter_source_dir": str(source),
        "adapter_prometheus_url": f"http://{lab.hosts['cp1'].address}:30090",
        "adapter_namespace": "infadapter-test",
        "microk8s_namespace": "infadapter-test",
        "prometheus_app_namespace": "infadapter-test",
    }
    hosts = {}
    for name, host in lab.hosts.items():
        hosts[name] = {"ansible_host": host.address, **host_paths(host.root)}
    inventory = {
        "all": {
            "vars": all_vars,
            "hosts": hosts,
            "children": {group: {"hosts": {m: {} for m in members}} for group, members in GROUPS.items()},
        }
    }
    path = lab.dir / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def ansible_env(lab: NetnsLab) -> dict[str, str]:
    """Environment for ansible-playbook: the repository's ansible.cfg, a private control-socket directory."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(lab.dir / "cp"),
        ANSIBLE_LOCAL_TEMP=str(lab.dir / "ansible-local"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_playbook(lab: NetnsLab, inventory: Path, playbook: str, *extra: str,
                 timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook`` from the controller namespace, over SSH to the lab's hosts."""
    cmd = lab.controller_cmd(ANSIBLE_PLAYBOOK, "-i", str(inventory), str(ROOT / "playbooks" / playbook), *extra)
    return subprocess.run(cmd, cwd=ROOT, env=ansible_env(lab), capture_output=True, text=True, timeout=timeout_s)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host, e.g. {"cp1": {"ok": 9, "changed": 0, "unreachable": 0, "failed": 0}}."""
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in RECAP.finditer(output)
    }
