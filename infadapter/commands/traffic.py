"""``dispatch`` (the weighted dispatcher) and ``load`` (the open-loop load generator)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from infadapter.commands.common import err_console, json_option, out_console, print_json, warn
from infadapter.errors import BackendUnavailable, BadInput


def _parse_backend(text: str) -> dict[str, object]:
    """``NAME=URL[@WEIGHT]`` -> a backend entry (model = NAME)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise BadInput(f"--backend: expected NAME=URL[@WEIGHT], got {text!r}")
    url, weight = rest, 1.0
    head, at, tail = rest.rpartition("@")
    if at:
        try:
            weight = float(tail)
            url = head
        except ValueError:
            pass  # an '@' inside the URL itself
    return {"name": name.strip(), "url": url.strip(), "model": name.strip(), "weight": weight}


DISPATCH_EPILOG = """\b
Examples:
  # two variants, 70/30, admin token generated into a file
  python cli.py dispatch --port 8500 --admin-token-file runs/admin.token \\
      --backend resnet18=http://127.0.0.1:9001@0.7 --backend resnet50=http://127.0.0.1:9002@0.3
\b
  # change the weights atomically (what the control loop does)
  curl -X PUT -H "Authorization: Bearer $(cat runs/admin.token)" \\
      -d '{"backends": [{"name": "resnet18", "url": "http://127.0.0.1:9001", "weight": 1}]}' \\
      http://127.0.0.1:8500/admin/backends
\b
  curl -s -H "Authorization: Bearer $(cat runs/admin.token)" http://127.0.0.1:8500/admin/stats
"""


@click.command("dispatch", epilog=DISPATCH_EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep loopback: admin API).")
@click.option("--port", type=int, default=8500, show_default=True, help="Port to listen on.")
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the admin bearer token (created with a random token when absent). "
    "Default: env INFADAPTER_ADMIN_TOKEN, else a new token in ~/.cache/infadapter/dispatcher-PORT.token.",
)
@click.option(
    "--backend",
    "backend_specs",
    multiple=True,
    metavar="NAME=URL[@WEIGHT]",
    help="Initial backend (repeatable); model name = NAME, weight 1 when omitted.",
)
@click.option("--slo-ms", type=float, default=750.0, show_default=True, help="Latency SLO (histogram buckets, stats).")
@click.option("--backend-timeout-s", type=float, default=5.0, show_default=True, help="Timeout of one forward.")
@click.option("--eject-s", type=float, default=10.0, show_default=True, help="How long a failed backend is ejected.")
@click.option("--max-in-flight", type=int, default=1024, show_default=True, help="Bound on concurrent requests (503).")
@click.option(
    "--max-body-bytes", type=int, default=8 * 1024 * 1024, show_default=True, help="Largest predict body (413)."
)
@click.option("--shutdown-timeout-s", type=float, default=30.0, show_default=True, help="Drain time on SIGTERM/SIGINT.")
@click.option(
    "--body-timeout-s", type=float, default=30.0, show_default=True, help="Time to receive a predict body (408)."
)
@click.option(
    "--header-timeout",
    "header_timeout_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Time to receive a request's line and headers (408, connection closed).",
)
@click.option(
    "--model-name", default="", help="Public model name; predict requests for another name get 404 [default: any]."
)
def dispatch(
    host: str,
    port: int,
    admin_token_file: Path | None,
    backend_specs: tuple[str, ...],
    slo_ms: float,
    backend_timeout_s: float,
    eject_s: float,
    max_in_flight: int,
    max_body_bytes: int,
    shutdown_timeout_s: float,
    body_timeout_s: float,
    header_timeout_s: float,
    model_name: str,
) -> None:
    """Serve POST /v1/models/NAME:predict and split it over variants by smooth weighted round robin.

    Admin API (bearer token): PUT/GET /admin/backends, GET /admin/stats. Metrics at /metrics,
    liveness at /healthz. SIGTERM stops listening and lets in-flight requests finish.
    """
    from infadapter.serving.dispatcher import DispatcherConfig, parse_backends, resolve_admin_token, serve

    backends = parse_backends([_parse_backend(b) for b in backend_specs])
    token, written = resolve_admin_token(admin_token_file, port)
    config = DispatcherConfig(
        host=host,
        port=port,
        admin_token=token,
        slo_ms=slo_ms,
        backend_timeout_s=backend_timeout_s,
        eject_s=eject_s,
        max_in_flight=max_in_flight,
        max_body_bytes=max_body_bytes,
        shutdown_timeout_s=shutdown_timeout_s,
        body_timeout_s=body_timeout_s,
        header_timeout_s=header_timeout_s,
        model_name=model_name,
    )
    console = err_console()

    def ready(bound: int) -> None:
        where = f"admin token written to {written}" if written else "admin token from the given file or environment"
        console.print(f"dispatcher listening on http://{host}:{bound} ({len(backends)} backends; {where})")

    asyncio.run(serve(config, backends, on_ready=ready))
    console.print("dispatcher stopped")


LOAD_EPILOG = """\b
Examples:
  # constant 50 req/s for 30 s through the dispatcher
  python cli.py load --url http://127.0.0.1:8500 --rate 50 --duration 30 --out runs/requests.csv
\b
  # the paper's window, at a third of its rates, 3x faster
  python cli.py load --url http://127.0.0.1:8500 --window paper --scale 0.33 --speedup 3 --out runs/paper.csv
\b
  python cli.py load --url http://127.0.0.1:8501/v1/models/resnet18:predict --rate 5 --duration 10 --json
"""


@click.command("load", epilog=LOAD_EPILOG)
@click.option("--url", required=True, help="Target: http://HOST:PORT (then --model is used) or a full predict URL.")
@click.option("--model", default="resnet", show_default=True, help="Model name in the path when --url is a base URL.")
@click.option("--window", default=None, help="Trace window: paper, dayN, all or START:DURATION (seconds).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply the trace's rates.")
@click.option("--speedup", type=float, default=1.0, show_default=True, help="Compress the trace's time (whole).")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Trace file.")
@click.option("--rate", type=float, default=None, help="Constant rate in req/s (instead of --window).")
@click.option("--duration", type=float, default=None, help="Seconds at --rate.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Record every request (.csv/.parquet)."
)
@click.option("--slo-ms", type=float, default=750.0, show_default=True, help="Latency SLO for the violation rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of arrivals and images.")
@click.option("--timeout-s", type=float, default=10.0, show_default=True, help="Give up on a request after this.")
@click.option("--max-connections", type=int, default=256, show_default=True, help="Concurrent connections at most.")
@click.option("--resolution", type=int, default=224, show_default=True, help="JPEG width and height in pixels.")
@click.option("--images", type=int, default=4, show_default=True, help="Distinct JPEG images to cycle through.")
@json_option
def load(
    url: str,
    model: str,
    window: str | None,
    scale: float,
    speedup: float,
    trace: Path | None,
    rate: float | None,
    duration: float | None,
    out: Path | None,
    slo_ms: float,
    seed: int,
    timeout_s: float,
    max_connections: int,
    resolution: int,
    images: int,
    as_json: bool,
) -> int:
    """Send open-loop Poisson traffic with real JPEG payloads and record every request.

    Arrivals never wait for responses. Prints sent, answered, errors, timeouts, SLO violation rate
    and p50/p99; sent = ok + errors + timeouts always, also after Ctrl-C.
    """

    from infadapter.observe.loadgen import predict_url, run_load

    rates = _load_rates(window, scale, speedup, trace, rate, duration)
    target = predict_url(url, model)
    console = err_console()
    progress_cb = None
    bar = None
    if console.is_terminal and not as_json:
        from rich.progress import Progress

        bar = Progress(console=console, transient=True)
        task = bar.add_task(f"load -> {target}", total=len(rates))

        def progress_cb(done: int, total: int) -> None:
            bar.update(task, completed=done)

        bar.start()
    try:
        summary = run_load(
            target,
            rates,
            out_path=out,
            slo_ms=slo_ms,
            seed=seed,
            timeout_s=timeout_s,
            max_connections=max_connections,
            resolution=resolution,
            images=images,
            progress=progress_cb,
        )
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        print_json(summary.as_dict())
    else:
        _print_summary(summary)
    if summary.interrupted:
        warn("interrupted: requests still in flight were counted as errors")
        return 130
    if summary.sent and summary.answered == 0:
        raise BackendUnavailable(f"--url: no request of {summary.sent} got an answer from {target}; is it running?")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _print_summary(s: object) -> None:
    from rich.table import Table

    from infadapter.observe.loadgen import LoadSummary

    assert isinstance(s, LoadSummary)
    table = Table(show_header=False, box=None)
    rows = [
        ("sent", f"{s.sent} in {s.duration_s:.1f} s ({s.achieved_rps:.1f} req/s)"),
        ("answered", str(s.answered)),
        ("ok", str(s.ok)),
        ("errors", f"{s.errors} (unsent, all connections busy: {s.unsent})"),
        ("timeouts", str(s.timeouts)),
        ("SLO violation rate", f"{s.slo_violation_rate:.2%} (SLO {s.slo_ms:g} ms)"),
        ("p50 / p99", f"{_ms(s.p50_ms)} / {_ms(s.p99_ms)}"),
        ("send lag p99", _ms(s.send_lag_p99_ms)),
        ("by variant", ", ".join(f"{k}={v}" for k, v in s.by_variant.items()) or "-"),
        ("by status", ", ".join(f"{k}={v}" for k, v in s.by_status.items()) or "-"),
    ]
    if s.out_path:
        rows.append(("records", s.out_path))
    for key, value in rows:
        table.add_row(key, value)
    out_console().print(table)


def _load_rates(window: str | None, scale: float, speedup: float, trace: Path | None, rate: float | None,
                duration: float | None) -> Any:
    """The per-second rates to send: a trace --window, or a constant --rate for --duration seconds."""
    import numpy as np

    if window is not None and rate is not None:
        raise BadInput("--window/--rate: give one of them, not both")
    if window is not None:
        from infadapter.observe.trace import load_window

        rates = load_window(window, trace, scale, speedup)
    elif rate is not None:
        if duration is None or not duration > 0:
            raise BadInput("--duration: seconds > 0 are required with --rate")
        if not rate >= 0:
            raise BadInput("--rate: must be >= 0")
        whole = int(duration)
        rates = np.full(whole, rate, dtype=float)
        if duration > whole:
            rates = np.append(rates, rate * (duration - whole))  # the last partial second, pro rata
    else:
        raise BadInput("--window or --rate: say which load to send (e.g. --rate 50 --duration 30)")
    return rates
