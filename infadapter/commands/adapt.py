"""``adapt``, ``status`` and ``experiment``: the live control loop (local, kubernetes or dry-run backend)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from infadapter import paths
from infadapter.backends import BACKENDS
from infadapter.commands.common import err_console, json_option, out_console, print_json
from infadapter.commands.options import control_options
from infadapter.commands.views import LiveView as _View
from infadapter.core.control import HISTORY_S
from infadapter.core.policies import live_entry
from infadapter.errors import BadInput


def _load_options(f: Any) -> Any:
    opts = [
        click.option("--window", default=None, help="Trace window to replay: paper, dayN or START:DURATION."),
        click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply the trace's rates."),
        click.option("--speedup", type=float, default=1.0, show_default=True, help="Compress the trace's time."),
        click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Trace file."),
        click.option("--rate", type=float, default=None, help="Constant load in req/s instead of a window."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _common_options(f: Any) -> Any:
    f = control_options(f)
    opts = [
        click.option("--profile", "profile_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Profile YAML [default: profiles/local.yaml, else profiles/paper.yaml]."),
        click.option("--models", "model_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=paths.MODELS, show_default=True, help="Model folder (built when missing)."),
        click.option("--resolution", type=int, default=None,
                     help="Input size of models built here and of the load's JPEGs."),
        click.option("--prometheus", "--prometheus-url", "prometheus", default=None,
                     help="URL of an existing Prometheus, or 'off' [default: local: start one when installed; "
                          "kubernetes/dry-run: none]."),
        click.option("--cpu-limit", "limit_mode", type=click.Choice(["auto", "cgroup", "threads"]), default="auto",
                     show_default=True, help="How CPU limits are enforced."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the load's arrivals."),
        click.option("--router", type=click.Choice(["dispatcher", "haproxy", "gateway"]), default="dispatcher",
                     show_default=True, help="local: what splits the traffic, our dispatcher or HAProxy "
                     "(apt-get install haproxy; docs/routing.md); kubernetes/dry-run: gateway writes the shares "
                     "as a Gateway API HTTPRoute's weights (docs/kubernetes.md)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


#: Flags of the non-local backends: (parameter, flag, backends that accept it).
CLUSTER_FLAGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kubeconfig", "--kubeconfig", ("kubernetes",)),
    ("context", "--context", ("kubernetes",)),
    ("ready_timeout_s", "--ready-timeout", ("kubernetes",)),
    ("in_place", "--in-place", ("kubernetes",)),
    ("namespace", "--namespace", ("kubernetes", "dry-run")),
    ("k8s_config", "--k8s-config", ("kubernetes", "dry-run")),
    ("dispatcher_url", "--dispatcher-url", ("kubernetes", "dry-run")),
    ("admin_token_file", "--admin-token-file", ("kubernetes", "dry-run")),
    ("out_dir", "--out", ("dry-run",)),
    ("metrics_port", "--metrics-port", ("kubernetes", "dry-run")),
    ("model_dir", "--models", ("local",)),
    ("resolution", "--resolution", ("local",)),
    ("limit_mode", "--cpu-limit", ("local",)),
)


def _cluster_options(f: Any) -> Any:
    path = click.Path(dir_okay=False, path_type=Path)
    opts = [
        click.option("--kubeconfig", default=None, help="kubernetes: kubeconfig file [default: in-cluster "
                     "ServiceAccount inside a pod, else $KUBECONFIG or ~/.kube/config]."),
        click.option("--context", default=None, help="kubernetes: kubeconfig context [default: current]."),
        click.option("--namespace", default=None,
                     help="kubernetes/dry-run: namespace of the variants [default: the --k8s-config's, infadapter]."),
        click.option("--k8s-config", "k8s_config", type=path, default=None,
                     help="kubernetes/dry-run: render config YAML (names, images, model store; docs/kubernetes.md)."),
        click.option("--dispatcher-url", default=None,
                     help="kubernetes/dry-run: the dispatcher's base URL, for its weights (kubernetes) and its "
                          "counters (observation without --prometheus)."),
        click.option("--admin-token-file", type=path, default=None,
                     help="File with the dispatcher's admin token [default: env INFADAPTER_ADMIN_TOKEN]."),
        click.option("--ready-timeout", "ready_timeout_s", type=float, default=600.0, show_default=True,
                     help="kubernetes: seconds new variants get to become ready before an apply fails."),
        click.option("--in-place", type=click.Choice(["auto", "never"]), default="auto", show_default=True,
                     help="kubernetes: resize CPU in place where the cluster supports it (1.33+), or always roll."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="dry-run: folder for gen-NNNN/ manifests, plan.json and changes.diff (required)."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
                     help="kubernetes/dry-run: serve the adapter's infadapter_* metrics on this port (0: off)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _check_backend_flags(ctx: click.Context, backend: str) -> None:
    """A flag given on the command line that the chosen backend ignores is a mistake: say so."""
    from click.core import ParameterSource

    for param, flag, backends in CLUSTER_FLAGS:
        if backend not in backends and ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
            raise BadInput(f"{flag}: only with --backend {' or '.join(backends)}, not with --backend {backend}")


def _admin_token(token_file: Path | None) -> str:
    if token_file is None:
        return os.environ.get("INFADAPTER_ADMIN_TOKEN", "").strip()
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BadInput(f"--admin-token-file: cannot read {token_file} ({exc.strerror})") from None


def _replay_label(window: str | None, scale: float, speedup: float, rate: float | None,
                  duration: float | None) -> str:
    if rate is not None:
        return f"a constant {rate:g} req/s for {duration:g} s"
    return f"trace window {window} (scale {scale:g}, speedup {speedup:g})"


def _rates(window: str | None, scale: float, speedup: float, trace: Path | None, rate: float | None,
           duration: float | None) -> tuple[float, ...] | None:
    if window and rate is not None:
        raise BadInput("--rate: give either --window or --rate, not both")
    if rate is not None:
        if rate < 0:
            raise BadInput(f"--rate: must be >= 0 req/s, got {rate}")
        if duration is None:
            raise BadInput("--duration: needed with --rate (seconds of load)")
        return tuple([float(rate)] * max(int(duration), 1))
    if window:
        from infadapter.observe.trace import load_window

        return tuple(float(x) for x in load_window(window, trace, scale, speedup))
    return None


def _history_before(window: str | None, scale: float, speedup: float, trace: Path | None,
                    seconds: int = HISTORY_S) -> tuple[float, ...]:
    """The ``seconds`` before a replayed window, as an adapter (or a VPA) that was already running saw them."""
    if not window:
        return ()
    from infadapter.observe.trace import load_history_before

    return tuple(float(x) for x in load_history_before(window, trace, scale, speedup, seconds))


def _run_config(**kw: Any) -> Any:
    from infadapter.sim.experiment import RunConfig

    return RunConfig(**kw)


ADAPT_EPILOG = """Examples:

\b
  python cli.py adapt --rate 20 --duration 120 --interval 10
  python cli.py adapt --router haproxy --rate 20 --duration 120 --interval 10
  python cli.py adapt --policy vpa:resnet50 --window paper --scale 0.1 --speedup 6 --interval 10
  python cli.py adapt --duration 600 --run-dir runs/demo      # no load: adapt to outside traffic
  python cli.py status --run-dir runs/demo                    # from another shell
  python cli.py adapt --backend dry-run --out runs/dry --window paper --speedup 10 --interval 3
  python cli.py adapt --backend kubernetes --kubeconfig ~/.kube/config --namespace ml-serving \\
      --dispatcher-url http://127.0.0.1:8500 --prometheus http://127.0.0.1:9090
  python cli.py status --backend kubernetes --namespace ml-serving

With --backend kubernetes or dry-run, --window/--rate is a replayed observation: the loop
observes the trace's rates instead of live traffic (labelled "replay" in status and logs).
"""


@click.command("adapt", epilog=ADAPT_EPILOG)
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="local", show_default=True,
              help="Where plans are applied: " + "; ".join(f"{k}: {e.help}" for k, e in BACKENDS.items()) + ".")
@click.option("--policy", default="infadapter", show_default=True,
              help="infadapter | msplus | vpa:VARIANT | static:NAME=CORES[,...].")
@click.option("--duration", type=float, default=None, help="Seconds to run [default: the load's length, or "
              "until Ctrl-C without a load].")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State file, decision log, server logs, Prometheus data [default: runs/adapt (local), "
                   "runs/kubernetes (kubernetes), the --out folder (dry-run)].")
@_load_options
@_common_options
@_cluster_options
@json_option
@click.pass_context
def adapt(ctx: click.Context, backend: str, policy: str, duration: float | None, run_dir: Path | None,
          window: str | None, scale: float, speedup: float, trace: Path | None, rate: float | None,
          profile_path: Path | None, interval_s: float, check_s: float, stabilization: int, alpha: float | None,
          budget: float | None, min_gain: float, forecaster: str, model_dir: Path, resolution: int,
          prometheus: str | None, limit_mode: str, seed: int, router: str,
          kubeconfig: str | None, context: str | None, namespace: str | None, k8s_config: Path | None,
          dispatcher_url: str | None, admin_token_file: Path | None, ready_timeout_s: float, in_place: str,
          out_dir: Path | None, metrics_port: int, as_json: bool) -> None:
    """Run the adaptive inference service: observe, forecast, plan, apply, route.

    --backend local (default) brings everything up on this machine: servers, dispatcher, Prometheus,
    control loop. With --window or --rate the load generator drives that load through the dispatcher
    and the run ends with it; a summary follows (SLO violation rate, mean cores, mean accuracy,
    transitions). Ctrl-C stops everything it started.

    --backend kubernetes applies the same loop's plans to a namespace (TF Serving Deployments,
    make-before-break, in-place resize on 1.33+); --backend dry-run writes the manifests each plan
    would apply to --out DIR (gen-NNNN/ with a diff). Both observe Prometheus (--prometheus) or the
    dispatcher's counters (--dispatcher-url), or replay --window/--rate as the observed load.
    """
    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    _logging(verbose, as_json)
    _check_backend_flags(ctx, backend)
    if backend != "local" and router == "haproxy":
        raise BadInput(f"--router haproxy: only with --backend local, not with --backend {backend}")
    if backend == "local" and router == "gateway":
        raise BadInput("--router gateway: only with --backend kubernetes or dry-run (a Gateway API HTTPRoute)")
    rates = _rates(window, scale, speedup, trace, rate, duration)
    common = dict(
        policy=policy, duration_s=duration, interval_s=interval_s, check_s=check_s,
        stabilization_intervals=stabilization, min_gain=min_gain, alpha=alpha, budget=budget, forecaster=forecaster,
        rates_rps=rates, load_label=_replay_label(window, scale, speedup, rate, duration) if rates is not None else "",
        history_stretch=max(int(speedup), 1) if window else 1,
        history_before=_history_before(window, scale, speedup, trace),
        rates_before=_history_before(window, scale, speedup, trace, 86400),
    )
    cfg: Any
    if backend == "local":
        cfg = _run_config(profile_path=profile_path or paths.local_profile(), run_dir=run_dir or paths.DEFAULT_RUN_DIR,
                          model_dir=model_dir, prometheus=prometheus, limit_mode=limit_mode, resolution=resolution,
                          seed=seed, router=router, **common)
    else:
        from infadapter.backends.kubernetes.setup import ClusterRunConfig

        if run_dir is None:
            run_dir = out_dir if backend == "dry-run" and out_dir is not None else paths.RUNS / backend
        cfg = ClusterRunConfig(
            backend=backend, profile_path=profile_path or paths.PAPER_PROFILE, run_dir=run_dir,
            prometheus_url=None if prometheus in (None, "", "off") else prometheus,
            dispatcher_url=dispatcher_url or None,
            admin_token=_admin_token(admin_token_file) if dispatcher_url else "",
            k8s_config=k8s_config, namespace=namespace, kubeconfig=kubeconfig, context=context,
            ready_timeout_s=ready_timeout_s, in_place=in_place, out_dir=out_dir, metrics_port=metrics_port,
            router="gateway" if router == "gateway" else None, **common,
        )
    _run_adapter(cfg, rates, as_json=as_json, quiet=verbose < 0)


def _run_adapter(cfg: Any, rates: tuple[float, ...] | None, as_json: bool, quiet: bool) -> None:
    """The one runner on any backend: start, say what it found, adapt, summarize, plot; exit 4 when no plan
    could ever be applied."""
    from infadapter.adapter.runner import AdapterRun
    from infadapter.backends import backend_setup
    from infadapter.errors import BackendUnavailable

    view = _View(quiet=as_json or quiet)
    run = AdapterRun(cfg, backend_setup(cfg.backend), on_update=view.update)
    try:
        run.start()
    except BaseException:
        run.cleanup()
        raise
    if not (as_json or quiet):
        for m in run.messages:
            err_console().print(f"adapt: {m}", highlight=False)
        err_console().print(f"adapt: run folder {cfg.run_dir} (python cli.py status --run-dir {cfg.run_dir})",
                            highlight=False)
    with view:
        summary = run.run()
    plot = _write_plot(summary, rates, cfg.profile_path, quiet=as_json or quiet)
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary, plot, quiet=quiet)
    if not summary.get("applies") and summary.get("failed_applies") and not summary.get("interrupted"):
        raise BackendUnavailable(f"--backend {cfg.backend}: no plan was ever applied ({summary['failed_applies']} "
                                 f"failed applies; last: {summary.get('last_apply_error') or 'none'})")


def _logging(verbose: int, as_json: bool) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _write_plot(summary: dict[str, Any], rates: tuple[float, ...] | None, profile_path: Path,
                quiet: bool) -> str | None:
    """adapt.png in the run folder (load vs capacity, cores, accuracy, violations); None if it failed."""
    from infadapter.core.profile import load_profile
    from infadapter.plots import plot_adapt_run

    try:
        slo_ms = load_profile(profile_path).slo_ms
        return str(plot_adapt_run(Path(summary["run_dir"]), str(summary.get("policy")), rates, slo_ms,
                                  title=f"adapt: {summary.get('policy')} ({profile_path.name})"))
    except Exception as exc:  # the run's figures matter more than its picture
        if not quiet:
            err_console().print(f"adapt: no plot ({type(exc).__name__}: {exc})", highlight=False)
        return None


def _print_summary(s: dict[str, Any], plot: str | None, quiet: bool) -> None:
    from infadapter.commands.views import adapt_summary, adapt_summary_line

    con = out_console()
    if quiet:
        con.print(adapt_summary_line(s), highlight=False)
        return
    con.print(adapt_summary(s, plot))


STATUS_EPILOG = """Examples:

\b
  python cli.py status
  python cli.py status --run-dir runs/demo --json
  python cli.py status --backend kubernetes --kubeconfig ~/.kube/config --namespace ml-serving
  python cli.py status --backend kubernetes --namespace ml-serving --json

Exit code 0 also when nothing runs (the message says so; --json has "running": false).
With --backend kubernetes the variants are read from the cluster (planned vs actual: ready
replicas, cores per pod); an unreachable cluster exits 4.
"""


@click.command("status", epilog=STATUS_EPILOG)
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="local: the run folder's processes; kubernetes: the variants in a namespace.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The run folder of the adapter to show [default: runs/adapt; kubernetes: runs/kubernetes, "
                   "for the loop's last decision when the adapter runs here].")
@click.option("--kubeconfig", default=None, help="kubernetes: kubeconfig file [default: in-cluster, else "
              "$KUBECONFIG or ~/.kube/config].")
@click.option("--context", default=None, help="kubernetes: kubeconfig context [default: current].")
@click.option("--namespace", default=None, help="kubernetes: namespace [default: the --k8s-config's, infadapter].")
@click.option("--k8s-config", "k8s_config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="kubernetes: render config YAML (instance label, name prefix).")
@json_option
@click.pass_context
def status(ctx: click.Context, backend: str, run_dir: Path | None, kubeconfig: str | None, context: str | None,
           namespace: str | None, k8s_config: Path | None, as_json: bool) -> None:
    """Show what a running adapter does: variants, load vs forecast, SLO, cost, last decision."""
    if backend == "kubernetes":
        from infadapter.adapter.status import collect_kubernetes_status

        doc = collect_kubernetes_status(run_dir or paths.RUNS / "kubernetes", kubeconfig=kubeconfig,
                                        context=context, namespace=namespace, k8s_config=k8s_config)
        if as_json:
            print_json(doc)
        else:
            _print_kubernetes_status(doc)
        return
    from click.core import ParameterSource

    for param, flag in (("kubeconfig", "--kubeconfig"), ("context", "--context"), ("namespace", "--namespace"),
                        ("k8s_config", "--k8s-config")):
        if ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
            raise BadInput(f"{flag}: only with --backend kubernetes")
    from infadapter.adapter.status import collect_status

    doc = collect_status(run_dir or paths.DEFAULT_RUN_DIR)
    if as_json:
        print_json(doc)
        return
    con = out_console()
    if not doc.get("running"):
        con.print(doc.get("message", "nothing runs"), highlight=False)
        return
    from rich.table import Table

    t = Table(title=f"{doc['policy']} on {doc['run_dir']} (up {doc.get('uptime_s', 0):.0f} s, "
                    f"cpu limit: {doc.get('limit_mode')})")
    for col in ("variant", "cores", "share", "ready", "req/s", "p99 ms", "pid", "port"):
        t.add_column(col)
    for v in doc.get("variants", []):
        t.add_row(v["name"], f"{v['cores']:g}", f"{v['share']:.0%}", "yes" if v["ready"] else "no",
                  _fmt(v.get("rps")), _fmt(v.get("p99_ms")), str(v["pid"]), str(v["port"]))
    if doc.get("backend", "local") != "local":  # no local servers: the plan applied to the cluster/folder
        for v in (doc.get("plan") or {}).get("variants", []):
            t.add_row(v["name"], f"{v['cores']:g}", f"{v['share']:.0%}", "-", "-", "-", "-", "-")
        con.print(f"observing: {doc.get('observation')}", highlight=False)
    con.print(t)
    mon = doc.get("monitor") or {}
    att = doc.get("slo_attainment_5m")
    con.print(f"load: observed {_fmt(doc.get('observed_rps'))} req/s, forecast {_fmt(doc.get('forecast_rps'))} "
              f"req/s; p99 {_fmt(doc.get('p99_ms'))} ms (SLO {_fmt(doc.get('slo_ms'))} ms); SLO attainment 5 min: "
              f"{'-' if att is None else f'{100 * att:.2f}%'}", highlight=False)
    con.print(f"accuracy {_fmt(doc.get('accuracy'))}, cost {_fmt(doc.get('cost_cores'))} cores; monitor: "
              f"{mon.get('source', '')} {mon.get('warning', '')}", highlight=False)
    if doc.get("degraded"):
        con.print(f"[red]degraded:[/] {doc['degraded']}")
    d = doc.get("last_decision") or {}
    if d:
        con.print(f"last decision #{d['seq']} ({d['trigger']}): {d['diff']}: {d['reason']}", highlight=False)


def _print_kubernetes_status(doc: dict[str, Any]) -> None:
    from rich.table import Table

    con = out_console()
    if not doc.get("variants"):
        con.print(doc.get("message", "no variants"), highlight=False)
    else:
        t = Table(title=f"namespace {doc['namespace']}: plan generation {doc.get('generation')} "
                        f"(load {_fmt((doc.get('plan') or {}).get('load'))} req/s)")
        for col in ("variant", "planned cores", "share", "ready", "cores per pod", "template cores", "generation"):
            t.add_column(col)
        for v in doc["variants"]:
            t.add_row(v["name"], _fmt(v.get("planned_cores")), f"{v.get('planned_share') or 0:.0%}",
                      f"{v['ready_replicas']}/{v['replicas']}", ", ".join(f"{c:g}" for c in v["cores_per_pod"]) or "-",
                      _fmt(v.get("template_cores")), str(v.get("generation")))
        con.print(t)
    for m in doc.get("messages", []):
        con.print(m, highlight=False)
    loop = doc.get("loop") or {}
    if loop:
        adapter = doc.get("adapter") or {}
        con.print(f"adapter {'runs' if adapter.get('running') else 'does not run'} here ({doc.get('run_dir')}); "
                  f"observing {adapter.get('observation', '-')}", highlight=False)
        d = loop.get("last_decision") or {}
        con.print(f"load: observed {_fmt(loop.get('observed_rps'))} req/s, forecast {_fmt(loop.get('forecast_rps'))} "
                  f"req/s", highlight=False)
        if d:
            con.print(f"last decision #{d['seq']} ({d['trigger']}): {d['diff']}: {d['reason']}", highlight=False)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


EXPERIMENT_EPILOG = """Examples:

\b
  python cli.py experiment --policies infadapter,vpa:resnet50,msplus --window paper --scale 0.1 --speedup 6
  python cli.py experiment --policies infadapter,msplus --rate 15 --duration 120 --interval 10 --out runs/exp
"""


@click.command("experiment", epilog=EXPERIMENT_EPILOG)
@click.option("--policies", default="infadapter,vpa:resnet50,msplus", show_default=True,
              help="Comma-separated policies, run one after another on the same load.")
@click.option("--duration", type=float, default=None, help="Seconds of load (with --rate, or to cut a window).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=paths.RUNS / "experiment", show_default=True,
              help="Folder for experiment.json, .md, .png and one run folder per policy.")
@_load_options
@_common_options
@json_option
@click.pass_context
def experiment(ctx: click.Context, policies: str, duration: float | None, out_dir: Path, window: str | None,
               scale: float, speedup: float, trace: Path | None, rate: float | None, profile_path: Path | None,
               interval_s: float, check_s: float, stabilization: int, alpha: float | None, budget: float | None,
               min_gain: float,
               forecaster: str, model_dir: Path, resolution: int, prometheus: str | None, limit_mode: str, seed: int,
               router: str, as_json: bool) -> None:
    """Run policies live against the same load, one after another, and compare with the simulator."""
    from infadapter.sim.experiment import run_experiment

    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    _logging(verbose, as_json)
    rates = _rates(window, scale, speedup, trace, rate, duration)
    if rates is None:
        raise BadInput("--window: experiment needs a load (--window W [--scale S --speedup K] or --rate R)")
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise BadInput("--policies: give at least one policy")
    for name in names:  # before the shared config, so the message names --policies
        live_entry(name, "--policies")
    base = _run_config(profile_path=profile_path or paths.local_profile(), policy=names[0], model_dir=model_dir,
                       duration_s=duration if rate is None else None, interval_s=interval_s, check_s=check_s,
                       stabilization_intervals=stabilization, forecaster=forecaster, rates_rps=rates,
                       prometheus=prometheus, limit_mode=limit_mode, resolution=resolution, seed=seed,
                       history_stretch=max(int(speedup), 1) if window else 1, min_gain=min_gain, alpha=alpha,
                       budget=budget,
                       history_before=_history_before(window, scale, speedup, trace),
                       rates_before=_history_before(window, scale, speedup, trace, 86400),
                       router=router)
    with _View(quiet=as_json or verbose < 0) as view:
        doc = run_experiment(base, names, out_dir, on_update=view.update)
    if as_json:
        print_json(doc)
        return
    from infadapter.sim.experiment import comparison_table

    out_console().print(comparison_table(doc), highlight=False)
    out_console().print(f"written: {out_dir / 'experiment.json'}, {out_dir / 'experiment.md'}, "
                        f"{out_dir / 'experiment.png'}", highlight=False)
