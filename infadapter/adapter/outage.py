"""A backend that cannot be read is away, not crashed: the one owner of that rule and of saying so.

When the loop cannot read back what runs (``BackendState.unreachable``: e.g. the Kubernetes API server does
not answer), the servers have not gone: a Deployment's pods keep serving the plan last applied without the
API server, and a plan the loop cannot apply cannot help them anyway. So the loop holds: no crash decision,
no apply, no new plan, until the backend answers again (:meth:`ControlLoop.tick`). :class:`Outages` keeps the
outages and says each one twice at most: once when it starts (since when, why, which plan is held) and once
when it ends (how long it lasted). The summary lists them (``backend_outages``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def clock_text(t_s: float) -> str:
    """A Unix time as the outage lines write it (UTC, to the second)."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(t_s))


@dataclass
class Outage:
    """One stretch during which the backend could not be read."""

    since_s: float
    reason: str
    until_s: float | None = None  # None: still away

    def seconds(self, now_s: float) -> float:
        """How long it lasted (until ``now_s`` while it goes on)."""
        return (self.until_s if self.until_s is not None else now_s) - self.since_s

    def as_dict(self, now_s: float) -> dict[str, Any]:
        return {"since_s": round(self.since_s, 3), "until_s": None if self.until_s is None else round(self.until_s, 3),
                "seconds": round(self.seconds(now_s), 3), "reason": self.reason}


class Outages:
    """The backend's outages, past and current; :meth:`down` and :meth:`up` log only when the state changes."""

    def __init__(self, backend_name: str) -> None:
        self.backend_name = backend_name
        self.current: Outage | None = None
        self.past: list[Outage] = []

    @property
    def active(self) -> bool:
        return self.current is not None

    def down(self, now_s: float, reason: str, since_s: float | None = None, holding: str = "") -> bool:
        """The backend cannot be read at ``now_s`` (``since_s``: its first failed call, when known); says so
        the first time only. True when this starts an outage."""
        if self.current is not None:
            return False
        since = min(since_s, now_s) if since_s is not None else now_s
        self.current = Outage(since, reason)
        log.warning("backend %s unreachable since %s (%s); holding the plan (%s): no decision, nothing created or "
                    "deleted until it answers", self.backend_name, clock_text(since), reason, holding or "none")
        return True

    def up(self, now_s: float) -> Outage | None:
        """The backend answers at ``now_s``; says so (with the outage's length) when it was away. The outage
        that ended, or None."""
        o, self.current = self.current, None
        if o is None:
            return None
        o.until_s = max(now_s, o.since_s)
        self.past.append(o)
        log.warning("backend %s answers again after %.1f s (unreachable since %s); deciding again",
                    self.backend_name, o.seconds(now_s), clock_text(o.since_s))
        return o

    def line(self, now_s: float) -> str:
        """The current outage in one line ("" when none), for ``status``."""
        o = self.current
        if o is None:
            return ""
        return f"unreachable since {clock_text(o.since_s)} ({o.seconds(now_s):.0f} s): {o.reason}; holding the plan"

    def as_list(self, now_s: float) -> list[dict[str, Any]]:
        """Every outage, the current one last (``until_s`` None)."""
        return [o.as_dict(now_s) for o in (*self.past, *([self.current] if self.current else []))]
