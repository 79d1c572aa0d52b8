"""Known errors and their documented exit codes.

The CLI prints a known error as one line and exits with its code; anything else is a bug and gets a
traceback only with ``-vv``.
"""

from __future__ import annotations


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
