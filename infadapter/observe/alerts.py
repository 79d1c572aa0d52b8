"""The Prometheus rules of infadapter (SLO recording rules, burn-rate and adapter alerts), rendered
from ``templates/prometheus/slo-rules.yml.j2`` so the local stack, the Ansible role and the tests
(`promtool test rules`, tests/test_alerts.py) all use one file."""

from __future__ import annotations

from typing import Any

from infadapter import paths
from infadapter.core import slo
from infadapter.errors import BadInput
from infadapter.render import environment

TEMPLATES = paths.PROMETHEUS_TEMPLATES
RULES_TEMPLATE = "prometheus/slo-rules.yml.j2"


def render_rules(
    slo_objective: float = slo.OBJECTIVE,
    adapter_stale_after_s: int = 180,
    alert_for: str = "2m",
    rules_selector: str = "",
    **extra: Any,
) -> str:
    """The rules file as text; BadInput naming the setting when a value is out of range."""
    if not 0.0 < slo_objective < 1.0:
        raise BadInput(f"slo_objective: must be between 0 and 1 (e.g. 0.99), got {slo_objective:g}")
    if adapter_stale_after_s <= 0:
        raise BadInput(f"adapter_stale_after_s: must be > 0 seconds, got {adapter_stale_after_s}")
    return environment().get_template(RULES_TEMPLATE).render(
        slo_objective=slo_objective,
        adapter_stale_after_s=adapter_stale_after_s,
        alert_for=alert_for,
        rules_selector=rules_selector,
        **extra,
    )
