#!/usr/bin/env python3
"""infadapter command line: adapt, status, plan, render, simulate, profile, and friends.

The commands are assembled in ``infadapter/__main__.py``, shared with the installed ``infadapter``
command and ``python -m infadapter``; this script runs them from a checkout (``python cli.py ...``).
Every flag also reads an ``INFADAPTER_<FLAG>`` environment variable. Known errors print one line and
exit with a documented code (2 bad input, 3 infeasible, 4 backend unavailable); ``-vv`` shows
tracebacks.
"""

from __future__ import annotations

import sys

from infadapter.__main__ import COMMANDS, LazyGroup, main, run

__all__ = ["COMMANDS", "LazyGroup", "main", "run"]

if __name__ == "__main__":
    sys.exit(run())
