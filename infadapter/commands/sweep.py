"""``--sweep KEY=V1,V2,...`` of ``simulate`` and ``experiment``: infadapter run once per value, a frontier beside the
baselines (the sweep itself and the frontier: :mod:`infadapter.sim.frontier`)."""

from __future__ import annotations

import math

from infadapter.errors import BadInput
from infadapter.sim.frontier import SWEEP_KEYS, Sweep

EXAMPLE = "--sweep alpha=0.01,0.02,0.05,0.1"
SWEEP_HELP = ("Sweep infadapter's " + " or ".join(SWEEP_KEYS) + ": KEY=V1,V2,... (e.g. alpha=0.01,0.02,0.05,0.1 or "
              "budget=8,12,16,20); infadapter runs once per value, every other --policy once, and --plot draws "
              "accuracy against mean cores (violations as colour), --json gives the points.")


def parse_sweep(text: str) -> Sweep:
    """Parse ``--sweep``'s value; one line of BadInput naming the flag, what was wrong and the fix."""
    key, sep, raw = text.partition("=")
    key = key.strip().lower()
    if not sep or not key:
        raise BadInput(f"--sweep: expected KEY=V1,V2,... with KEY {' or '.join(SWEEP_KEYS)}, got {text!r} "
                       f"(e.g. {EXAMPLE})")
    if key not in SWEEP_KEYS:
        raise BadInput(f"--sweep: cannot sweep {key!r}; sweep {' or '.join(SWEEP_KEYS)} (e.g. {EXAMPLE})")
    values: set[float] = set()
    for part in raw.split(","):
        try:
            v = float(part)
        except ValueError:
            raise BadInput(f"--sweep: {key} values must be numbers separated by commas, got {part.strip()!r} "
                           f"(e.g. {EXAMPLE})") from None
        if not math.isfinite(v) or v < 0 or (key == "budget" and v <= 0):
            raise BadInput(f"--sweep: {key} values must be finite numbers {'> 0' if key == 'budget' else '>= 0'}, "
                           f"got {part.strip()!r}")
        values.add(v)
    if len(values) < 2:
        raise BadInput(f"--sweep: a frontier needs at least two {key} values, got {raw.strip()!r} (e.g. {EXAMPLE})")
    return Sweep(key, tuple(sorted(values)))
