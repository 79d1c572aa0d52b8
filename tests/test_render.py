"""Rendering: every manifest `render` can produce, validated against the Kubernetes OpenAPI schemas.

Built-in kinds are validated with ``kubernetes-validate`` in strict mode (unknown fields fail) for
Kubernetes 1.30 and for the newest version the package knows. PodMonitor and ServiceMonitor are
CRDs that package has no schema for: they are validated against the JSON schemas below, written
from the Prometheus operator's CRD fields we use (monitoring.coreos.com/v1), with
``additionalProperties: false`` so a misspelt field fails. Golden files: ``UPDATE_GOLDEN=1 pytest
tests/test_render.py`` rewrites ``tests/golden/manifests`` from ``tests/golden/plan.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from infadapter.core.plan import Plan
from infadapter.errors import BadInput
from infadapter.render import (
    ANNOTATION_PLAN,
    LABEL_GENERATION,
    LABEL_VARIANT,
    Manifest,
    RenderConfig,
    config_from_dict,
    cpu_quantity,
    load_render_config,
    render_plan,
    render_platform,
    render_prometheus,
    threads_for,
    write_manifests,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
VERSIONS = ["1.30", kubernetes_validate.latest_version()]

ONE = {"load": 20, "variants": [{"name": "resnet18", "cores": 2, "share": 1.0, "capacity": 34.2}]}
FIVE = {
    "load": 150,
    "variants": [
        {"name": "resnet18", "cores": 2, "share": 0.3, "capacity": 34.2},
        {"name": "resnet34", "cores": 3, "share": 0.2, "capacity": 29.8},
        {"name": "resnet50", "cores": 4, "share": 0.2, "capacity": 30.0},
        {"name": "resnet101", "cores": 5, "share": 0.15, "capacity": 20.4},
        {"name": "resnet152", "cores": 6, "share": 0.15, "capacity": 16.5},
    ],
}
# The resize case: resnet50 grows 4 -> 6.5 cores (a fraction, as the local profile's 0.25 steps).
RESIZE = {"load": 150, "variants": [{"name": "resnet50", "cores": 6.5, "share": 1.0, "capacity": 50.6}]}
PLANS = {"one": ONE, "five": FIVE, "resize": RESIZE}
CONFIGS = {
    "pvc": {},
    "nfs": {
        "namespace": "ml-serving",
        "instance": "resnet",
        "labels": {"team": "ml"},
        "model_store": {"nfs_server": "10.0.0.5", "nfs_path": "/export/models"},
        "batching": {"max_batch_size": 8, "batch_timeout_micros": 2000, "allowed_batch_sizes": [1, 4, 8]},
        "monitoring": {"selector_labels": {"release": "prometheus"}},
        "adapter": {"prometheus_url": "http://prometheus.monitoring.svc:9090", "extra_args": ["--interval=30"]},
    },
}

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _LABELS},
    "required": ["matchLabels"],
}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"sourceLabels": {"type": "array", "items": {"type": "string"}}, "targetLabel": {"type": "string"}},
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": {
            "type": "string",
            "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
        },
        "relabelings": {"type": "array", "items": _RELABEL},
    },
    "required": ["port"],
}
_META = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
    "required": ["name", "namespace"],
}


def _monitor_schema(kind: str, endpoints_key: str) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


CRD_SCHEMAS = {
    "PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints"),
    "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints"),
}


def _all(plan_dict: dict, config: RenderConfig, paper, generation: int = 1) -> list[Manifest]:
    plan = Plan.from_dict(plan_dict)
    return render_plan(plan, paper, config, generation) + render_platform(config)


def _validate(m: Manifest, version: str) -> None:
    if m.kind in CRD_SCHEMAS:
        jsonschema.validate(m.obj, CRD_SCHEMAS[m.kind])
    else:
        kubernetes_validate.validate(m.obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_every_manifest_validates_strictly(paper, plan_name, config_name, version):
    config = config_from_dict(CONFIGS[config_name])
    manifests = _all(PLANS[plan_name], config, paper)
    kinds = sorted({m.kind for m in manifests})
    assert kinds == sorted(
        {"ConfigMap", "Deployment", "Service", "Namespace", "ServiceAccount", "Role", "RoleBinding"} | set(CRD_SCHEMAS)
    )
    for m in manifests:
        _validate(m, version)
        assert m.obj["metadata"].get("namespace", config.namespace) == config.namespace or m.kind == "Namespace"


def test_strict_validation_catches_a_misspelt_field(paper):
    """The validation above can fail: an unknown field is rejected in strict mode."""
    m = render_plan(Plan.from_dict(ONE), paper, RenderConfig())[1]
    broken = json.loads(json.dumps(m.obj))
    broken["spec"]["template"]["spec"]["containers"][0]["resizePolicies"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    mon = next(m for m in render_platform(RenderConfig()) if m.kind == "PodMonitor")
    bad = json.loads(json.dumps(mon.obj))
    bad["spec"]["podMetricsEndpoints"][0]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CRD_SCHEMAS["PodMonitor"])


@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_deployment_resources_threads_and_labels(paper, plan_name):
    plan = Plan.from_dict(PLANS[plan_name])
    config = RenderConfig(model_server="tfserving")
    deployments = [m for m in render_plan(plan, paper, config, generation=7) if m.kind == "Deployment"]
    assert len(deployments) == len(plan.allocations)
    for m, alloc in zip(deployments, plan.allocations, strict=True):
        c = m.obj["spec"]["template"]["spec"]["containers"][0]
        res = c["resources"]
        # CPU request = limit = planned cores; memory request = limit = the profile's memory.
        assert parse_quantity(res["requests"]["cpu"]) == parse_quantity(res["limits"]["cpu"])
        assert float(parse_quantity(res["limits"]["cpu"])) == alloc.cores
        assert parse_quantity(res["limits"]["memory"]) == parse_quantity(paper.variant(alloc.name).memory)
        assert res["requests"]["memory"] == res["limits"]["memory"]
        # The paper's thread settings: intra 1, inter = cores (rounded up), REST = 15 * cores.
        whole = -(-alloc.cores // 1)
        assert "--tensorflow_intra_op_parallelism=1" in c["args"]
        assert f"--tensorflow_inter_op_parallelism={int(whole)}" in c["args"]
        assert f"--rest_api_num_threads={int(-(-15 * alloc.cores // 1))}" in c["args"]
        assert "--enable_batching" in c["args"]
        assert {"resourceName": "cpu", "restartPolicy": "NotRequired"} in c["resizePolicy"]
        assert c["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{alloc.name}/metadata"
        labels = m.obj["metadata"]["labels"]
        assert labels[LABEL_VARIANT] == alloc.name and labels[LABEL_GENERATION] == "7"
        # The pod template carries no generation: a new plan must not restart unchanged variants.
        assert LABEL_GENERATION not in m.obj["spec"]["template"]["metadata"]["labels"]
        stored = json.loads(m.obj["metadata"]["annotations"][ANNOTATION_PLAN])
        assert stored["generation"] == 7
        assert Plan.from_dict(stored["plan"]).cores_by_name() == plan.cores_by_name()


@pytest.mark.parametrize("router", ["dispatcher", "gateway"])
def test_default_model_server_is_our_onnx_server_on_the_staged_models(paper, router):
    """model_server onnx (default): the image of the Containerfile runs `cli.py serve-model` on the
    variant's folder of the model store (<model>/<version>/model.onnx, as the models role stages it),
    mounted under the name it serves, with one ONNX Runtime thread per whole core."""
    plan = Plan.from_dict(PLANS["resize"])
    config = RenderConfig(router=router)
    for m in render_plan(plan, paper, config):
        if m.kind != "Deployment":
            continue
        name = m.obj["metadata"]["labels"][LABEL_VARIANT]
        served = "resnet" if router == "gateway" else name
        (c,) = m.obj["spec"]["template"]["spec"]["containers"]
        assert c["image"] == "infadapter:0.1.0"
        assert c["command"] == ["/opt/infadapter/venv/bin/python", "/opt/infadapter/app/cli.py", "serve-model"]
        cores = float(parse_quantity(c["resources"]["limits"]["cpu"]))
        assert c["args"] == ["--model-dir=/models", f"--name={served}", "--host=0.0.0.0", "--port=8501",
                             f"--threads={max(1, int(cores))}", "--warmup=3"]
        assert c["volumeMounts"][0] == {"name": "models", "mountPath": f"/models/{served}", "subPath": name,
                                        "readOnly": True}
        assert c["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{served}/metadata"


def test_configmap_holds_the_three_tf_serving_configs(paper):
    config = config_from_dict(CONFIGS["nfs"])
    cm = render_plan(Plan.from_dict(ONE), paper, config)[0]
    data = cm.obj["data"]
    assert sorted(data) == ["batching.config", "models.config", "monitoring.config"]
    assert 'name: "resnet18"' in data["models.config"]
    assert 'base_path: "/models/resnet18"' in data["models.config"]
    assert 'path: "/monitoring/prometheus/metrics"' in data["monitoring.config"]
    assert "max_batch_size { value: 8 }" in data["batching.config"]
    assert "batch_timeout_micros { value: 2000 }" in data["batching.config"]
    # 2 cores -> 2 batch threads; allowed sizes are a repeated field.
    assert "num_batch_threads { value: 2 }" in data["batching.config"]
    assert data["batching.config"].count("allowed_batch_sizes:") == 3


def test_model_volume_nfs_or_pvc(paper):
    plan = Plan.from_dict(ONE)
    nfs = render_plan(plan, paper, config_from_dict(CONFIGS["nfs"]))[1].obj
    pvc = render_plan(plan, paper, RenderConfig())[1].obj
    assert nfs["spec"]["template"]["spec"]["volumes"][0]["nfs"] == {
        "server": "10.0.0.5",
        "path": "/export/models",
        "readOnly": True,
    }
    assert pvc["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "infadapter-models"


def test_in_place_template_cores_keep_the_pod_template(paper):
    """After an in-place resize the template keeps its cores; the annotation has the plan's."""
    plan = Plan.from_dict(RESIZE)
    m = render_plan(plan, paper, RenderConfig(), 2, template_cores={"resnet50": 4})[1].obj
    c = m["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["cpu"] == "4"
    assert m["metadata"]["annotations"]["infadapter.io/cores"] == "6500m"


def test_variants_larger_than_a_pod_run_as_replicas(paper):
    """max_pod_cores splits a variant into equal pods that fill 8-core nodes exactly: 12 cores -> 3 pods
    of 4 (2 of 6 would strand 2 cores a node), 20 -> 5 pods of 4 (4 of 5 would strand 3)."""
    plan = Plan.from_dict({"load": 150, "variants": [{"name": "resnet50", "cores": 12, "share": 0.6},
                                                      {"name": "resnet18", "cores": 20, "share": 0.4}]})
    out = {m.name: m.obj for m in render_plan(plan, paper, RenderConfig.model_validate(
        {"tfserving": {"max_pod_cores": 8}})) if m.kind == "Deployment"}
    for name, replicas, per_pod in (("tfs-resnet50", 3, "4"), ("tfs-resnet18", 5, "4")):
        d = out[name]
        assert d["spec"]["replicas"] == replicas
        assert d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == per_pod
        assert d["spec"]["template"]["metadata"]["annotations"]["infadapter.io/load-time-s"]
    # the profile's own max_pod_cores does the same; the render config's wins
    assert render_plan(plan, paper.with_overrides(max_pod_cores=4), RenderConfig())[1].obj["spec"]["replicas"] == 3


def test_role_is_namespaced_and_least_privilege(paper):
    role = next(m for m in render_platform(RenderConfig()) if m.kind == "Role").obj
    grants = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert set(grants) == {
        ("apps", "deployments"),
        ("", "services"),
        ("", "configmaps"),
        ("", "pods"),
        ("", "pods/resize"),
        ("", "persistentvolumeclaims"),
        ("", "serviceaccounts"),
        ("", "events"),
    }
    assert grants[("", "pods")] == {"get", "list", "watch"}
    # Preflight reads one claim and the ServiceAccount; readiness reports list events: nothing more.
    assert grants[("", "persistentvolumeclaims")] == grants[("", "serviceaccounts")] == {"get"}
    assert grants[("", "events")] == {"list"}
    assert all("*" not in verbs and "update" not in verbs for verbs in grants.values())


@pytest.mark.parametrize(
    ("cores", "quantity"),
    [(2, "2"), (2.0, "2"), (0.5, "500m"), (1.25, "1250m"), (20, "20"), (0.25, "250m")],
)
def test_cpu_quantity(cores, quantity):
    assert cpu_quantity(cores) == quantity
    assert float(parse_quantity(quantity)) == cores


def test_threads_for_fractional_cores():
    t = threads_for(2.5, RenderConfig())
    # inter = ceil(2.5) = 3; REST = ceil(15 * 2.5) = 38
    assert (t.intra_op, t.inter_op, t.rest_api, t.batch) == (1, 3, 38, 3)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"model_store": {"pvc": None}}, "model_store"),
        ({"tfserving": {"rest_port": 70000}}, "tfserving.rest_port"),
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"nope": 1}, "nope"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(BadInput, match=rf"^config: {field}"):
        config_from_dict(data)


def test_load_render_config_errors(tmp_path):
    with pytest.raises(BadInput, match=r"--config: file .* not found"):
        load_render_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespace: [unclosed\n")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_render_config(bad)


def test_prometheus_cluster_scrape_config():
    config = config_from_dict(CONFIGS["nfs"])
    prom = yaml.safe_load(render_prometheus(config))
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"infadapter-model-servers", "infadapter-dispatcher"}
    model = jobs["infadapter-model-servers"]
    assert model["metrics_path"] == "/monitoring/prometheus/metrics"
    assert model["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["ml-serving"]
    assert model["relabel_configs"][0]["regex"] == "resnet;model-server"


def _golden_manifests(paper) -> list[Manifest]:
    plan = Plan.from_json((GOLDEN / "plan.json").read_text())
    return render_plan(plan, paper, RenderConfig(), generation=1) + render_platform(RenderConfig())


def test_golden_manifests(paper, tmp_path):
    """The full manifests of one plan live in tests/golden/manifests (UPDATE_GOLDEN=1 rewrites them)."""
    want_dir = GOLDEN / "manifests"
    manifests = _golden_manifests(paper)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        for old in want_dir.glob("*.yaml"):
            old.unlink()
        write_manifests(manifests, want_dir)
        (want_dir / "prometheus-cluster.yml").write_text(render_prometheus(RenderConfig()))
    got = {m.filename: m.text for m in manifests}
    got["prometheus-cluster.yml"] = render_prometheus(RenderConfig())
    want = {p.name: p.read_text() for p in want_dir.iterdir()}
    assert sorted(got) == sorted(want), "files differ; run UPDATE_GOLDEN=1 pytest tests/test_render.py"
    for name, text in got.items():
        assert text == want[name], f"{name} differs from the golden file; UPDATE_GOLDEN=1 to accept"


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_render_cli_from_stdin_matches_golden(tmp_path):
    out = tmp_path / "m"
    r = _cli("render", "--out", str(out), "--json", stdin=(GOLDEN / "plan.json").read_text())
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert len(listed["files"]) == len(list((GOLDEN / "manifests").iterdir()))
    for p in (GOLDEN / "manifests").iterdir():
        assert (out / p.name).read_text() == p.read_text()


@pytest.mark.slow
def test_render_cli_bad_input_is_one_line_exit_2(tmp_path):
    r = _cli("render", "--out", str(tmp_path), stdin='{"load": 1, "variants": [{"name": "resnet9", "cores": 2}]}')
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "resnet9" in r.stderr and "Traceback" not in r.stderr
    r = _cli("render", "--out", str(tmp_path), stdin="{not json")
    assert r.returncode == 2 and "not valid JSON" in r.stderr


def test_largest_pod_has_one_precedence_for_the_solver_and_the_pods(paper):
    """Profile and render config both set, and different: the render config's 2 cores win (docs/kubernetes.md),
    and the solver's capacity (the profile the backend's setup sizes with it) matches the rendered pods."""
    from infadapter.render import largest_pod_cores, variant_layout

    profile = paper.with_overrides(max_pod_cores=4.0)
    config = config_from_dict({"tfserving": {"max_pod_cores": 2.0}})
    assert largest_pod_cores(profile, config) == 2.0
    sized = profile.with_overrides(max_pod_cores=largest_pod_cores(profile, config))  # what _fit_cluster does
    name = paper.names[0]
    # 6 cores in pods of at most 2: 3 pods of 2 in the rendered layout and in the solver's capacity model.
    assert variant_layout(6.0, profile, config) == sized.pod_layout(6.0) == (3, 2.0)
    assert sized.capacity_rps(name, 6.0) == pytest.approx(3 * paper.capacity_rps(name, 2.0))
    plan = Plan.from_dict({"load": 1, "variants": [{"name": name, "cores": 6.0, "share": 1.0}]})
    pods = [m.obj for m in render_plan(plan, profile, config) if m.obj.get("kind") == "Deployment"]
    assert pods and pods[0]["spec"]["replicas"] == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_a_policy_without_cpu_limits_renders_a_request_and_no_limit(paper, version):
    """``cpu_limited`` False (vpa-requests; the PodRules of its registry entry): the same template, the CPU
    request at the pod's cores, no CPU limit (memory keeps request = limit); valid for the API server."""
    from infadapter.render import PodRules

    plan = Plan.from_dict(PLANS[sorted(PLANS)[0]])
    limited = render_plan(plan, paper, RenderConfig())
    free = render_plan(plan, paper, RenderConfig(), pods=PodRules(cpu_limited=False))
    for a, b in zip(limited, free, strict=True):
        _validate(b, version)
        if b.kind != "Deployment":
            assert a.text == b.text
            continue
        res = b.obj["spec"]["template"]["spec"]["containers"][0]["resources"]
        was = a.obj["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert res["requests"] == was["requests"]
        assert "cpu" not in res["limits"] and res["limits"]["memory"] == was["limits"]["memory"]
        assert "no CPU limit" in b.text and "request = limit" in a.text


def test_a_policy_that_scales_by_replicas_renders_pods_of_its_size(paper):
    """HPA (PodRules pod_cores 2): 6 cores are 3 pods of exactly 2, whatever the largest pod allows (8 here
    would make one pod of 6); without the pod size the same plan is one pod."""
    from infadapter.render import PodRules, variant_layout

    config = config_from_dict({"tfserving": {"max_pod_cores": 8}})
    hpa = PodRules(in_place=False, pod_cores=2.0)
    assert variant_layout(6.0, paper, config, pod_cores=2.0) == (3, 2.0)
    assert variant_layout(6.0, paper, config) == (1, 6.0)
    assert variant_layout(0.0, paper, config, pod_cores=2.0) == (0, 0.0)
    plan = Plan.from_dict({"load": 1, "variants": [{"name": "resnet50", "cores": 6, "share": 1.0}]})
    dep = next(m.obj for m in render_plan(plan, paper, config, pods=hpa) if m.kind == "Deployment")
    assert dep["spec"]["replicas"] == 3
    res = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "2"  # HPA's entry keeps its pods cpu_limited
    assert dep["metadata"]["annotations"]["infadapter.io/cores"] == "6"
