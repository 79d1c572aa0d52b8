"""Decision records: every decision the loop takes, with its inputs and why.

Each record goes to a JSON-lines file (one object a line, appended and flushed) and to a capped
in-memory history that ``status`` and the live view read.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
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
    # -- added for ``explain`` (issue 26); new fields go last, none is renamed (other readers) ----------
    #: The run that wrote this record (one log may hold several runs of one folder, restarts included).
    run_id: str = ""
    #: What the decision started from: observed rate, history digest, forecast and its headroom, trigger.
    inputs: dict[str, Any] | None = None
    #: The chosen plan's objective terms: accuracy, cost, transition (see core/explain.py).
    terms: dict[str, Any] | None = None
    #: The constraints that held the plan where it is (budget, capacity at the SLO, stabilization, ...).
    binding: tuple[dict[str, Any], ...] = ()
    #: The best plan with a different variant set / different cores, with its objective gap (>= 0).
    runner_up: dict[str, Any] | None = None
    #: Why a policy has no binding constraints or runner-up ("" for policies that solve one service; several
    #: services: why the joint plan has no runner-up, ``core.explain.SERVICES_NOTE``).
    explain_note: str = ""
    #: What ``explain --replay`` needs to re-solve this decision offline (profile, tuning, load, state; with
    #: several services each one's forecast and observed rate).
    replay: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["actions"] = list(self.actions)
        d["binding"] = list(self.binding)
        return d


def new_run_id(now_s: float | None = None) -> str:
    """A run's name in its records: UTC start time and pid, unique per folder in practice."""
    t = time.gmtime(time.time() if now_s is None else now_s)
    return f"{time.strftime('%Y%m%dT%H%M%SZ', t)}-{os.getpid()}"


@dataclass(frozen=True)
class LogRead:
    """A decisions file as read back: the good records and the lines that could not be parsed."""

    records: list[dict[str, Any]]
    #: (1-based line number, first characters) of each damaged line, e.g. a write cut short by a kill.
    damaged: list[tuple[int, str]] = field(default_factory=list)
    #: The file ends without a newline: its last line was cut short (the next append starts a new line).
    torn_tail: bool = False
    #: Why the file could not be read at all (a folder in its place, no permission); "" when it was read.
    unreadable: str = ""

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` in the file (0 when none): a restarted run goes on from there."""
        return max((int(r["seq"]) for r in self.records if isinstance(r.get("seq"), int)), default=0)

    def damage_note(self, path: str | Path) -> str:
        """One line naming the damaged lines, or why the file could not be read ("" when neither)."""
        if self.unreadable:
            return f"{path}: cannot read the decision log ({self.unreadable})"
        if not self.damaged:
            return ""
        where = ", ".join(str(n) for n, _ in self.damaged[:5]) + (" ..." if len(self.damaged) > 5 else "")
        return (f"{path}: {len(self.damaged)} damaged line{'s' if len(self.damaged) != 1 else ''} skipped "
                f"(line {where}; a write cut short, e.g. by a kill)")


def read_log(path: str | Path) -> LogRead:
    """Parse a decisions file, keeping every good record and noting each line that is not one."""
    try:
        raw = Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return LogRead([])
    except OSError as exc:  # a folder in its place, no permission: say so, never a traceback
        return LogRead([], unreadable=exc.strerror or type(exc).__name__)
    out: list[dict[str, Any]] = []
    damaged: list[tuple[int, str]] = []
    for i, line in enumerate(raw.decode("utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            damaged.append((i, line[:60]))
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            damaged.append((i, line[:60]))
    return LogRead(out, damaged, torn_tail=bool(raw) and not raw.endswith(b"\n"))


class DecisionLog:
    """Appends records to ``path`` (JSON lines) and keeps the last ``cap`` in memory.

    A restart in the same folder goes on where the file ends: :attr:`last_seq` is the highest ``seq``
    already written (the loop numbers on from it), a last line cut short by a kill is closed with a
    newline before the first new record (so no good record is glued onto it), and every record names
    its run (``run_id``). ``context`` (what ``explain --replay`` needs and the run does not change:
    profile, tuning) is merged into each record's ``replay`` field.
    """

    def __init__(self, path: str | Path | None, cap: int = 200, run_id: str | None = None,
                 context: dict[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.history: deque[DecisionRecord] = deque(maxlen=cap)
        self.run_id = run_id if run_id is not None else new_run_id()
        self.context = dict(context or {})
        self.last_seq = 0
        self._torn = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            found = read_log(self.path)
            self.last_seq = found.last_seq
            self._torn = found.torn_tail
            if found.damaged:
                log.warning("%s", found.damage_note(self.path))

    #: Why the last append failed ("" after a good one). A full disk or an unwritable run folder
    #: loses records on disk, never the loop: the capped history in memory still has them.
    write_error: str = ""

    def append(self, record: DecisionRecord) -> None:
        if not record.run_id or self.context:
            record = replace(record, run_id=record.run_id or self.run_id,
                             replay={**self.context, **(record.replay or {})} if self.context else record.replay)
        self.history.append(record)
        if self.path is not None:
            try:
                with self.path.open("a", encoding="utf-8") as fh:
                    # One write per record, a newline first when the file ends in a torn line.
                    fh.write(("\n" if self._torn else "") + json.dumps(record.as_dict(), default=str) + "\n")
                self._torn = False
            except OSError as exc:
                self._torn = True  # part of the line may be on disk: the next record starts a new one
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
    """Parse a decisions file (skipping damaged lines: :func:`read_log` names them); the ``last`` N records."""
    out = read_log(path).records
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
                    true_peak_rps: float | None = None,
                    explanation: dict[str, Any] | None = None) -> DecisionRecord:
    """The one way a decision becomes a :class:`DecisionRecord`, live (:mod:`infadapter.adapter.loop`) and
    simulated (:mod:`infadapter.sim.simulation`): the same fields, rounding and reason words
    (:func:`infadapter.core.control.reason`) in both. ``explanation``: the live loop's
    :func:`infadapter.core.explain.decision_fields` (the simulator computes none)."""
    return DecisionRecord(
        seq=seq, time_s=time_s, trigger=trigger, policy=policy,
        observed_rps=round(observed.rate_rps, 3), forecast_rps=round(forecast_rps, 3),
        history_len=len(observed.history), p99_ms=p99_ms, monitor_source=monitor_source,
        plan_before=before.as_dict() if before is not None else None, plan_after=decision.plan.as_dict(),
        serving=serving.as_dict() if serving is not None else None, objective=decision.plan.objective,
        solver=decision.solver, solve_s=round(decision.solve_s, 6),
        reason=control.reason(trigger, decision.reason, degraded), diff=change.summary(), actions=tuple(actions),
        apply_ok=apply_ok, apply_error=apply_error, timings_s=timings_s if timings_s is not None else {},
        true_peak_rps=round(true_peak_rps, 3) if true_peak_rps is not None else None, **(explanation or {}))
