"""CLI options shared by ``simulate``, ``adapt`` and ``experiment``: declared once, one default each.

The defaults come from the core (``control.ControlConfig``, ``policies``), so a default changed there
changes in every command, and the simulator and the live loop start from the same settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from infadapter.core.control import ControlConfig
from infadapter.core.forecast import FORECAST_HELP
from infadapter.core.policies import DEFAULT_MIN_GAIN, DEFAULT_STABILIZATION

F = TypeVar("F", bound=Callable[..., Any])

CONTROL_OPTIONS = (
    click.option("--interval", "interval_s", type=float, default=ControlConfig.interval_s, show_default=True,
                 help="Seconds between decisions."),
    click.option("--check", "check_s", type=float, default=ControlConfig.check_s, show_default=True,
                 help="Seconds between mid-interval checks (overload, crashes)."),
    click.option("--stabilization", type=int, default=DEFAULT_STABILIZATION, show_default=True,
                 help="Decisions that must want less before a scale-down (1: off)."),
    click.option("--min-gain", type=click.FloatRange(0, 1), default=DEFAULT_MIN_GAIN, show_default=True,
                 help="Keep the current mix of variants unless a new one's objective is better by this much."),
    click.option("--forecaster", default="auto", show_default=True,
                 help=f"{FORECAST_HELP} (auto: the committed learned model, else ewma)."),
    click.option("--alpha", type=click.FloatRange(0), default=None,
                 help="Override the profile's cost weight (higher: fewer cores, lower accuracy)."),
    click.option("--budget", type=float, default=None,
                 help="Override the profile's core budget: the most cores the model servers hold together "
                      "(e.g. what another policy spends, to compare at equal cost)."),
)


def control_options(f: F) -> F:
    """``--interval --check --stabilization --min-gain --forecaster --alpha --budget``."""
    for o in reversed(CONTROL_OPTIONS):
        f = o(f)
    return f
