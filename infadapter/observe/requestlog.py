"""The load generator's request log (``requests.csv``): its columns and the one reader of it.

The load generator (:mod:`infadapter.observe.loadgen`) writes one row per request it was due to send.
Every reader of the file (``explain --cores``, the run plots, the experiment's simulated side,
``simulate --arrivals``) reads it through :func:`read`, so a row cut short by a kill mid-write is
skipped the same way everywhere and the rest of the file still counts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infadapter.core import slo

#: The file's name in a run folder.
REQUESTS_FILE = "requests.csv"
#: ``service``: the service a request was sent to ("" for one service); last, so older readers read on.
CSV_COLUMNS = ("index", "scheduled_s", "sent_s", "sent_unix", "latency_ms", "status", "outcome", "variant", "error",
               "service")


@dataclass(frozen=True)
class RequestLog:
    """The requests of a run, in the file's order (arrival order), one array element per request."""

    #: When each request was due, seconds from the start of the load (the schedule, not the send).
    scheduled_s: np.ndarray
    #: When it was sent, unix seconds.
    sent_unix: np.ndarray
    #: Its latency in ms; NaN where it got no answer.
    latency_ms: np.ndarray
    #: Answered well (the load generator's ``ok`` outcome).
    ok: np.ndarray
    variant: tuple[str, ...]
    service: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.sent_unix.size)

    def violated(self, slo_ms: float) -> np.ndarray:
        """Whether each request violated an SLO of ``slo_ms`` (:func:`infadapter.core.slo.violated`)."""
        return np.asarray(slo.violated(self.ok, np.nan_to_num(self.latency_ms, nan=np.inf), slo_ms), dtype=bool)

    def only(self, service: str) -> RequestLog:
        """The requests sent to one service."""
        keep = np.array([s == service for s in self.service], dtype=bool)
        idx = np.flatnonzero(keep)
        return RequestLog(self.scheduled_s[keep], self.sent_unix[keep], self.latency_ms[keep], self.ok[keep],
                          tuple(self.variant[i] for i in idx), tuple(self.service[i] for i in idx))


def _number(text: str | None) -> float:
    """A field as a float; NaN when it is empty or the file has no such column (a failure has no latency)."""
    return float(text) if text else float("nan")


def read(path: Path) -> RequestLog | None:
    """The request log at ``path``; None when there is no such file. Rows cut short (a kill mid-write) are
    skipped; a column the file lacks reads as NaN (numbers) or "" (names); OSError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    scheduled: list[float] = []
    sent: list[float] = []
    latency: list[float] = []
    ok: list[bool] = []
    variant: list[str] = []
    service: list[str] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if None in row.values():
                continue  # a row cut short (a kill mid-write): DictReader fills its missing fields with None
            try:
                s, t, lat = (_number(row.get(k)) for k in ("scheduled_s", "sent_unix", "latency_ms"))
            except ValueError:
                continue  # a number cut short
            scheduled.append(s)
            sent.append(t)
            latency.append(lat)
            ok.append(row.get("outcome") == "ok")
            variant.append(row.get("variant") or "")
            service.append(row.get("service") or "")
    return RequestLog(np.asarray(scheduled, dtype=float), np.asarray(sent, dtype=float),
                      np.asarray(latency, dtype=float), np.asarray(ok, dtype=bool), tuple(variant), tuple(service))
