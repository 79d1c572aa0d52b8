"""Decision records: every decision the loop takes, with its inputs and why.

Each record goes to a JSON-lines file (one object a line, appended and flushed) and to a capped
in-memory history that ``status`` and the live view read.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
