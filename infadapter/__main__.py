"""The infadapter command line, assembled once for every way it is started.

``python cli.py`` (a checkout), the installed ``infadapter`` command (pyproject.toml's
``[project.scripts]``) and ``python -m infadapter`` all run :func:`run` here, so they are the same
program. Every flag also reads an ``INFADAPTER_<FLAG>`` environment variable. Known errors print one
line and exit with a documented code (2 bad input, 3 infeasible, 4 backend unavailable); ``-vv``
shows tracebacks.
"""

from __future__ import annotations

import importlib
import sys

import click

from infadapter import version
from infadapter.errors import InfAdapterError


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``: the version is looked up only when asked (click's own option needs it up front)."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"infadapter, version {version()}")
    ctx.exit()


# (module, attribute) of each command; modules are imported on demand so `plan` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("infadapter.commands.plan", "plan"),
    "profile": ("infadapter.commands.profile", "profile"),
    "simulate": ("infadapter.commands.simulate", "simulate"),
    "forecast": ("infadapter.commands.forecast", "forecast"),
    "build-models": ("infadapter.commands.serving", "build_models"),
    "serve-model": ("infadapter.commands.serving", "serve_model"),
    "dispatch": ("infadapter.commands.traffic", "dispatch"),
    "load": ("infadapter.commands.traffic", "load"),
    "adapt": ("infadapter.commands.adapt", "adapt"),
    "status": ("infadapter.commands.adapt", "status"),
    "explain": ("infadapter.commands.explain", "explain"),
    "experiment": ("infadapter.commands.adapt", "experiment"),
    "render": ("infadapter.commands.render", "render"),
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        try:
            module = importlib.import_module(target[0])
        except ModuleNotFoundError as exc:
            if exc.name == target[0]:
                return None  # that part of the product is not built yet
            raise
        return getattr(module, target[1], None)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "INFADAPTER"},
    epilog="Examples:\n\n  python cli.py plan --load 120\n\n  python cli.py simulate --window paper --policy all",
)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.option("-v", "--verbose", count=True, help="More diagnostics (-vv: tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Accuracy-aware, SLO-driven adaptation of ML inference model variants."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = -1 if quiet else verbose


def run() -> int:
    """Entry point: map known errors to one line on stderr and their exit code."""
    verbose = sys.argv.count("-vv") * 2 + sys.argv.count("-v")
    try:
        rc = main.main(standalone_mode=False)
    except InfAdapterError as exc:
        if verbose >= 2:
            raise
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except SystemExit as exc:  # click's --help/--version
        return int(exc.code or 0)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(run())
