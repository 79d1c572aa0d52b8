"""``cli.py render``: write the Kubernetes manifests of a plan (and of the platform) to a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from infadapter.commands.common import json_option, out_console, print_json, profile_option, warn
from infadapter.core.plan import Plan
from infadapter.core.profile import load_profile
from infadapter.errors import BadInput
from infadapter.render import (
    load_render_config,
    render_plan,
    render_platform,
    render_prometheus,
    write_manifests,
)

EPILOG = """Examples:

\b
  python cli.py render --plan plan.json --out manifests/
  python cli.py plan --load 120 --json | python cli.py render --out manifests/
  python cli.py render --plan plan.json --config k8s.yaml --no-platform --out manifests/
  python cli.py render --plan plan.json --router gateway --out manifests/

--router gateway writes a Gateway API HTTPRoute whose backendRefs weights are the plan's shares
(and gives the adapter's Role create/patch on httproutes); the default is the dispatcher.
"""


@click.command(epilog=EPILOG)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Plan JSON (the output of `cli.py plan --json`); '-' or omitted: standard input.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the manifests to (created if missing).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Render config YAML: namespace, images, NFS/PVC, ports (see docs/kubernetes.md).",
)
@profile_option()
@click.option("--generation", type=click.IntRange(min=0), default=1, show_default=True, help="Plan generation label.")
@click.option(
    "--platform/--no-platform",
    default=True,
    show_default=True,
    help="Also write the namespace, dispatcher, adapter with RBAC, monitors and the Prometheus scrape config.",
)
@click.option(
    "--router",
    type=click.Choice(["dispatcher", "gateway"]),
    default=None,
    help="How traffic is split: our dispatcher, or a Gateway API HTTPRoute [default: the --config's, dispatcher].",
)
@json_option
def render(
    plan_path: Path | None,
    out_dir: Path,
    config_path: Path | None,
    profile_path: Path,
    generation: int,
    platform: bool,
    router: str | None,
    as_json: bool,
) -> None:
    """Write the Kubernetes manifests of a plan: per variant a TF Serving ConfigMap, Deployment, Service."""
    plan = _read_plan(plan_path)
    config = load_render_config(config_path)
    if router is not None and router != config.router:
        config = config.model_copy(update={"router": router})
    profile = load_profile(profile_path)
    if not plan.feasible:
        warn("the plan is marked infeasible: it cannot serve its load within the budget")
    if not plan.allocations:
        warn("the plan runs no variant: only the platform manifests are written")
    manifests = render_plan(plan, profile, config, generation)
    if platform:
        manifests += render_platform(config)
    try:
        paths = write_manifests(manifests, out_dir)
        if platform:
            prom = out_dir / "prometheus-cluster.yml"
            prom.write_text(render_prometheus(config), encoding="utf-8")
            paths.append(prom)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {out_dir} ({exc.strerror}); pass a writable folder") from None
    if as_json:
        print_json({"out": str(out_dir), "files": [str(p) for p in paths]})
        return
    console = out_console()
    for p in paths:
        console.print(str(p), highlight=False)


def _read_plan(plan_path: Path | None) -> Plan:
    if plan_path is None or str(plan_path) == "-":
        if plan_path is None and sys.stdin.isatty():
            raise BadInput("--plan: pass a plan JSON file, or pipe `cli.py plan --json` into `cli.py render`")
        text, origin = sys.stdin.read(), "stdin"
    else:
        try:
            text, origin = plan_path.read_text(encoding="utf-8"), str(plan_path)
        except FileNotFoundError:
            raise BadInput(f"--plan: file {plan_path} not found; write one with `cli.py plan --json`") from None
    if not text.strip():
        raise BadInput(f"--plan: {origin} is empty; expected the JSON of `cli.py plan --json`")
    return Plan.from_json(text, origin=origin)
