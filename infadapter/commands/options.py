"""CLI options shared by ``simulate``, ``adapt`` and ``experiment``: declared once, one default each.

The control flags are bound to :class:`~infadapter.core.control.ControlConfig`, one flag to one field
(:data:`CONTROL_FLAGS`), the way the VPA recommender binds each of its flags to one field of its config
struct: a command decorated with :func:`control_options` receives them as one ``control: ControlConfig``
argument, built (and checked, with the flag's name in the error) before the command runs. The defaults
come from the core (``ControlConfig``, ``policies``), so a default changed there changes in every command,
and the simulator and the live loop start from the same settings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from infadapter.core.control import DAY_S, DEMANDS, HISTORY_S, ControlConfig
from infadapter.core.forecast import FORECAST_HELP
from infadapter.core.policies import DEFAULT_MIN_GAIN, DEFAULT_STABILIZATION

F = TypeVar("F", bound=Callable[..., Any])

_C = ControlConfig
#: ControlConfig field -> its one flag. The parameter name is the field's name.
CONTROL_FLAGS: dict[str, Callable[[F], F]] = {
    "interval_s": click.option("--interval", "interval_s", type=float, default=_C.interval_s, show_default=True,
                               help="Seconds between decisions."),
    "check_s": click.option("--check", "check_s", type=float, default=_C.check_s, show_default=True,
                            help="Seconds between mid-interval checks (overload, crashes)."),
    "react": click.option("--react/--no-react", "react", default=_C.react, show_default=True,
                          help="Re-plan at once when the observed rate runs above the plan's capacity by "
                               "--overload-tolerance (off: decide only every interval, as the paper)."),
    "rate_window_s": click.option("--rate-window", "rate_window_s", type=int, default=_C.rate_window_s,
                                  show_default=True,
                                  help="Seconds of observed counts averaged into the observed rate (what the "
                                       "overload check compares with the plan's capacity)."),
    "overload_tolerance": click.option("--overload-tolerance", "overload_tolerance", type=float,
                                       default=_C.overload_tolerance, show_default=True,
                                       help="The overload check fires above capacity x (1 + this); the re-plan "
                                            "serves the observed rate x (1 + this)."),
    "overload_trend": click.option("--overload-trend", "overload_trend", type=float, default=_C.overload_trend,
                                   show_default=True,
                                   help="An overload re-plan also adds this many windows of the rate's rise "
                                        "(a burst keeps rising while new servers load; 0: off)."),
    "demand": click.option("--demand", "demand", type=click.Choice(DEMANDS), default=_C.demand,
                           help="peak: plan for the forecast busiest second as it is (the paper); rate: for the "
                                "Poisson rate behind it (its second-to-second scatter is already in a measured "
                                "capacity's p99). Default: the profile's demand (local.yaml: rate, paper.yaml: "
                                "peak)."),
}

POLICY_OPTIONS = (
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


def bind_control(f: F) -> F:
    """Add the :data:`CONTROL_FLAGS` to a command and hand it ``control=ControlConfig(...)`` built from them."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["control"] = ControlConfig(**{name: kwargs.pop(name) for name in CONTROL_FLAGS})
        return f(*args, **kwargs)

    out: Any = wrapper
    for o in reversed(CONTROL_FLAGS.values()):
        out = o(out)
    return out  # type: ignore[no-any-return]


def control_options(f: F) -> F:
    """The control flags (one ``control: ControlConfig`` argument) and the policy's options
    (``--stabilization --min-gain --forecaster --alpha --budget``)."""
    for o in reversed(POLICY_OPTIONS):
        f = o(f)
    return bind_control(f)


# -- the load: a trace window (simulate, adapt, experiment) -------------------------------------------
def load_options(window_default: str | None = None) -> Callable[[F], F]:
    """``--window --trace --scale --speedup``, declared once (``window_default`` None: no window unless given)."""
    opts = (
        click.option("--window", default=window_default, show_default=window_default is not None,
                     help="Trace window to replay: paper | dayN | all | START:DURATION (seconds)."),
        click.option("--trace", "trace", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     envvar="INFADAPTER_TRACE", help="Trace file (.tbz2 or text/CSV of req/s per second)."),
        click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply the trace's rates."),
        click.option("--speedup", type=float, default=1.0, show_default=True,
                     help="Compress the trace's time by a whole factor (mean rate of each K seconds)."),
    )

    def decorate(f: F) -> F:
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


@dataclass(frozen=True)
class Replay:
    """A trace window as the control loop and the simulator replay it (the one window -> rates/history code)."""

    #: Per-second rates of the window, scaled and compressed.
    rates: tuple[float, ...]
    #: The day before the window at the same scale and compression (warm VPA: ``policies.Context.rates_before``).
    rates_before: tuple[float, ...]
    #: Its last ``HISTORY_S`` trace seconds: what an adapter already running had observed.
    history_before: tuple[float, ...]
    #: Each replayed second stands for this many trace seconds (``ControlConfig.history_stretch``).
    stretch: int

    def control(self, control: ControlConfig, warm: bool = True) -> ControlConfig:
        """``control`` with this replay's history stretch and (``warm``) the history seen before it."""
        return replace(control, history_stretch=self.stretch, history_before=self.history_before if warm else ())


def load_replay(window: str, trace: Path | None, scale: float, speedup: float) -> Replay:
    """Load ``window`` of the trace and the day before it (one read of each)."""
    from infadapter.observe.trace import load_history_before, load_window

    stretch = max(int(speedup), 1)
    rates = tuple(float(x) for x in load_window(window, trace, scale, speedup))
    day = tuple(float(x) for x in load_history_before(window, trace, scale, speedup, DAY_S))
    kept = HISTORY_S // stretch
    return Replay(rates=rates, rates_before=day, history_before=day[len(day) - kept:] if kept else (),
                  stretch=stretch)
