"""The README's promises: its first commands are the set-up scripts, and .ci/run runs the test one."""

from __future__ import annotations

import json
import re
import shlex

from tests.cli_helpers import ROOT, run_cli

README = (ROOT / "README.md").read_text()


def test_first_commands_are_run_and_test():
    blocks = re.findall(r"```\n(.*?)```", README, flags=re.S)
    assert blocks[0].strip() == "bash scripts/run.sh"
    assert blocks[1].strip() == "bash scripts/test.sh"


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash scripts/test.sh" in ci


def test_plan_examples_in_the_readme_run():
    """Every `python cli.py plan|profile show` line in the README runs and exits as documented."""
    # Pipelines write files elsewhere (render has its own tests); single commands run here.
    lines = [ln.strip() for ln in README.splitlines()
             if ln.strip().startswith("python cli.py plan ") and not set("|><") & set(ln)]
    assert lines, "the README shows cli.py plan"
    for line in lines:
        args = shlex.split(line)[2:]
        r = run_cli(*args)
        assert r.returncode in (0, 3), (line, r.stderr)
        if "--json" in args:
            json.loads(r.stdout)
