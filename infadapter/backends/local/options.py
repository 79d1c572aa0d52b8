"""The local backend's own flags (``cli.py adapt --help`` lists them under its heading).

Light on purpose: it imports click and the paths alone, so ``--help`` does not load the backend.
"""

from __future__ import annotations

from pathlib import Path

import click

from infadapter import paths

ADAPT: list[click.Option] = [
    click.Option(["--models", "model_dir"], type=click.Path(file_okay=False, path_type=Path), default=paths.MODELS,
                 show_default=True, help="Model folder (built when missing)."),
    click.Option(["--resolution"], type=int, default=None,
                 help="Input size of models built here and of the load's JPEGs."),
    click.Option(["--cpu-limit", "limit_mode"], type=click.Choice(["auto", "cgroup", "threads"]), default="auto",
                 show_default=True, help="How CPU limits are enforced."),
    click.Option(["--seed"], type=int, default=0, show_default=True, help="Seed of the load's arrivals."),
    click.Option(["--calibrate/--no-calibrate"], default=True, show_default=True,
                 help="Before serving, time one request alone on one core against the profile's reference_ms; "
                      "on a slower machine scale every capacity down by the ratio."),
]

#: ``status`` of a local run reads its run folder (``--run-dir``) alone.
STATUS: list[click.Option] = []
