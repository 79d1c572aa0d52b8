"""The kubernetes backend's own flags (``cli.py adapt --help`` lists them under its heading).

Light on purpose: it imports click alone, so ``--help`` does not load the backend. The flags that the dry-run
backend shares (what it renders, where the dispatcher is) are the same objects in its list
(:mod:`infadapter.backends.dryrun.options`), so they are declared once.
"""

from __future__ import annotations

from pathlib import Path

import click

_FILE = click.Path(dir_okay=False, path_type=Path)

KUBECONFIG = click.Option(["--kubeconfig"], default=None, help="kubeconfig file [default: in-cluster "
                          "ServiceAccount inside a pod, else $KUBECONFIG or ~/.kube/config].")
CONTEXT = click.Option(["--context"], default=None, help="kubeconfig context [default: current].")
NAMESPACE = click.Option(["--namespace"], default=None,
                         help="Namespace of the variants [default: the --k8s-config's, infadapter].")
K8S_CONFIG = click.Option(["--k8s-config", "k8s_config"], type=_FILE, default=None,
                          help="Render config YAML (names, images, model store; docs/kubernetes.md).")
DISPATCHER_URL = click.Option(["--dispatcher-url"], default=None,
                              help="The dispatcher's base URL, for its weights (kubernetes) and its counters "
                                   "(observation without --prometheus).")
ADMIN_TOKEN_FILE = click.Option(["--admin-token-file"], type=_FILE, default=None,
                                help="File with the dispatcher's admin token [default: env INFADAPTER_ADMIN_TOKEN].")
METRICS_PORT = click.Option(["--metrics-port"], type=click.IntRange(0, 65535), default=0, show_default=True,
                            help="Serve the adapter's infadapter_* metrics on this port (0: off).")

#: Shared with the dry-run backend (the same objects, so each flag is declared once).
CLUSTER: list[click.Option] = [NAMESPACE, K8S_CONFIG, DISPATCHER_URL, ADMIN_TOKEN_FILE, METRICS_PORT]

ADAPT: list[click.Option] = [
    KUBECONFIG, CONTEXT, *CLUSTER,
    click.Option(["--ready-timeout", "ready_timeout_s"], type=float, default=600.0, show_default=True,
                 help="Seconds new variants get to become ready before an apply fails."),
    click.Option(["--in-place"], type=click.Choice(["auto", "never"]), default="auto", show_default=True,
                 help="Resize CPU in place where the cluster supports it (1.33+), or always roll."),
    click.Option(["--traffic"], type=click.Choice(["replay", "live"]), default="replay", show_default=True,
                 help="With a load (--window/--rate): replay observes its rates; live sends its requests from "
                      "this machine to the in-cluster dispatcher's Service (applied, or --dispatcher-url) and "
                      "observes the dispatcher's counters."),
    click.Option(["--restart-recommender"], default=None, metavar="COMMAND",
                 help="vpa-upstream: a command that restarts the cluster's VPA recommender, run once the history of "
                      "the day before the window is written as its checkpoint (upstream loads checkpoints only when "
                      "it starts); without it that VPA starts cold. Local cluster: "
                      "'bash scripts/local-cluster.sh restart vpa-recommender'."),
]

STATUS: list[click.Option] = [
    KUBECONFIG, CONTEXT,
    click.Option(["--namespace"], default=None, help="Namespace [default: the --k8s-config's, infadapter]."),
    click.Option(["--k8s-config", "k8s_config"], type=_FILE, default=None,
                 help="Render config YAML (instance label, name prefix)."),
]
