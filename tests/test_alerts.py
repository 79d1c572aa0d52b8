"""The Prometheus rules (templates/prometheus/slo-rules.yml.j2) under `promtool test rules`, on
synthetic series; and the metrics they read, checked on a real dispatcher and a real loop registry.

Scenarios (per-minute samples; the error budget is 1% at the default objective 0.99):
- healthy: 0.5% bad for 4 h -> no burn alert;
- fast burn: 20% bad -> the 14.4x page (1h/5m) fires after its 2 m, and nothing slower yet;
- recovery: 20% bad for 30 m then none -> the 5 m short window clears the 14.4x page within minutes,
  the 6x page (30 m short window) within half an hour;
- slow burn: 2% bad -> only the 1x ticket (3d/6h) fires, after its 3 h;
- no traffic: no burn alert (0/0 is not a violation);
- adapter: not deciding, plan infeasible, Prometheus fallback, and no adapter at all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from infadapter.adapter.loop import LoopMetrics
from infadapter.adapter.status import SLO_QUERY
from infadapter.errors import BadInput
from infadapter.observe.alerts import render_rules
from tests.test_dispatcher_support import Cluster, http, predict

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/setup.sh installs it)")

BURN = "InfAdapterErrorBudgetBurn"


def _alerts(rules_text: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(alertname, long_window or '') -> the rule, from the rendered file."""
    out = {}
    for group in yaml.safe_load(rules_text)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                out[(rule["alert"], rule.get("labels", {}).get("long_window", ""))] = rule
    return out


def _expected(rules: dict, name: str, window: str = "", **labels: str) -> dict[str, Any]:
    rule = rules[(name, window)]
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": rule["annotations"]}


def _traffic(total_per_min: int, bad_per_min: int, minutes: int) -> list[dict[str, str]]:
    good = total_per_min - bad_per_min
    return [
        {"series": 'dispatcher_requests_total{model="resnet18",code="200"}', "values": f"0+{total_per_min}x{minutes}"},
        {"series": "dispatcher_slo_good_requests_total", "values": f"0+{good}x{minutes}"},
    ]


def _adapter_ok(minutes: int) -> list[dict[str, str]]:
    return [
        {"series": "infadapter_last_decision_timestamp_seconds", "values": f"0+60x{minutes}"},
        {"series": "infadapter_plan_feasible", "values": f"1x{minutes}"},
        {"series": "infadapter_monitor_fallback", "values": f"0x{minutes}"},
    ]


def promtool_tests(rules: dict) -> list[dict[str, Any]]:
    page_fast = _expected(rules, BURN, "1h")
    page_6x = _expected(rules, BURN, "6h")
    ticket_slow = _expected(rules, BURN, "3d")
    return [
        {  # healthy: half the budget
            "name": "healthy",
            "interval": "1m",
            "input_series": _traffic(1000, 5, 240) + _adapter_ok(240),
            "alert_rule_test": [{"eval_time": t, "alertname": BURN, "exp_alerts": []} for t in ("10m", "2h", "4h")]
            + [{"eval_time": "4h", "alertname": n, "exp_alerts": []}
               for n in ("InfAdapterNotDeciding", "InfAdapterPlanInfeasible", "InfAdapterPrometheusFallback",
                         "InfAdapterAbsent")],
            "promql_expr_test": [
                {"expr": "round(infadapter:slo_violation_ratio:rate1h, 0.0001)", "eval_time": "2h",
                 "exp_samples": [{"labels": "{}", "value": 0.005}]},
            ],
        },
        {  # fast burn: 20% bad = 20x the budget
            "name": "fast burn",
            "interval": "1m",
            "input_series": _traffic(1000, 200, 120) + _adapter_ok(120),
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": BURN, "exp_alerts": []},  # not yet held for 2 m
                {"eval_time": "10m", "alertname": BURN, "exp_alerts": [page_fast]},
            ],
            "promql_expr_test": [
                {"expr": "round(infadapter:slo_violation_ratio:rate5m, 0.0001)", "eval_time": "10m",
                 "exp_samples": [{"labels": "{}", "value": 0.2}]},
            ],
        },
        {  # recovery: the short window resets the page although the 1 h ratio is still high
            "name": "recovery",
            "interval": "1m",
            "input_series": [
                {"series": 'dispatcher_requests_total{model="resnet18",code="200"}', "values": "0+1000x90"},
                {"series": "dispatcher_slo_good_requests_total", "values": "0+800x30 24000+1000x60"},
                *_adapter_ok(90),
            ],
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": BURN, "exp_alerts": [page_fast, page_6x]},
                # 15 minutes after: the 1h/5m page has cleared; the 6h/30m one holds while 30m still sees it
                {"eval_time": "45m", "alertname": BURN, "exp_alerts": [page_6x]},
                # ... and the incident's 10% of the budget still opens the 3x ticket (1d/2h) at its 1 h
                {"eval_time": "70m", "alertname": BURN, "exp_alerts": [_expected(rules, BURN, "1d")]},
            ],
        },
        {  # slow burn: 2% bad = 2x: only the 1x ticket, after its 3 h
            "name": "slow burn",
            "interval": "1m",
            "input_series": _traffic(1000, 20, 300) + _adapter_ok(300),
            "alert_rule_test": [
                {"eval_time": "2h", "alertname": BURN, "exp_alerts": []},
                {"eval_time": "4h", "alertname": BURN, "exp_alerts": [ticket_slow]},
            ],
        },
        {  # no traffic: 0/0 is NaN, never above a threshold
            "name": "no traffic",
            "interval": "1m",
            "input_series": _traffic(0, 0, 60) + _adapter_ok(60),
            "alert_rule_test": [{"eval_time": "50m", "alertname": BURN, "exp_alerts": []}],
        },
        {  # the adapter stops deciding at minute 10 (its timestamp freezes at 600 s)
            "name": "adapter not deciding",
            "interval": "1m",
            "input_series": [
                {"series": "infadapter_last_decision_timestamp_seconds", "values": "0+60x10 600x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "12m", "alertname": "InfAdapterNotDeciding", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "InfAdapterNotDeciding",
                 "exp_alerts": [_expected(rules, "InfAdapterNotDeciding")]},
            ],
        },
        {  # the load outgrows the budget at minute 5, and the Prometheus queries fail from minute 5
            "name": "infeasible plan and fallback",
            "interval": "1m",
            "input_series": [
                {"series": "infadapter_last_decision_timestamp_seconds", "values": "0+60x20"},
                {"series": "infadapter_plan_feasible", "values": "1x5 0x15"},
                {"series": "infadapter_monitor_fallback", "values": "0x5 1x15"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "InfAdapterPlanInfeasible", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "InfAdapterPlanInfeasible",
                 "exp_alerts": [_expected(rules, "InfAdapterPlanInfeasible")]},
                {"eval_time": "5m", "alertname": "InfAdapterPrometheusFallback", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "InfAdapterPrometheusFallback",
                 "exp_alerts": [_expected(rules, "InfAdapterPrometheusFallback")]},
                {"eval_time": "10m", "alertname": "InfAdapterNotDeciding", "exp_alerts": []},
            ],
        },
        {  # nothing exports infadapter_* at all
            "name": "no adapter",
            "interval": "1m",
            "input_series": _traffic(100, 0, 20),
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "InfAdapterAbsent", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "InfAdapterAbsent",
                 "exp_alerts": [_expected(rules, "InfAdapterAbsent")]},
            ],
        },
    ]  # fmt: skip


@pytest.mark.slow
@needs_promtool
def test_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    text = render_rules()
    (tmp_path / "rules.yml").write_text(text)
    check = subprocess.run([PROMTOOL, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    suite = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": promtool_tests(_alerts(text))}
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    res = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


@needs_promtool
def test_a_stricter_objective_pages_sooner(tmp_path: Path) -> None:
    # 0.999: budget 0.1%, so 2% bad is a 20x burn and pages (it only ticketed at 0.99 above).
    text = render_rules(slo_objective=0.999, rules_selector='job="dispatcher"')
    assert 'dispatcher_requests_total{job="dispatcher"}' in text
    (tmp_path / "rules.yml").write_text(text)
    rules = _alerts(text)
    series = [
        {"series": 'dispatcher_requests_total{job="dispatcher",code="200"}', "values": "0+1000x30"},
        {"series": 'dispatcher_slo_good_requests_total{job="dispatcher"}', "values": "0+980x30"},
    ]
    suite = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series,
         "alert_rule_test": [{"eval_time": "10m", "alertname": BURN, "exp_alerts": [_expected(rules, BURN, "1h")]}]},
    ]}  # fmt: skip
    (tmp_path / "t.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    res = subprocess.run([PROMTOOL, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_status_attainment_counts_server_errors_not_client_errors(tmp_path: Path) -> None:
    # Per minute: 1000 requests, of which 900 met the SLO (the dispatcher's good counter), 40 were 4xx
    # (answered fast: the client's fault, still good) and 60 were late or 5xx. Attainment = 900/1000 over
    # 5 m whatever the codes; the old query subtracted every non-200 and gave (940 - 100)/1000 = 0.84.
    (tmp_path / "rules.yml").write_text("groups: []\n")
    series = [
        {"series": 'dispatcher_requests_total{model="a",code="200"}', "values": "0+900x10"},
        {"series": 'dispatcher_requests_total{model="a",code="400"}', "values": "0+40x10"},
        {"series": 'dispatcher_requests_total{model="a",code="503"}', "values": "0+60x10"},
        {"series": "dispatcher_slo_good_requests_total", "values": "0+900x10"},
    ]
    suite = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series,
         "promql_expr_test": [{"expr": SLO_QUERY, "eval_time": "10m",
                               "exp_samples": [{"labels": "{}", "value": 0.9}]}]},
    ]}  # fmt: skip
    (tmp_path / "t.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    res = subprocess.run([PROMTOOL, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"slo_objective": 1.0}, "slo_objective"), ({"adapter_stale_after_s": 0}, "adapter_stale")]
)
def test_bad_rule_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(BadInput, match=field):
        render_rules(**kwargs)


# -- the series the rules read exist where they should --------------------------------------------
def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_dispatcher_exports_total_and_good_events(cluster: Cluster) -> None:
    fast = cluster.backend("fast")
    _, base = cluster.dispatcher([fast.spec()], slo_ms=200.0, max_in_flight=1)
    for _ in range(3):
        assert predict(base).status == 200
    slow = cluster.backend("slow", delay_s=0.3)  # slower than the 200 ms SLO: not good
    http("PUT", f"{base}/admin/backends", {"backends": [slow.spec().as_dict()]}, "test-admin-token")
    assert predict(base).status == 200
    text = http("GET", f"{base}/metrics").body
    samples = _samples(text)
    total = sum(v for (name, _), v in samples.items() if name == "dispatcher_requests_total")
    assert total == 4
    assert samples[("dispatcher_slo_good_requests_total", frozenset())] == 3
    assert samples[("dispatcher_slo_seconds", frozenset())] == 0.2


def test_loop_registry_exports_the_adapter_series() -> None:
    from prometheus_client import generate_latest

    metrics = LoopMetrics()
    names = {fam.name for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    for needed in ("infadapter_last_decision_timestamp_seconds", "infadapter_plan_feasible",
                   "infadapter_monitor_fallback"):  # fmt: skip
        assert needed in names


# -- installed by the prometheus role ------------------------------------------------------------
@pytest.mark.slow
@needs_promtool
def test_the_prometheus_role_installs_the_same_rules_and_monitors(tmp_path: Path) -> None:
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    play = tmp_path / "play.yml"
    out = tmp_path / "manifests"
    play.write_text(yaml.safe_dump([{
        "name": "Render the prometheus role's manifests", "hosts": "localhost", "connection": "local",
        "gather_facts": False,
        "roles": [{"role": "prometheus", "vars": {
            "prometheus_addon_enable": False, "prometheus_apply": False, "prometheus_service_manage": False,
            "prometheus_access": "none", "prometheus_manifest_dir": str(out), "prometheus_slo_objective": 0.995}}],
    }]))  # fmt: skip
    env = {**os.environ, "ANSIBLE_CONFIG": str(root / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(root / "roles"),
           "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-e",
         f"ansible_python_interpreter={sys.executable}", str(play)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = yaml.safe_load((out / "prometheusrule-slo.yml").read_text())
    assert manifest["kind"] == "PrometheusRule" and manifest["metadata"]["labels"] == {"release": "kube-prom-stack"}
    want = yaml.safe_load(render_rules(slo_objective=0.995, rules_selector='namespace="infadapter"'))
    assert manifest["spec"]["groups"] == want["groups"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    check = subprocess.run([PROMTOOL, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    # The PodMonitors come from the project's one template too: the model servers' one scrapes what
    # `cli.py render` would have it scrape, under the role's own monitor labels.
    from infadapter.render import RenderConfig, render_platform

    monitors = [m for m in yaml.safe_load_all((out / "podmonitors.yml").read_text()) if m]
    assert [m["metadata"]["name"] for m in monitors] == ["infadapter-model-servers", "infadapter-dispatcher"]
    project = next(m.obj for m in render_platform(RenderConfig(monitoring={"scrape_interval": "15s"}))
                   if m.kind == "PodMonitor")  # fmt: skip
    assert monitors[0]["spec"] == project["spec"]
    assert monitors[1]["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


# -- a real Prometheus on the local stack loads them and computes them from the real dispatcher ----
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (scripts/setup.sh)")
def test_local_prometheus_evaluates_the_rules_on_the_dispatchers_series(cluster: Cluster, tmp_path: Path) -> None:
    import time

    import requests

    from infadapter.observe.monitor import PrometheusServer

    backend = cluster.backend("resnet18")
    _, base = cluster.dispatcher([backend.spec()])
    prom = PrometheusServer(tmp_path, base.removeprefix("http://"))
    url = prom.start()
    try:
        groups = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"infadapter-slo", "infadapter-slo-burn", "infadapter-adapter"}
        assert all(r["health"] != "err" for g in groups for r in g["rules"])
        value = None
        deadline = time.monotonic() + 60  # bounded: scrapes and evaluations run every second
        while time.monotonic() < deadline:
            for _ in range(5):
                assert predict(base).status == 200
            res = requests.get(f"{url}/api/v1/query", params={"query": "infadapter:slo_violation_ratio:rate5m"},
                               timeout=10).json()["data"]["result"]  # fmt: skip
            if res and res[0]["value"][1] not in ("NaN",):
                value = float(res[0]["value"][1])
                break
            time.sleep(0.5)
        assert value == 0.0  # every request answered fast: no violation
        alerts = requests.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        assert not [a for a in alerts if a["labels"]["alertname"] == BURN]
    finally:
        prom.stop()
