"""Each backend's own flags on ``adapt``, ``experiment`` and ``status``, read from the backend registry.

A backend declares its flags in its own ``options`` module (:data:`infadapter.backends.BACKENDS`); the
commands here never name one. :class:`BackendCommand` adds them to a command's parameters when it parses or
prints help (so a backend registered later, a test's toy one included, is there too) and lists each backend's
under its own heading; :func:`backend_flags` hands the chosen backend its own and refuses, in one line, a flag
of another backend given on the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click
from click.core import ParameterSource

from infadapter.backends import BACKENDS, backend_options
from infadapter.errors import BadInput


class BackendChoice(click.Choice):
    """``--backend``: the names registered in :data:`infadapter.backends.BACKENDS` when the flag is read."""

    def __init__(self) -> None:
        super().__init__(list(BACKENDS))

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(BACKENDS)

    @choices.setter
    def choices(self, _value: Any) -> None:
        """Fixed by the registry."""


def backend_option(help: str) -> Callable[[Any], Any]:
    """``--backend NAME`` (default local), one of the registered backends."""
    return click.option("--backend", type=BackendChoice(), default="local", show_default=True, help=help)


def backends_help() -> str:
    """The registered backends, one clause each ("local: ...; kubernetes: ...")."""
    return "; ".join(f"{k}: {e.help}" for k, e in BACKENDS.items())


class BackendCommand(click.Command):
    """A command whose flags include each backend's own (``adapt`` or ``status`` kind), under its heading.

    ``backends``: the backends whose flags it takes (None: every registered one; ``experiment``: local).
    """

    def __init__(self, *args: Any, backends: Sequence[str] | None = None, kind: str = "adapt", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backends = tuple(backends) if backends is not None else None
        self.kind = kind

    def backend_groups(self) -> dict[str, list[click.Option]]:
        """Backend name -> its own flags of this command's kind."""
        return {name: backend_options(name, self.kind) for name in (self.backends or tuple(BACKENDS))}

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params: list[click.Parameter] = list(self.params)
        seen = {p.name for p in params}
        for opts in self.backend_groups().values():
            for o in opts:  # a flag two backends share is one object in both lists: added once
                if o.name not in seen:
                    seen.add(o.name)
                    params.append(o)
        help_option = self.get_help_option(ctx)
        return [*params, help_option] if help_option is not None else params

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups = self.backend_groups()
        own = {o.name for opts in groups.values() for o in opts}
        shared = [r for p in self.get_params(ctx) if p.name not in own and (r := p.get_help_record(ctx))]
        if shared:
            with formatter.section("Options"):
                formatter.write_dl(shared)
        for name, opts in groups.items():
            records = [r for o in opts if (r := o.get_help_record(ctx))]
            if records:
                with formatter.section(f"--backend {name} options"):
                    formatter.write_dl(records)


def backend_flags(ctx: click.Context, backend: str, flags: dict[str, Any]) -> dict[str, Any]:
    """Take every backend's own flags out of ``flags`` (the command's keyword arguments) and return ``backend``'s.

    A flag of another backend given on the command line is a mistake: BadInput saying which backends take it.
    """
    cmd = ctx.command
    groups = cmd.backend_groups() if isinstance(cmd, BackendCommand) else {}
    takers: dict[str, list[str]] = {}
    flag_of: dict[str, str] = {}
    for name, opts in groups.items():
        for o in opts:
            takers.setdefault(str(o.name), []).append(name)
            flag_of[str(o.name)] = o.opts[0]
    own: dict[str, Any] = {}
    for param, names in takers.items():
        value = flags.pop(param, None)
        if backend in names:
            own[param] = value
        elif ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
            raise BadInput(f"{flag_of[param]}: only with --backend {' or '.join(names)}, not with --backend {backend}")
    return own
