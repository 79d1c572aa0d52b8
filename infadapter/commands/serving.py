"""``build-models`` and ``serve-model``: the model variants and their TF-Serving-compatible server."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from infadapter import paths
from infadapter.commands.common import err_console, json_option, out_console, print_json
from infadapter.errors import BadInput


def parse_variants(text: str) -> list[str]:
    """``resnet18,resnet50`` or ``all`` -> validated variant names, in the given order."""
    from infadapter.serving.resnet import VARIANT_NAMES, depth_of

    if text.strip() == "all":
        return list(VARIANT_NAMES)
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise BadInput(f"--variants: expected names like resnet18,resnet50 or 'all', got {text!r}")
    for name in names:
        depth_of(name)
    return names


@click.command(
    "build-models",
    epilog="""Examples:

\b
  python cli.py build-models
  python cli.py build-models --resolution 96 --variants resnet18,resnet50
  python cli.py build-models --out /tmp/models --resolution 64 --seed 1 --json
""",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=paths.MODELS,
    show_default=True,
    help="Folder to write NAME/1/model.onnx into (git-ignored models/).",
)
@click.option("--variants", default="all", show_default=True, help="Comma-separated names, or 'all'.")
@click.option("--resolution", type=int, default=224, show_default=True, help="Input height and width in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@json_option
def build_models(out: Path, variants: str, resolution: int, seed: int, as_json: bool) -> None:
    """Build ResNet-18/34/50/101/152 ONNX models (torchvision architecture, random weights).

    Weights are random (no model hub is reachable); accuracies come from the profile. To serve
    pretrained models instead, pass their folder to serve-model --model-dir.
    """
    from infadapter.serving.resnet import MIN_RESOLUTION, write_model

    names = parse_variants(variants)
    if resolution < MIN_RESOLUTION:
        raise BadInput(f"--resolution: must be at least {MIN_RESOLUTION} pixels, got {resolution}")
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            path = write_model(out, name, resolution, seed)
        except OSError as exc:
            raise BadInput(f"--out: cannot write {out}: {exc.strerror}") from None
        row = {
            "name": name,
            "path": str(path),
            "megabytes": round(path.stat().st_size / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        if not as_json:
            err_console().print(f"built {name}: {row['path']} ({row['megabytes']} MB, {row['seconds']} s)")
    if as_json:
        print_json({"resolution": resolution, "seed": seed, "models": rows})
    else:
        out_console().print(f"{len(rows)} model(s) at resolution {resolution} in {out}")


@click.command(
    "serve-model",
    epilog="""Examples:

\b
  python cli.py serve-model --name resnet18 --port 8501
  python cli.py serve-model --model-dir models --name resnet50 --threads 2 --warmup 3
  curl -s localhost:8501/v1/models/resnet18
  curl -s localhost:8501/monitoring/prometheus/metrics
""",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=paths.MODELS,
    show_default=True,
    help="Folder holding NAME/VERSION/model.onnx (TF Serving layout).",
)
@click.option("--name", required=True, help="Model name (folder under --model-dir, and the URL name).")
@click.option("--version", "version", type=int, default=None, help="Version folder to serve [default: highest].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8501, show_default=True, help="REST port.")
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="ONNX Runtime intra-op threads: floor of the CPU allocation, at least 1 (never more than cores).",
)
@click.option("--workers", type=int, default=1, show_default=True, help="Concurrent inference runs.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Warm-up inferences before AVAILABLE.")
@click.option("--max-queue", type=int, default=64, show_default=True, help="Waiting requests before 503.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Classes returned per instance.")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True, help="Seconds to drain on SIGTERM.")
@click.option("--max-batch", type=int, default=128, show_default=True, help="Instances per request (more: 400).")
@click.option(
    "--max-body-bytes", type=int, default=32 * 1024 * 1024, show_default=True, help="Largest predict body (413)."
)
@click.option(
    "--body-timeout", type=float, default=30.0, show_default=True, help="Seconds to receive a request body (408)."
)
@click.option(
    "--header-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds to receive a request's line and headers (408, connection closed).",
)
@click.pass_context
def serve_model(
    ctx: click.Context,
    model_dir: Path,
    name: str,
    version: int | None,
    host: str,
    port: int,
    threads: int,
    workers: int,
    warmup: int,
    max_queue: int,
    top_k: int,
    drain_timeout: float,
    max_batch: int,
    max_body_bytes: int,
    body_timeout: float,
    header_timeout: float,
) -> None:
    """Serve one ONNX model with TF Serving's REST API and metric names.

    Answers LOADING until the model has run its warm-up inferences, then AVAILABLE. SIGTERM stops
    accepting, drains the requests in flight and exits 0.
    """
    from infadapter.serving.server import ServerConfig, run_server

    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    logging.basicConfig(
        level=logging.WARNING if verbose < 0 else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    config = ServerConfig(
        model_dir=model_dir,
        name=name,
        version=version,
        host=host,
        port=port,
        threads=threads,
        workers=workers,
        warmup=warmup,
        max_queue=max_queue,
        top_k=top_k,
        drain_timeout_s=drain_timeout,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout,
        header_timeout_s=header_timeout,
    )
    ctx.exit(run_server(config))
