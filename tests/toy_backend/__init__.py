"""A toy backend that lives in the test tree: one package and one registry line (see ``ENTRY``) make it a
backend of ``cli.py adapt``, ``status`` and the one runner, like the shipped ones. It keeps plans in memory
(a FAKE, named so: it stands for a backend that would start something real)."""

from __future__ import annotations

from infadapter.backends import BackendEntry

#: The one registry line (tests add it with ``monkeypatch.setitem(BACKENDS, "toy", ENTRY)``).
ENTRY = BackendEntry(backend="toy_backend.backend:ToyBackend", config="toy_backend.backend:ToyConfig",
                     options="toy_backend.options", setup="toy_backend.backend:ToySetup",
                     status="toy_backend.backend:ToyStatus", help="plans kept in memory (a test's toy)")
