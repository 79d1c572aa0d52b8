"""Real converge runs: the playbooks over real SSH against hosts in network namespaces, twice.

Run for real (and a second run must report changed=0): storage.yml (NFS server packages, export
directory and export table; NFS client packages and mount defaults), monitoring.yml (PodMonitors,
ScrapeConfig and NodePort Service rendered), models.yml (`cli.py build-models` on the controller,
variants copied into the export, TF Serving's model config), adapter.yml (project shipped and unpacked,
venv created, requirements installed by pip, profile and environment file rendered, systemd unit).

Run in --check --diff mode, because they cannot happen here: cluster.yml (snapd needs systemd and
squashfs mounts, MicroK8s needs a real kernel-level container runtime) and images.yml (pulls go into
MicroK8s' containerd, and the namespaces reach no registry). Check mode still evaluates every variable
and renders every template (the diffs are asserted below).

Switched off by variables in tests/ansible_lab.py, each with its reason: services (no systemd in the
namespaces: *_service_manage false), the kernel NFS server (exportfs needs nfsd), apt list refreshes
(no network inside the namespaces; the packages are pre-installed by scripts/setup.sh, so the package
tasks really run and report ok), and applying manifests (no cluster).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from ansible_lab import HOSTS, recap, run_playbook, write_inventory
from netns_hosts import NetnsLab, available

pytestmark = pytest.mark.slow

REAL = ["storage.yml", "monitoring.yml", "models.yml", "adapter.yml"]
CHECK_ONLY = ["cluster.yml", "images.yml"]


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    reason = available()
    if reason:
        pytest.fail(f"the converge tests need namespaced SSH hosts: {reason}")
    with NetnsLab(HOSTS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab: NetnsLab) -> Path:
    return write_inventory(lab, lab.dir / "models-build", lab.dir / "bundle" / "adapter.tar")


@pytest.fixture(scope="module")
def runs(lab: NetnsLab, inventory: Path) -> dict[tuple[int, str], tuple[int, str]]:
    """(round, playbook) -> (exit code, output) for two rounds of every playbook."""
    out: dict[tuple[int, str], tuple[int, str]] = {}
    for rnd in (1, 2):
        for pb in ["validate.yml", *REAL]:
            r = run_playbook(lab, inventory, pb, "--diff")
            out[rnd, pb] = (r.returncode, r.stdout + r.stderr)
        if rnd == 1:
            for pb in CHECK_ONLY:
                r = run_playbook(lab, inventory, pb, "--check", "--diff")
                out[rnd, pb] = (r.returncode, r.stdout + r.stderr)
    return out


def _root(lab: NetnsLab, host: str) -> Path:
    return lab.hosts[host].root


@pytest.mark.parametrize("playbook", ["validate.yml", *REAL, *CHECK_ONLY])
def test_first_run_converges(runs: dict, playbook: str) -> None:
    rc, output = runs[1, playbook]
    assert rc == 0, output[-6000:]
    counters = recap(output)
    assert counters, output[-2000:]
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in counters.values())


@pytest.mark.parametrize("playbook", REAL)
def test_second_run_changes_nothing(runs: dict, playbook: str) -> None:
    rc, output = runs[2, playbook]
    assert rc == 0, output[-6000:]
    counters = recap(output)
    changed = {host: c["changed"] for host, c in counters.items() if c["changed"]}
    assert not changed, output[-6000:]


def test_each_play_reached_its_hosts_over_ssh(runs: dict) -> None:
    assert set(recap(runs[1, "storage.yml"][1])) == {"cp1", "wk1"}
    assert set(recap(runs[1, "monitoring.yml"][1])) == {"cp1"}
    assert set(recap(runs[1, "models.yml"][1])) == {"cp1"}
    assert set(recap(runs[1, "adapter.yml"][1])) == {"ad1"}


def test_nfs_export_is_configured_on_the_server_only(runs: dict, lab: NetnsLab) -> None:
    cp1 = _root(lab, "cp1")
    table = (cp1 / "etc/exports.d/infadapter.exports").read_text().splitlines()
    entries = [ln for ln in table if ln and not ln.startswith("#")]
    assert entries == [f"{cp1}/srv/infadapter/models {lab.subnet}.0/24(rw,sync,no_subtree_check,no_root_squash)"]
    assert (cp1 / "srv/infadapter/models").is_dir()
    for other in ("wk1", "ad1"):
        assert not (_root(lab, other) / "etc/exports.d").exists()


def test_nfs_clients_have_mount_defaults_for_the_server(runs: dict, lab: NetnsLab) -> None:
    for host in ("cp1", "wk1"):
        conf = (_root(lab, host) / "etc/nfsmount.conf.d/infadapter.conf").read_text()
        assert f'[ Server "{lab.hosts["cp1"].address}" ]' in conf
        assert "nfsvers=4.2" in conf and "hard=True" in conf
    assert not (_root(lab, "ad1") / "etc/nfsmount.conf.d").exists()


def test_models_are_published_in_tf_serving_layout_and_run(runs: dict, lab: NetnsLab) -> None:
    import onnxruntime as ort

    store = _root(lab, "cp1") / "srv/infadapter/models"
    model = store / "resnet18" / "1" / "model.onnx"
    built = lab.dir / "models-build" / "resnet18" / "1" / "model.onnx"
    assert hashlib.sha256(model.read_bytes()).digest() == hashlib.sha256(built.read_bytes()).digest()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    # The tests build at resolution 32 (ansible_lab: models_resolution); NCHW or NHWC, batch 1.
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    assert 32 in shape
    (logits,) = session.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})
    assert logits.shape[-1] == 1000
    config = (store / "models.config").read_text()
    assert 'name: "resnet18"' in config and 'base_path: "/models/resnet18"' in config


def test_monitoring_manifests_select_the_service_and_the_adapter(runs: dict, lab: NetnsLab) -> None:
    import kubernetes_validate

    d = _root(lab, "cp1") / "etc/infadapter/manifests/monitoring"
    monitors = [m for m in yaml.safe_load_all((d / "podmonitors.yml").read_text()) if m]
    assert [m["kind"] for m in monitors] == ["PodMonitor", "PodMonitor"]
    components = {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors}
    assert components == {"model-server", "dispatcher"}
    assert all(m["metadata"]["namespace"] == "infadapter-test" for m in monitors)
    assert all(m["metadata"]["labels"] == {"release": "kube-prom-stack"} for m in monitors)
    scrape = yaml.safe_load((d / "scrapeconfig-adapter.yml").read_text())
    assert scrape["spec"]["staticConfigs"][0]["targets"] == [f"{lab.hosts['ad1'].address}:9109"]
    service = yaml.safe_load((d / "nodeport.yml").read_text())
    assert service["spec"]["ports"][0]["nodePort"] == 30090
    kubernetes_validate.validate(service, "1.30", strict=True)


def test_adapter_is_installed_and_its_cli_runs_over_ssh(runs: dict, lab: NetnsLab) -> None:
    root = _root(lab, "ad1")
    app, venv = root / "opt/infadapter/app", root / "opt/infadapter/venv"
    r = lab.ssh("ad1", f"{venv}/bin/python {app}/cli.py --version")
    assert r.returncode == 0 and "infadapter" in r.stdout, r.stderr
    # The run directory is empty: status answers (exit 0) that nothing runs.
    r = lab.ssh("ad1", f"{venv}/bin/python {app}/cli.py status --run-dir {root}/var/lib/infadapter --json")
    assert r.returncode == 0, r.stderr
    assert '"running": false' in r.stdout


def test_adapter_service_definition_runs_the_kubernetes_loop(runs: dict, lab: NetnsLab) -> None:
    root = _root(lab, "ad1")
    unit = (root / "etc/systemd/system/infadapter-adapter.service").read_text()
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))[len("ExecStart="):]
    argv = shlex.split(exec_start)
    assert argv[:3] == [f"{root}/opt/infadapter/venv/bin/python", f"{root}/opt/infadapter/app/cli.py", "adapt"]
    assert "--backend" in argv and argv[argv.index("--backend") + 1] == "kubernetes"
    assert argv[argv.index("--profile") + 1] == f"{root}/etc/infadapter/profile.yaml"
    assert "Restart=on-failure" in unit
    assert f"EnvironmentFile={root}/etc/infadapter/adapter.env" in unit
    # Every flag on the unit's command line exists in the installed CLI (an unknown one fails parsing;
    # --help is eager, so values are not validated).
    r = lab.ssh("ad1", exec_start + " --help")
    assert r.returncode == 0, r.stdout + r.stderr
    env = dict(ln.split("=", 1) for ln in (root / "etc/infadapter/adapter.env").read_text().splitlines()
               if ln and not ln.startswith("#"))
    assert env["KUBECONFIG"] == f"{root}/etc/infadapter/kubeconfig"
    assert argv[argv.index("--namespace") + 1] == "infadapter-test"
    assert argv[argv.index("--metrics-port") + 1] == "9109"


def test_adapter_profile_is_rendered_with_the_deployment_slo_and_budget(runs: dict, lab: NetnsLab) -> None:
    from infadapter.core.profile import load_profile

    profile = load_profile(_root(lab, "ad1") / "etc/infadapter/profile.yaml")
    assert profile.slo_ms == 750.0 and profile.budget_cores == 20.0
    assert [v.name for v in profile.variants][:1] == ["resnet18"]


def test_check_mode_layers_render_their_templates_and_write_nothing(runs: dict, lab: NetnsLab) -> None:
    cluster = runs[1, "cluster.yml"][1]
    assert "+  name: infadapter-test" in cluster  # namespace manifest diff
    assert "microk8s" in cluster and "skipping" in cluster
    assert not (_root(lab, "cp1") / "etc/infadapter/manifests/namespace.yml").exists()
    images = runs[1, "images.yml"][1]
    assert f'+[host."http://{lab.hosts["cp1"].address}:5000"]' in images
    assert not (_root(lab, "wk1") / "var/snap").exists()


def test_bad_export_network_is_rejected_before_any_change(lab: NetnsLab, inventory: Path) -> None:
    r = run_playbook(lab, inventory, "storage.yml", "--check", "-e", '{"nfs_server_export_network": "a b"}')
    assert r.returncode != 0
    assert "nfs_server_export_network must name the clients" in r.stdout
