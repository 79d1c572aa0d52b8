"""The toy backend's own flags (imports click alone, like the shipped backends' options modules)."""

from __future__ import annotations

import click

ADAPT: list[click.Option] = [
    click.Option(["--toy-note"], default="", help="A note the toy backend puts in the run's summary."),
]
STATUS: list[click.Option] = [
    click.Option(["--toy-shout"], is_flag=True, help="Print the toy status in capitals."),
]
