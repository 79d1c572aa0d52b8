"""The adapter's run state on disk: one JSON file, written atomically.

``status`` in another shell and a restarted adapter read it. It names the processes that run
(dispatcher, model servers with pid, port, cores, cgroup; Prometheus), the plan serving now, the last
decision and the monitor's source. Writes go to a temporary file in the same folder, are flushed and
then renamed over the old file with :func:`os.replace`, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from infadapter.errors import note_write

log = logging.getLogger("infadapter.adapter.state")

STATE_FILE = "state.json"
DECISIONS_FILE = "decisions.jsonl"


def state_path(run_dir: str | Path) -> Path:
    """The state file inside a run folder."""
    return Path(run_dir) / STATE_FILE


def write_state(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file + fsync + os.replace)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=False, default=_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The state written last, or None when there is none (or it cannot be parsed)."""
    return read_state_checked(path)[0]


def read_state_checked(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """(the state, "") when there is one; (None, "") when there is none; (None, why) when it is corrupt.

    Writes are atomic, so a corrupt file is not a kill mid-write but a disk fault or a hand edit:
    ``status`` must say so instead of "no adapter state".
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None, ""
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{p} is unreadable ({getattr(exc, 'strerror', None) or exc})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (f"{p} is corrupt (line {exc.lineno} column {exc.colno}: {exc.msg}); "
                      "move it away, then start adapt again")
    if not isinstance(data, dict):
        return None, (f"{p} is corrupt (a JSON {type(data).__name__}, not an object); "
                      "move it away, then start adapt again")
    return data, ""


def _default(obj: Any) -> Any:
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


class StateStore:
    """One state file shared by the loop and the backend: sections merged under a lock, written atomically."""

    def __init__(self, path: str | Path, initial: dict[str, Any] | None = None) -> None:
        import threading

        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, Any] = dict(initial or {})

    #: Why the last write failed ("" after a good one): a full disk or an unwritable run folder
    #: must not stop the service, so the state stays in memory and the next update writes it all.
    write_error: str = ""

    def update(self, **sections: Any) -> None:
        """Set top-level sections and write the whole file (a failed write is logged, not raised)."""
        with self._lock:
            self._data.update(sections)
            try:
                write_state(self.path, self._data)
            except OSError as exc:
                error = f"cannot write {self.path} ({exc.strerror or exc}); state kept in memory, serving goes on"
            else:
                error = ""
            self.write_error = note_write(log, self.write_error, error, self.path)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def data(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._data)
