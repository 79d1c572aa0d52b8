"""The dry-run backend's own flags: its folder, plus the cluster flags it shares with kubernetes (the same
objects as :mod:`infadapter.backends.kubernetes.options`'s, declared once). Imports click alone."""

from __future__ import annotations

from pathlib import Path

import click

from infadapter.backends.kubernetes.options import CLUSTER

ADAPT: list[click.Option] = [
    click.Option(["--out", "out_dir"], type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Folder for gen-NNNN/ manifests, plan.json and changes.diff (required)."),
    *CLUSTER,
]

#: ``status`` of a dry run reads its run folder (``--run-dir``, the --out folder) alone.
STATUS: list[click.Option] = []
