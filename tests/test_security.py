"""Security defaults: every server binds loopback unless told otherwise, and Ansible keeps secrets in
Vault-style variables that only no_log tasks touch."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest
import yaml

from infadapter.adapter.loop import LoopMetrics
from infadapter.serving.dispatcher import DispatcherConfig
from infadapter.serving.server import ServerConfig, server_command

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def _option_default(module: str, command: str, name: str) -> object:
    import importlib

    cmd: click.Command = getattr(importlib.import_module(module), command)
    return next(p.default for p in cmd.params if p.name == name)


@pytest.mark.parametrize(
    ("module", "command"),
    [("infadapter.commands.serving", "serve_model"), ("infadapter.commands.traffic", "dispatch")],
)
def test_cli_servers_bind_loopback_by_default(module: str, command: str) -> None:
    assert _option_default(module, command, "host") == LOOPBACK


def test_every_server_defaults_to_loopback() -> None:
    assert ServerConfig(model_dir=Path("m"), name="x").host == LOOPBACK
    assert DispatcherConfig(admin_token="t").host == LOOPBACK
    assert inspect.signature(LoopMetrics.serve).parameters["host"].default == LOOPBACK
    assert inspect.signature(server_command).parameters["host"].default == LOOPBACK
    # The local Prometheus and the local dispatcher the adapter starts: loopback addresses in their argv.
    monitor = (ROOT / "infadapter" / "observe" / "monitor.py").read_text()
    assert "--web.listen-address=127.0.0.1:" in monitor
    router = (ROOT / "infadapter" / "serving" / "router.py").read_text()
    assert '"--host", "127.0.0.1"' in router


# -- Ansible: secrets ----------------------------------------------------------------------------------
SECRET = re.compile(r"token|password|passwd|secret|vault_", re.IGNORECASE)
# Variables whose names mention a token but hold no secret (a lifetime, a path).
NOT_SECRET = re.compile(r"\w*_ttl_s\b|\w*token_file\b|admin\.token\b")


def _tasks() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted((ROOT / "roles").glob("*/tasks/*.yml")) + sorted((ROOT / "playbooks").glob("*.yml")):
        for item in yaml.safe_load(path.read_text()) or []:
            for task in [item, *item.get("tasks", []), *item.get("block", [])]:
                if isinstance(task, dict) and "name" in task:
                    out.append((path, task))
    return out


def test_tasks_that_handle_secrets_are_no_log() -> None:
    offenders = []
    for path, task in _tasks():
        body = {k: v for k, v in task.items() if k not in ("name", "when", "no_log", "notify", "register")}
        text = NOT_SECRET.sub("", yaml.safe_dump(body))
        if SECRET.search(text) and task.get("no_log") is not True:
            offenders.append(f"{path.relative_to(ROOT)}: {task['name']}")
    assert not offenders, offenders


def test_the_admin_token_comes_from_a_vault_variable_and_is_no_log_in_the_spec() -> None:
    defaults = yaml.safe_load((ROOT / "roles/adapter/defaults/main.yml").read_text())
    assert defaults["adapter_admin_token"] == "{{ vault_infadapter_admin_token | default('') }}"
    spec = yaml.safe_load((ROOT / "roles/adapter/meta/argument_specs.yml").read_text())
    assert spec["argument_specs"]["main"]["options"]["adapter_admin_token"]["no_log"] is True
    # The token travels as a file path on the command line, never as a value there or in the environment.
    unit = (ROOT / "roles/adapter/templates/adapter.service.j2").read_text()
    env = (ROOT / "roles/adapter/templates/adapter.env.j2").read_text()
    assert "adapter_admin_token" not in unit + env
    assert (
        "'admin-token-file': (adapter_config_dir ~ '/admin.token')"
        in (ROOT / "roles/adapter/vars/main.yml").read_text()
    )


def test_no_plain_secret_values_in_the_sample_inventory() -> None:
    for path in (ROOT / "inventory").rglob("*.yml"):
        data = yaml.safe_load(path.read_text()) or {}
        flat = yaml.safe_dump(data)
        for line in flat.splitlines():
            key = line.split(":", 1)[0].strip()
            if SECRET.search(key) and not NOT_SECRET.search(key) and "ttl" not in key:
                value = line.split(":", 1)[1].strip()
                assert value.startswith("'{{") or value.startswith('"{{') or value.startswith("{{") or not value, (
                    f"{path}: {key} holds a literal value; keep secrets in an Ansible Vault variable"
                )
