"""Every command's --help ends with an Examples section, and the CLI has no broken command."""

from __future__ import annotations

import click
import pytest

import cli


def _commands() -> list[tuple[str, ...]]:
    ctx = click.Context(cli.main)
    out: list[tuple[str, ...]] = []
    for name in cli.main.list_commands(ctx):
        cmd = cli.main.get_command(ctx, name)
        out.append((name,))
        if isinstance(cmd, click.Group):
            out.extend((name, sub) for sub in cmd.list_commands(ctx))
    return out


def test_core_commands_are_registered():
    names = {c[0] for c in _commands()}
    assert {"plan", "profile"} <= names


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p))
def test_help_has_examples(path):
    from click.testing import CliRunner

    res = CliRunner().invoke(cli.main, [*path, "--help"], terminal_width=120)
    assert res.exit_code == 0, res.output
    assert "Examples:" in res.output
    tail = res.output[res.output.index("Examples:"):]
    assert "python cli.py " + path[0] in tail
