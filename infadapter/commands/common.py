"""Shared CLI plumbing: consoles, JSON output, shared options, error-to-exit-code mapping."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from infadapter.errors import BadInput

F = TypeVar("F", bound=Callable[..., Any])

#: The repository root (profiles/, templates/ and ../shared are found relative to it).
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = ROOT / "profiles" / "paper.yaml"


def out_console() -> Console:
    """Results go to stdout."""
    return Console(soft_wrap=True)


def err_console() -> Console:
    """Diagnostics go to stderr."""
    return Console(stderr=True, soft_wrap=True)


def print_json(value: Any) -> None:
    """Exactly one JSON value on stdout and nothing else."""
    sys.stdout.write(json.dumps(value, sort_keys=False) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    err_console().print(f"[yellow]warning:[/] {message}", highlight=False)


def profile_option(default: Path | None = DEFAULT_PROFILE) -> Callable[[F], F]:
    """``--profile PATH`` (env ``INFADAPTER_PROFILE``)."""
    return click.option(
        "--profile",
        "profile_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default,
        show_default=True,
        envvar="INFADAPTER_PROFILE",
        help="Profile YAML (variants, SLO, budget).",
    )


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")(f)


def parse_cores_map(text: str | None, field: str = "--current") -> dict[str, float]:
    """Parse ``NAME=CORES,NAME=CORES``; BadInput naming the flag otherwise."""
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise BadInput(f"{field}: expected NAME=CORES[,NAME=CORES...], got {part!r}")
        try:
            cores = float(value)
        except ValueError:
            raise BadInput(f"{field}: cores of {name!r} must be a number, got {value!r}") from None
        if cores < 0:
            raise BadInput(f"{field}: cores of {name!r} must be >= 0, got {value}")
        out[name.strip()] = cores
    return out
