"""Decision records: every decision the loop takes, with its inputs and why.

Each record goes to a JSON-lines file (one object a line, appended and flushed) and to a capped
in-memory history that ``status`` and the live view read.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infadapter.core import control
from infadapter.core.control import Seen
from infadapter.core.plan import Plan, PlanDiff
from infadapter.core.policies import Decision
from infadapter.errors import note_write

log = logging.getLogger("infadapter.adapter.records")


@dataclass(frozen=True)
class DecisionRecord:
    """One decision: inputs, forecast, plans before/after, objective, solver time, reason, timings."""

    seq: int
    time_s: float
    trigger: str  # "interval" | "overload" | "crash" | "start" | "retry"
    policy: str
    observed_rps: float
    forecast_rps: float
    history_len: int
    p99_ms: float | None
    monitor_source: str
    plan_before: dict[str, Any] | None
    plan_after: dict[str, Any] | None
    serving: dict[str, Any] | None
    objective: float
    solver: str
    solve_s: float
    reason: str
    diff: str
    actions: tuple[str, ...] = ()
    apply_ok: bool = True
    apply_error: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    #: The true peak of the period the plan serves: only a simulation knows it (the oracle's input).
    true_peak_rps: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["actions"] = list(self.actions)
        return d


class DecisionLog:
    """Appends records to ``path`` (JSON lines) and keeps the last ``cap`` in memory."""

    def __init__(self, path: str | Path | None, cap: int = 200) -> None:
        self.path = Path(path) if path is not None else None
        self.history: deque[DecisionRecord] = deque(maxlen=cap)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    #: Why the last append failed ("" after a good one). A full disk or an unwritable run folder
    #: loses records on disk, never the loop: the capped history in memory still has them.
    write_error: str = ""

    def append(self, record: DecisionRecord) -> None:
        self.history.append(record)
        if self.path is not None:
            try:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record.as_dict(), default=str) + "\n")
            except OSError as exc:
                error = f"cannot write {self.path} ({exc.strerror or exc}); decisions kept in memory only"
            else:
                error = ""
            self.write_error = note_write(log, self.write_error, error, self.path)

    @property
    def last(self) -> DecisionRecord | None:
        return self.history[-1] if self.history else None

    def __len__(self) -> int:
        return len(self.history)


def read_records(path: str | Path, last: int | None = None) -> list[dict[str, Any]]:
    """Parse a decisions file (skipping a torn last line); the ``last`` N records when given."""
    out: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out[-last:] if last else out


# -- building a record: one builder for the live loop and the simulator ---------------------------------
class StepTimer:
    """Named, timed steps of one decision (CONVENTIONS.md 6), as the VPA recommender's ``RunOnce`` times its
    steps: ``with steps.step("plan"): ...``; :meth:`finish` adds ``total`` and rounds.

    ``timings_s`` is the dict a record holds, so the ``record`` step's own time lands in the record it built.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._t0 = clock()
        self.timings_s: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = self._clock()
        try:
            yield
        finally:
            self.timings_s[name] = self.timings_s.get(name, 0.0) + self._clock() - t

    def seconds(self, *names: str) -> float:
        """The time the named steps took together."""
        return sum(self.timings_s.get(n, 0.0) for n in names)

    def finish(self) -> dict[str, float]:
        """Add ``total`` (since the timer started) and round every step to the microsecond, in place."""
        self.timings_s["total"] = self._clock() - self._t0
        for k, v in self.timings_s.items():
            self.timings_s[k] = round(v, 6)
        return self.timings_s


def decision_record(*, seq: int, time_s: float, trigger: str, policy: str, observed: Seen, forecast_rps: float,
                    decision: Decision, before: Plan | None, change: PlanDiff, serving: Plan | None,
                    monitor_source: str, p99_ms: float | None = None, degraded: str = "",
                    actions: tuple[str, ...] = (), apply_ok: bool = True, apply_error: str = "",
                    timings_s: dict[str, float] | None = None,
                    true_peak_rps: float | None = None) -> DecisionRecord:
    """The one way a decision becomes a :class:`DecisionRecord`, live (:mod:`infadapter.adapter.loop`) and
    simulated (:mod:`infadapter.sim.simulation`): the same fields, rounding and reason words
    (:func:`infadapter.core.control.reason`) in both."""
    return DecisionRecord(
        seq=seq, time_s=time_s, trigger=trigger, policy=policy,
        observed_rps=round(observed.rate_rps, 3), forecast_rps=round(forecast_rps, 3),
        history_len=len(observed.history), p99_ms=p99_ms, monitor_source=monitor_source,
        plan_before=before.as_dict() if before is not None else None, plan_after=decision.plan.as_dict(),
        serving=serving.as_dict() if serving is not None else None, objective=decision.plan.objective,
        solver=decision.solver, solve_s=round(decision.solve_s, 6),
        reason=control.reason(trigger, decision.reason, degraded), diff=change.summary(), actions=tuple(actions),
        apply_ok=apply_ok, apply_error=apply_error, timings_s=timings_s if timings_s is not None else {},
        true_peak_rps=round(true_peak_rps, 3) if true_peak_rps is not None else None)
