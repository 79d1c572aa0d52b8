"""Static checks of the Ansible side: syntax, ansible-lint's production profile, the role skeleton,
argument specs that match the defaults, no hard-coded addresses, and the inventory validation play."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROLES = ["microk8s", "nfs_server", "nfs_client", "prometheus", "image_cache", "models", "adapter"]
PLAYBOOKS = ["site.yml", "validate.yml", "cluster.yml", "storage.yml", "monitoring.yml", "images.yml",
             "models.yml", "adapter.yml"]
SAMPLE = ROOT / "inventory" / "sample" / "hosts.yml"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}


def _ansible_playbook(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_every_playbook_passes_syntax_check() -> None:
    r = _ansible_playbook("-i", str(SAMPLE), "--syntax-check", *[f"playbooks/{p}" for p in PLAYBOOKS])
    assert r.returncode == 0, r.stdout + r.stderr
    for p in PLAYBOOKS:
        assert f"playbook: playbooks/{p}" in r.stdout


def test_site_imports_one_playbook_per_stage_after_validation() -> None:
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    imported = [play["ansible.builtin.import_playbook"] for play in site]
    assert imported == PLAYBOOKS[1:]


@pytest.mark.slow
def test_ansible_lint_production_profile_passes() -> None:
    r = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor",
                        "playbooks", "roles", "inventory"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Passed" in r.stdout + r.stderr


@pytest.mark.parametrize("role", ROLES)
def test_role_has_the_common_skeleton(role: str) -> None:
    base = ROOT / "roles" / role
    for rel in ("defaults/main.yml", "meta/main.yml", "meta/argument_specs.yml", "tasks/main.yml",
                "tasks/preflight.yml", "tasks/install.yml", "tasks/configure.yml", "tasks/service.yml",
                "handlers/main.yml"):
        assert (base / rel).is_file(), f"{role}: {rel} missing"
    assert list((base / "templates").glob("*.j2")), f"{role}: no templates"
    main = yaml.safe_load((base / "tasks" / "main.yml").read_text())
    assert [t["ansible.builtin.include_tasks"] for t in main] == [
        "preflight.yml", "install.yml", "configure.yml", "service.yml"]


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_are_prefixed_documented_and_specified(role: str) -> None:
    base = ROOT / "roles" / role
    text = (base / "defaults" / "main.yml").read_text()
    defaults = yaml.safe_load(text) or {}
    spec = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert all(name.startswith(f"{role}_") for name in defaults), f"{role}: unprefixed default"
    assert set(defaults) == set(spec), f"{role}: defaults and argument_specs differ: {set(defaults) ^ set(spec)}"
    lines = text.splitlines()
    for name in defaults:
        i = next(n for n, ln in enumerate(lines) if ln.startswith(f"{name}:"))
        # Each variable has a comment above it, or belongs to a commented block of related ones (no blank
        # line between the variable and the block's comment).
        j = i - 1
        while j >= 0 and lines[j].strip() and not lines[j].startswith("#"):
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"{role}: {name} has no comment above it"
        assert spec[name].get("description"), f"{role}: {name} has no description in argument_specs"
    if role in ("microk8s", "nfs_server", "nfs_client", "prometheus", "image_cache", "adapter"):
        assert f"{role}_service_manage" in defaults


def test_roles_and_playbooks_hard_code_no_addresses_or_users() -> None:
    ipv4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
    offenders = []
    for path in [*ROOT.glob("roles/**/*"), *ROOT.glob("playbooks/*.yml")]:
        if path.is_file():
            for ip in ipv4.findall(path.read_text()):
                # Loopback (the port-forward's default) and RFC 5737 documentation examples only.
                if ip != "127.0.0.1" and not ip.startswith("192.0.2."):
                    offenders.append(f"{path.relative_to(ROOT)}: {ip}")
            assert "ansible_user:" not in path.read_text() or path.suffix != ".yml"
    assert not offenders, offenders


@pytest.mark.slow
def test_sample_inventory_passes_validation() -> None:
    r = _ansible_playbook("-i", str(SAMPLE), "playbooks/validate.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_inventory_with_two_control_nodes_is_rejected(tmp_path: Path) -> None:
    inv = yaml.safe_load(SAMPLE.read_text())
    inv["all"]["children"]["k8s_control"]["hosts"]["node2"] = {}
    bad = tmp_path / "hosts.yml"
    bad.write_text(yaml.safe_dump(inv))
    r = _ansible_playbook("-i", str(bad), "playbooks/validate.yml")
    assert r.returncode != 0
    assert "k8s_control and nfs_server need exactly one host each" in r.stdout
