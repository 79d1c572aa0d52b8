"""``adapt``, ``status`` and ``experiment``: the live control loop (local, kubernetes or dry-run backend)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from infadapter import paths
from infadapter.backends import BACKENDS, backend_config, backend_status, experiment_backends
from infadapter.backends import entry as backend_entry
from infadapter.commands.backend_flags import BackendCommand, backend_flags, backend_option, backends_help
from infadapter.commands.common import err_console, json_option, out_console, print_json
from infadapter.commands.options import Replay, control_options, load_options, load_replay
from infadapter.commands.views import LiveView as _View
from infadapter.core.control import ControlConfig
from infadapter.core.policies import entry, live_entry, simulated_spec
from infadapter.errors import BadInput


def _load_options(f: Any) -> Any:
    f = click.option("--rate", type=float, default=None, help="Constant load in req/s instead of a window.")(f)
    return load_options()(f)


def _common_options(f: Any) -> Any:
    """The flags every backend shares beyond the load's and the control rules' (each backend's own come from
    its ``options`` module, through :class:`~infadapter.commands.backend_flags.BackendCommand`)."""
    f = control_options(f)
    opts = [
        click.option("--profile", "profile_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Profile YAML [default: local: profiles/local.yaml, else profiles/paper.yaml; "
                          "kubernetes/dry-run: profiles/paper.yaml]."),
        click.option("--prometheus", "--prometheus-url", "prometheus", default=None,
                     help="URL of an existing Prometheus, or 'off' [default: local: start one when installed; "
                          "kubernetes/dry-run: none]."),
        click.option("--router", type=click.Choice(["dispatcher", "haproxy", "gateway"]), default="dispatcher",
                     show_default=True, help="local: what splits the traffic, our dispatcher or HAProxy "
                     "(apt-get install haproxy; docs/routing.md); kubernetes/dry-run: gateway writes the shares "
                     "as a Gateway API HTTPRoute's weights (docs/kubernetes.md)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _replay_label(window: str | None, scale: float, speedup: float, rate: float | None,
                  duration: float | None) -> str:
    if rate is not None:
        return f"a constant {rate:g} req/s for {duration:g} s"
    return f"trace window {window} (scale {scale:g}, speedup {speedup:g})"


def _load(window: str | None, scale: float, speedup: float, trace: Path | None, rate: float | None,
          duration: float | None) -> Replay | None:
    """The load of a run: a constant --rate, a trace --window (options.load_replay), or None."""
    if window and rate is not None:
        raise BadInput("--rate: give either --window or --rate, not both")
    if rate is not None:
        if rate < 0:
            raise BadInput(f"--rate: must be >= 0 req/s, got {rate}")
        if duration is None:
            raise BadInput("--duration: needed with --rate (seconds of load)")
        return Replay(rates=tuple([float(rate)] * max(int(duration), 1)), rates_before=(), history_before=(),
                      stretch=1)
    return load_replay(window, trace, scale, speedup) if window else None


def _run_fields(policy: str, duration: float | None, window: str | None, scale: float, speedup: float,
                trace: Path | None, rate: float | None, control: ControlConfig, stabilization: int,
                alpha: float | None, budget: float | None, min_gain: float, forecaster: str
                ) -> tuple[tuple[float, ...] | None, dict[str, Any]]:
    """The load's and the control rules' flags as the fields every backend's run config shares
    (:class:`~infadapter.adapter.runner.AdapterConfig`), with the load's per-second rates."""
    load = _load(window, scale, speedup, trace, rate, duration)
    rates = load.rates if load is not None else None
    return rates, dict(
        policy=policy, duration_s=duration, control=load.control(control) if load is not None else control,
        stabilization_intervals=stabilization, min_gain=min_gain, alpha=alpha, budget=budget, forecaster=forecaster,
        rates_rps=rates, load_label=_replay_label(window, scale, speedup, rate, duration) if rates is not None else "",
        rates_before=load.rates_before if load is not None else (),
    )


def _services_fields(profile_path: Path, fields: dict[str, Any], window: str | None, scale: float, speedup: float,
                     trace: Path | None, rate: float | None, duration: float | None
                     ) -> tuple[tuple[float, ...] | None, dict[str, Any]]:
    """A profile with ``services:`` replays each service's own window at once (--scale and --speedup shared):
    the run's fields with ``services_load`` and ``rates_rps`` their sum; ``fields`` unchanged for one service."""
    from infadapter.adapter.runner import ServiceLoad, total_rates
    from infadapter.core.profile import load_profile

    prof = load_profile(profile_path)
    if not prof.services:
        return fields["rates_rps"], fields
    if window or rate is not None:
        raise BadInput(f"--{'window' if window else 'rate'}: {profile_path} has services "
                       f"({', '.join(prof.service_names)}); each replays its own window from the profile: give "
                       "--scale/--speedup (and --duration to cut them), not --window or --rate")
    loads, control = [], fields["control"]
    for svc in prof.services:
        if svc.window is None:
            raise BadInput(f"{profile_path}: services[{svc.name}].window: adapt replays each service's own window; "
                           "give one (paper or START:DURATION)")
        rep = load_replay(svc.window, trace, scale, speedup)
        loads.append(ServiceLoad(svc.name, rep.rates, rep.history_before, f"{svc.name}: window {svc.window}"))
        control = rep.control(control, warm=False)  # the stretch; each service's history before is its own
    rates = total_rates(tuple(loads))
    label = f"{'; '.join(x.label for x in loads)} (scale {scale:g}, speedup {speedup:g})"
    return rates, {**fields, "rates_rps": rates, "services_load": tuple(loads), "control": control,
                   "load_label": label}


ADAPT_EPILOG = """Examples:

\b
  python cli.py adapt --rate 20 --duration 120 --interval 10
  python cli.py adapt --router haproxy --rate 20 --duration 120 --interval 10
  python cli.py adapt --policy vpa:resnet50 --window paper --scale 0.1 --speedup 6 --interval 10
  python cli.py adapt --duration 600 --run-dir runs/demo      # no load: adapt to outside traffic
  python cli.py status --run-dir runs/demo                    # from another shell
  python cli.py adapt --backend dry-run --out runs/dry --window paper --speedup 10 --interval 3
  python cli.py adapt --profile profiles/services-local.yaml --scale 0.2 --speedup 6 --interval 5
  python cli.py adapt --backend kubernetes --kubeconfig ~/.kube/config --namespace ml-serving \\
      --dispatcher-url http://127.0.0.1:8500 --prometheus http://127.0.0.1:9090
  python cli.py status --backend kubernetes --namespace ml-serving

With --backend kubernetes or dry-run, --window/--rate is a replayed observation: the loop
observes the trace's rates instead of live traffic (labelled "replay" in status and logs).
"""


@click.command("adapt", cls=BackendCommand, epilog=ADAPT_EPILOG)
@backend_option(help="Where plans are applied: " + backends_help() + ".")
@click.option("--policy", default="infadapter", show_default=True,
              help="infadapter | msplus | vpa:VARIANT | static:NAME=CORES[,...]; with services: infadapter | "
                   "infadapter-split | infadapter-split-peak.")
@click.option("--duration", type=float, default=None, help="Seconds to run [default: the load's length, or "
              "until Ctrl-C without a load].")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State file, decision log, server logs, Prometheus data [default: runs/adapt (local), "
                   "runs/kubernetes (kubernetes), the --out folder (dry-run)].")
@_load_options
@_common_options
@json_option
@click.pass_context
def adapt(ctx: click.Context, backend: str, policy: str, duration: float | None, run_dir: Path | None,
          profile_path: Path | None, prometheus: str | None, router: str, as_json: bool, **flags: Any) -> None:
    """Run the adaptive inference service: observe, forecast, plan, apply, route.

    --backend local (default) brings everything up on this machine: servers, dispatcher, Prometheus,
    control loop. With --window or --rate the load generator drives that load through the dispatcher
    and the run ends with it; a summary follows (SLO violation rate, mean cores, mean accuracy,
    transitions). Ctrl-C stops everything it started.

    --backend kubernetes applies the same loop's plans to a namespace (TF Serving Deployments,
    make-before-break, in-place resize on 1.33+); --backend dry-run writes the manifests each plan
    would apply to --out DIR (gen-NNNN/ with a diff). Both observe Prometheus (--prometheus) or the
    dispatcher's counters (--dispatcher-url), or replay --window/--rate as the observed load.

    Each backend's own flags are listed under its heading below; another backend's flag is refused.
    """
    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    _logging(verbose, as_json)
    own = backend_flags(ctx, backend, flags)  # the rest of ``flags``: the load's and the control rules'
    rates, fields = _run_fields(policy, duration, **flags)
    if profile_path is not None:  # the backends' default profiles have one service
        rates, fields = _services_fields(profile_path, fields, flags["window"], flags["scale"], flags["speedup"],
                                         flags["trace"], flags["rate"], duration)
    cfg = backend_config(backend).from_flags(
        dict(backend=backend, run_dir=run_dir, profile_path=profile_path, prometheus=prometheus, router=router,
             **fields), **own)
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
        prof = load_profile(profile_path)
        return str(plot_adapt_run(Path(summary["run_dir"]), str(summary.get("policy")), rates, prof.slo_ms,
                                  title=f"adapt: {summary.get('policy')} ({profile_path.name})",
                                  services=[(s.name, s.slo_ms) for s in prof.services or ()]))
    except ModuleNotFoundError as exc:  # the container image leaves matplotlib out (requirements.txt, off-cluster)
        if not quiet:
            err_console().print(f"adapt: no plot: {exc.name} is not installed (pip install {exc.name})",
                                highlight=False)
        return None
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


@click.command("status", cls=BackendCommand, kind="status", epilog=STATUS_EPILOG)
@backend_option(help="Whose status: local and dry-run: the run folder's adapter (and the local servers); "
                     "kubernetes: the variants in a namespace.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The run folder of the adapter to show [default: runs/adapt; kubernetes: runs/kubernetes, "
                   "for the loop's last decision when the adapter runs here].")
@json_option
@click.pass_context
def status(ctx: click.Context, backend: str, run_dir: Path | None, as_json: bool, **flags: Any) -> None:
    """Show what a running adapter does: variants, load vs forecast, SLO, cost, last decision."""
    collector = backend_status(backend)
    doc = collector.collect(run_dir, **backend_flags(ctx, backend, flags))
    if as_json:
        print_json(doc)
        return
    con = out_console()
    for part in collector.render(doc):
        con.print(part, highlight=False)


#: ``experiment`` compares live runs with the simulator, which models the local backend (sim/experiment.py); on
#: kubernetes every run sends its requests through the cluster (``--traffic live``) on the real node.
EXPERIMENT_BACKENDS = experiment_backends()

EXPERIMENT_EPILOG = """Examples:

\b
  python cli.py experiment --policies infadapter,vpa:resnet50,msplus --window paper --scale 0.1 --speedup 6
  python cli.py experiment --policies infadapter,msplus --rate 15 --duration 120 --interval 10 --out runs/exp
  python cli.py experiment --policies infadapter,hpa:resnet50 --sweep budget=0.5,1 --rate 15 --duration 60
  python cli.py experiment --backend kubernetes --kubeconfig K --policies infadapter,hpa-upstream:resnet50

With --backend kubernetes each policy runs with --traffic live (the window's requests through the in-cluster
dispatcher), the namespace's variants and autoscalers are deleted between policies, and hpa-upstream /
vpa-upstream are the cluster's own HPA and VPA (bash scripts/local-cluster.sh autoscalers), simulated as hpa: and
vpa-updater:.
"""


@click.command("experiment", cls=BackendCommand, backends=EXPERIMENT_BACKENDS, epilog=EXPERIMENT_EPILOG)
@click.option("--backend", type=click.Choice(EXPERIMENT_BACKENDS), default="local", show_default=True,
              help="Where the policies run live: local (servers on this machine) or kubernetes (the cluster's pods).")
@click.option("--policies", default="infadapter,vpa:resnet50,msplus", show_default=True,
              help="Comma-separated policies, run one after another on the same load.")
@click.option("--duration", type=float, default=None, help="Seconds of load (with --rate, or to cut a window).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=paths.RUNS / "experiment", show_default=True,
              help="Folder for experiment.json, .md, .png and one run folder per policy.")
@click.option("--sweep", "sweep_spec", default=None, metavar="KEY=V1,V2,...",
              help="Sweep infadapter's alpha or budget: one live run per value (e.g. budget=0.5,0.75,1), every other "
                   "policy once; experiment.json gains the live and simulated frontier, frontier.png the live one.")
@_load_options
@_common_options
@json_option
@click.pass_context
def experiment(ctx: click.Context, backend: str, policies: str, duration: float | None, out_dir: Path,
               sweep_spec: str | None, profile_path: Path | None, prometheus: str | None, router: str, as_json: bool,
               **flags: Any) -> None:
    """Run policies live against the same load, one after another, and compare with the simulator."""
    from infadapter.commands.sweep import parse_sweep
    from infadapter.sim.experiment import run_experiment

    sweep = parse_sweep(sweep_spec) if sweep_spec is not None else None

    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    _logging(verbose, as_json)
    own = {**backend_flags(ctx, backend, flags), **(backend_entry(backend).experiment or {})}
    names = [p.strip() for p in policies.split(",") if p.strip()]
    rates, fields = _run_fields(names[0] if names else "", duration, **flags)
    if rates is None:
        raise BadInput("--window: experiment needs a load (--window W [--scale S --speedup K] or --rate R)")
    if not names:
        raise BadInput("--policies: give at least one policy")
    for name in names:  # before the shared config, so the message names --policies
        live_entry(name, "--policies")
        if entry(name).upstream and not backend_entry(backend).upstream:
            clusters = ", ".join(n for n, e in BACKENDS.items() if e.upstream)
            raise BadInput(f"--policies: {name} is the cluster's own {entry(name).upstream.upper()}: only with "
                           f"--backend {clusters} (the simulator's model of it: {simulated_spec(name)})")
    if flags["rate"] is not None:  # the constant load is already --duration long
        fields["duration_s"] = None
    base = backend_config(backend).from_flags(
        dict(backend=backend, run_dir=None, profile_path=profile_path, prometheus=prometheus,
             router=router, **fields), **own)
    with _View(quiet=as_json or verbose < 0) as view:
        doc = run_experiment(base, names, out_dir, on_update=view.update, sweep=sweep)
    if as_json:
        print_json(doc)
        return
    from infadapter.sim.experiment import comparison_table

    out_console().print(comparison_table(doc), highlight=False)
    out_console().print(f"written: {out_dir / 'experiment.json'}, {out_dir / 'experiment.md'}, "
                        f"{out_dir / 'experiment.png'}", highlight=False)
