"""Known errors and their documented exit codes.

The CLI prints a known error as one line and exits with its code; anything else is a bug and gets a
traceback only with ``-vv``.
"""

from __future__ import annotations

import logging


class InfAdapterError(Exception):
    """Base class of errors the user can act on."""

    exit_code = 1


class BadInput(InfAdapterError):
    """Invalid file, flag or value: the message names the field and the fix."""

    exit_code = 2


class Infeasible(InfAdapterError):
    """The load cannot be served within the budget."""

    exit_code = 3


class BackendUnavailable(InfAdapterError):
    """A backend (cluster, server, Prometheus) cannot be reached."""

    exit_code = 4


def note_write(log: logging.Logger, previous: str, error: str, path: object) -> str:
    """The write error to keep after a write of ``path`` (``error`` "" when it succeeded): a new error
    is logged once, not at every check, and a file writable again says so."""
    if error and error != previous:
        log.error("%s", error)
    elif not error and previous:
        log.warning("%s is writable again", path)
    return error
