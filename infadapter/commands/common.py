"""Shared CLI plumbing: consoles, JSON output, shared options, error-to-exit-code mapping."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from infadapter import paths
from infadapter.errors import BadInput

F = TypeVar("F", bound=Callable[..., Any])


def _consoles() -> dict[str, Console]:
    """The run's two consoles, made once per command on the click context (``-q`` silences diagnostics)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    if not isinstance(obj, dict):
        return {"out": Console(soft_wrap=True), "err": Console(stderr=True, soft_wrap=True)}
    if "consoles" not in obj:
        obj["consoles"] = {"out": Console(soft_wrap=True),
                           "err": Console(stderr=True, soft_wrap=True, quiet=obj.get("verbose", 0) < 0)}
    return obj["consoles"]


def out_console() -> Console:
    """Results go to stdout."""
    return _consoles()["out"]


def err_console() -> Console:
    """Diagnostics go to stderr; ``-q`` silences them (errors still print, as one line, from cli.run)."""
    return _consoles()["err"]


def print_json(value: Any) -> None:
    """Exactly one JSON value on stdout and nothing else."""
    sys.stdout.write(json.dumps(value, sort_keys=False) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    err_console().print(f"[yellow]warning:[/] {message}", highlight=False)


def profile_option(default: Path | None = paths.PAPER_PROFILE) -> Callable[[F], F]:
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
