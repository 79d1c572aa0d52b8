"""``profile measure``: measure each variant's capacity under CPU quotas and write a profile YAML."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infadapter import paths
from infadapter.commands.common import err_console, json_option, out_console, print_json
from infadapter.errors import BadInput


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInput(f"{flag}: expected comma-separated numbers like 0.25,0.5,1, got {text!r}") from None
    if not values:
        raise BadInput(f"{flag}: expected at least one number, got {text!r}")
    return values


@click.command(
    "measure",
    epilog="""Examples:

\b
  python cli.py build-models --resolution 64
  python cli.py profile measure --slo-ms 300 --cores 0.25,0.5,0.75,1,1.75 --out profiles/local.yaml
  python cli.py profile measure --variants resnet18 --cores 0.5,1 --step-s 2 --out /tmp/p.yaml --json
""",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=paths.MODELS,
    show_default=True,
    help="Folder holding NAME/1/model.onnx (python cli.py build-models).",
)
@click.option("--variants", default="all", show_default=True, help="Comma-separated variants, or 'all'.")
@click.option(
    "--cores", "cores_text", default="0.25,0.5,0.75,1,1.75", show_default=True, help="CPU allocations to measure."
)
@click.option("--slo-ms", type=float, default=300.0, show_default=True, help="p99 latency SLO in milliseconds.")
@click.option("--step-s", type=float, default=3.0, show_default=True, help="Seconds of traffic per rate step.")
@click.option(
    "--step-requests", type=int, default=200, show_default=True,
    help="A step lasts long enough for this many requests (slow servers: longer than --step-s); 0: --step-s only.",
)
@click.option("--max-steps", type=int, default=8, show_default=True, help="Rate steps per (variant, cores).")
@click.option("--budget-cores", type=float, default=1.75, show_default=True, help="budget_cores of the profile.")
@click.option("--core-step", type=float, default=0.25, show_default=True, help="core_step of the profile.")
@click.option("--min-cores", type=float, default=0.25, show_default=True, help="min_cores of the profile.")
@click.option("--safety", type=float, default=1.0, show_default=True,
              help="Multiplier on measured capacity (the p99 over Poisson arrivals is already the margin).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Warm-up inferences before AVAILABLE.")
@click.option(
    "--results",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Partial results (JSON lines) for resuming [default: OUT with .results.jsonl].",
)
@click.option("--fresh", is_flag=True, help="Ignore earlier results and measure everything again.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of arrivals and the test image.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.LOCAL_PROFILE,
    show_default=True,
    help="Profile YAML to write.",
)
@json_option
def measure(
    model_dir: Path,
    variants: str,
    cores_text: str,
    slo_ms: float,
    step_s: float,
    step_requests: int,
    max_steps: int,
    budget_cores: float,
    core_step: float,
    min_cores: float,
    safety: float,
    warmup: int,
    results: Path | None,
    fresh: bool,
    seed: int,
    out: Path,
    as_json: bool,
) -> None:
    """Measure each variant's capacity at the SLO on real servers under CPU quotas.

    For every variant and core allocation: start the model server in a cgroup with that quota,
    time it to AVAILABLE, ramp open-loop Poisson traffic and bisect to the highest rate whose p99
    stays under the SLO. Finished measurements go to a results file, so a rerun resumes. Writes a
    profile (capacity as measured points) and prints a table.
    """
    from infadapter.commands.serving import parse_variants
    from infadapter.profiler import ProfilerConfig, load_average, run_profiler

    config = ProfilerConfig(
        model_dir=model_dir,
        variants=tuple(parse_variants(variants)),
        cores=_floats(cores_text, "--cores"),
        slo_ms=slo_ms,
        results_path=results or out.with_suffix(".results.jsonl"),
        step_s=step_s,
        step_requests=step_requests,
        max_steps=max_steps,
        warmup=warmup,
        seed=seed,
    )
    config.check()
    if not 0 < safety <= 1:
        raise BadInput(f"--safety: must be in (0, 1], got {safety:g}")
    err = err_console()
    loadavg = load_average()
    total = len(config.variants) * len(config.cores)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=not err.is_terminal or as_json,
    )  # fmt: skip
    counts = {"measured": 0, "reused": 0}
    # SIGTERM unwinds like Ctrl-C, so the server under test is stopped and its cgroup removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    with progress:
        task = progress.add_task("profiling", total=total)

        def on_start(variant: str, cores: float) -> None:
            progress.update(task, description=f"{variant} on {cores:g} cores")

        def on_done(m: object, reused: bool) -> None:
            counts["reused" if reused else "measured"] += 1
            progress.advance(task)
            if not err.is_terminal and not as_json:
                err.print(f"{m.variant} {m.cores:g} cores: {m.capacity_rps:g} req/s{' (resumed)' if reused else ''}")  # type: ignore[attr-defined]

        try:
            ms = run_profiler(config, on_start=on_start, on_done=on_done, fresh=fresh)
        finally:
            signal.signal(signal.SIGTERM, previous)

    resolution = _write_profile(ms, config, budget_cores, core_step, min_cores, safety, loadavg, out)
    _report(ms, config, counts, out, resolution, as_json)


def _write_profile(ms: list[Any], config: Any, budget_cores: float, core_step: float, min_cores: float,
                   safety: float, loadavg: float, out: Path) -> int:
    """Build the profile from the measurements, write it with a header saying how it was made, check that it
    loads back; the models' resolution."""
    from infadapter.core.profile import dump_profile
    from infadapter.profiler import build_profile

    resolution = max((m.resolution for m in ms), default=0)
    today = dt.date.today().isoformat()
    command = "python cli.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    source = (
        f"measured {today} on this machine ({os.cpu_count()} cores), ONNX Runtime, resolution {resolution}, "
        f"SLO {config.slo_ms:g} ms, p99 of open-loop Poisson steps of {config.step_s:g} s "
        f"(at least {config.step_requests} requests), times {safety:g}"
    )
    profile = build_profile(ms, config.slo_ms, budget_cores, core_step, min_cores, safety, source)
    header = (
        f"Generated by: {command}\n"
        f"Measured {today}: {len(ms)} (variant, cores) points, resolution {resolution}x{resolution}, "
        f"SLO {config.slo_ms:g} ms.\n"
        f"1-minute load average at the start: {loadavg:.2f} on {os.cpu_count()} cores "
        f"({'measured under contention from other processes' if loadavg > 0.5 else 'an idle machine'}).\n"
        f"The server under test and the load generator ran with CPU weight x{config.priority:g} so that the quota, "
        "not the neighbours, limits the server.\n"
        "capacity: highest Poisson rate with p99 <= SLO (failures count as misses), made non-decreasing in "
        "cores, times safety.\nAccuracy: published torchvision top-1 (the weights here are random)."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    from infadapter.core.profile import load_profile

    out.write_text(dump_profile(profile, header))
    load_profile(out)  # the file written must load back
    return resolution


def _report(ms: list[Any], config: Any, counts: dict[str, int], out: Path, resolution: int, as_json: bool) -> None:
    """The measurements as one JSON object, or as a table with what was written."""
    if as_json:
        fields = ("variant", "cores", "capacity_rps", "saturation_rps", "service_ms", "load_time_s",
                  "peak_rss_mb", "threads", "cpu_seconds", "wall_seconds")  # fmt: skip
        print_json(
            {
                "out": str(out),
                "results": str(config.results_path),
                "measured": counts["measured"],
                "reused": counts["reused"],
                "resolution": resolution,
                "slo_ms": config.slo_ms,
                "measurements": [{k: getattr(m, k) for k in fields} | {"steps": len(m.steps)} for m in ms],
            }
        )
        return
    table = Table(title=f"capacity at p99 <= {config.slo_ms:g} ms (resolution {resolution})")
    for col in ("variant", "cores", "thr", "req/s", "svc/s", "1-req ms", "load s", "RSS MB", "steps"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for m in ms:
        table.add_row(
            m.variant, f"{m.cores:g}", str(m.threads), f"{m.capacity_rps:g}", f"{m.saturation_rps:g}",
            f"{m.service_ms:g}", f"{m.load_time_s:g}", f"{m.peak_rss_mb:g}", str(len(m.steps)),
        )  # fmt: skip
    console = out_console()
    console.print(table)
    console.print(
        "req/s: capacity at the SLO (before safety); svc/s: closed-loop service rate; 1-req ms: one request alone"
    )
    console.print(f"wrote {out} ({counts['measured']} measured, {counts['reused']} resumed from {config.results_path})")
