"""The docs cannot rot: every `python cli.py ...` example in README.md and docs/*.md runs.

Examples are taken from fenced code blocks (``\\`` continuations joined, ``$ `` prompts and ``#``
comments dropped; lines after a command up to the next one are its shown output) and from inline
backticks. Each example is one of:

- **a synopsis** (placeholders such as ``P``, ``DIR``, ``[--json]``, ``last|ewma``): the command exists
  and every flag it names is in that command's ``--help``;
- **run here**: commands that need no servers or cluster (plan, profile show, render, simulate,
  forecast evaluate, status and explain of a run folder, adapt --backend dry-run, --help), run in a sandbox folder
  (``cwd`` with links to the repository's inputs, so relative outputs such as ``runs/dry`` stay in it)
  with a timeout, in the order of their page; the exit code must be 0, or 2 when the shown output is an
  ``error:`` line (and that line must match);
- **run elsewhere**: the exact command (whitespace-normalized, or its arguments after
  ``python cli.py``) appears in another test file under tests/ that runs it (servers, clusters,
  long runs).

Anything else fails, naming the page and line: make the example smaller (``--duration 20``,
``--window 1300920:300``) or run it, verbatim, in the test of the feature.

Other shell commands are held to the same rule where they are the subject of the page: every command
in CONTRIBUTING.md's code blocks, and every ``infadapter ...``, ``python -m infadapter``, ``pip install``
and ``pipx install`` line in any page's code blocks. Each is run here (``SHELL_RUN_HERE``: cheap, in the
repository, ``.venv/bin/`` meaning this interpreter's folder), appears verbatim as a string in another
test file that runs it, or is listed in ``SHELL_NOT_RUN`` with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT, run_cli

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

README = ROOT / "README.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
PAGES = [README, CONTRIBUTING, *sorted((ROOT / "docs").glob("*.md"))]
#: Seconds one example may run here; longer ones must shrink (or be run verbatim by the feature's test).
EXAMPLE_TIMEOUT_S = 120
#: Commands (first words after ``python cli.py``) that this test runs itself.
RUN_HERE = {("plan",), ("profile", "show"), ("render",), ("simulate",), ("forecast", "evaluate"), ("explain",)}
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:[.,][A-Za-z0-9_.,]*)?|P\d.*)$")


@dataclass(frozen=True)
class Example:
    page: str  # path relative to the repository root
    line: int
    command: str  # whitespace-normalized, from "python cli.py" on
    shown: str = ""  # the output the page shows under it (fenced blocks only)
    inline: bool = False  # in backticks within a sentence, not a code block

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def args(self) -> list[str]:
        return shlex.split(self.command)[2:]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _commands_in(text: str) -> list[str]:
    """The `python cli.py ...` commands of one shell line: && chains split, pipelines kept whole.

    ``python cli.py ...`` alone (a sentence about all commands) is no example.
    """
    out = []
    for part in text.split("&&"):
        idx = part.find("python cli.py")
        if idx >= 0:
            cmd = _norm(part[idx:])
            if cmd.split()[2:3] not in ([], ["..."]):
                out.append(cmd)
    return out


def extract(path: Path) -> list[Example]:
    rel = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    i = 0
    para: list[tuple[int, str]] = []

    def flush_para() -> None:
        if not para:
            return
        start = para[0][0]
        text = "\n".join(t for _, t in para)
        for m in re.finditer(r"`([^`]+)`", text):
            span = m.group(1).replace("\n", " ")
            if "python cli.py" not in span:
                continue
            line = start + text[: m.start()].count("\n")
            out.extend(Example(rel, line, cmd, inline=True) for cmd in _commands_in(span))
        para.clear()

    while i < len(lines):
        ln = lines[i]
        if ln.lstrip().startswith("```"):
            flush_para()
            i += 1
            block: list[tuple[int, str]] = []
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                block.append((i + 1, lines[i]))
                i += 1
            i += 1
            out.extend(_block_examples(rel, block))
            continue
        if not ln.strip():
            flush_para()
        else:
            para.append((i + 1, ln))
        i += 1
    flush_para()
    return out


def _block_examples(rel: str, block: list[tuple[int, str]]) -> list[Example]:
    """Commands of a fenced block, each with the lines shown under it."""
    items: list[tuple[int, str, list[str]]] = []
    j = 0
    while j < len(block):
        no, text = block[j]
        s = text.strip()
        if s.startswith("$ "):
            s = s[2:]
        if s.startswith("python cli.py") or s.startswith("time python cli.py"):
            full = s
            while full.endswith("\\") and j + 1 < len(block):
                j += 1
                full = full[:-1] + " " + block[j][1].strip()
            for cmd in _commands_in(_strip_comment(full)):
                items.append((no, cmd, []))
        elif items and s:
            items[-1][2].append(text)
        elif not s and items:
            items[-1][2].append("")
        j += 1
    return [Example(rel, no, cmd, "\n".join(shown).strip()) for no, cmd, shown in items]


def _strip_comment(line: str) -> str:
    """Drop a shell comment (a `#` after whitespace, outside quotes)."""
    quote = ""
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line


def all_examples() -> list[Example]:
    return [ex for page in PAGES if page.exists() for ex in extract(page)]


# -- classification --------------------------------------------------------------------------------
def is_synopsis(ex: Example) -> bool:
    """A form with placeholders, or a sentence naming a command (`python cli.py build-models`)."""
    cmd = ex.command
    if ex.inline and len(ex.args) == len(command_path(ex.args)):
        return True
    if "..." in cmd or "[" in cmd or "<" in cmd:
        return True
    for tok in ex.command.split()[2:]:
        value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
        if value.startswith("-"):
            continue
        if "|" in value and value != "|":
            return True
        if PLACEHOLDER.match(value) and value not in {"&&"}:
            return True
    return False


def command_path(args: list[str]) -> tuple[str, ...]:
    """The command words (``profile show``) of an argument list, skipping global flags."""
    words = [a for a in args if not a.startswith("-")]
    groups = {"profile", "forecast"}
    if words and words[0] in groups and len(words) > 1:
        return tuple(words[:2])
    return tuple(words[:1])


@cache
def _tests_text() -> str:
    """Every other test file, whitespace-normalized, implicitly concatenated string literals joined."""
    me = Path(__file__).name
    text = "\n".join(_norm(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "tests").glob("*.py"))
                      if p.name != me)
    return _norm(text.replace('" "', "").replace("' '", ""))


def run_elsewhere(ex: Example) -> bool:
    """The command, as a whole string literal (or the start of one), is in another test file."""
    text = _tests_text()
    rest = ex.command.removeprefix("python cli.py ").strip()
    for needle in (ex.command, rest if len(rest.split()) >= 2 else None):
        if needle and re.search(r"[\"']" + re.escape(needle) + r"(?=[\"' ])", text):
            return True
    return False


def runs_here(ex: Example) -> bool:
    segments = [s.strip() for s in ex.command.split("|")]
    for seg in segments:
        if not seg.startswith("python cli.py"):
            return False
        args = shlex.split(seg)[2:]
        path = command_path(args)
        if "--help" in args or "-h" in args:
            continue
        if path == ("adapt",) and _opt(args, "--backend") == "dry-run":
            continue
        if path == ("status",) and _opt(args, "--backend") in (None, "local"):
            continue
        if path not in RUN_HERE:
            return False
    return True


def _opt(args: list[str], flag: str) -> str | None:
    for k, a in enumerate(args):
        if a == flag and k + 1 < len(args):
            return args[k + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


EXAMPLES = all_examples()


# -- sandbox ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder for the examples: the repository's inputs linked in, the files examples name."""
    box = tmp_path_factory.mktemp("docs")
    for name in ("cli.py", "infadapter", "profiles", "templates", "inventory", "playbooks", "roles", "tests"):
        (box / name).symlink_to(ROOT / name)
    shared = ROOT.parent / "shared"
    if shared.exists() and not (box.parent / "shared").exists():
        (box.parent / "shared").symlink_to(shared)
    bin_dir = box / ".bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # `python` in the examples is this interpreter (a venv's, when run in one)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    # Files the examples refer to, as a user would have them.
    plan = run_cli("plan", "--load", "120", "--json")
    (box / "plan.json").write_text(plan.stdout)
    (box / "k8s.yaml").write_text("namespace: ml-serving\n")
    import yaml

    bad = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    bad["variants"][2]["accuracy"] = 76.13  # docs/core.md's error example: a percentage, not a fraction
    (box / "bad.yaml").write_text(yaml.safe_dump(bad))
    return box


_RESULTS: dict[str, subprocess.CompletedProcess[str]] = {}


def _run(ex: Example, box: Path) -> subprocess.CompletedProcess[str]:
    """Run the example in the sandbox; the same command on two pages runs once."""
    if ex.command not in _RESULTS:
        env = {**os.environ, "COLUMNS": "200", "PATH": f"{box / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        _RESULTS[ex.command] = subprocess.run(["bash", "-o", "pipefail", "-c", ex.command], cwd=box, env=env,
                                              capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    return _RESULTS[ex.command]


@cache
def _help(path: tuple[str, ...]) -> tuple[int, str]:
    r = run_cli(*path, "--help")
    return r.returncode, r.stdout


def _check_synopsis(ex: Example) -> list[str]:
    problems = []
    for seg in [ex.command]:  # in a synopsis `|` separates alternatives, not piped commands
        plain = seg
        for ch in "[]()|":
            plain = plain.replace(ch, " ")
        try:
            tokens = shlex.split(plain)[2:]
        except ValueError:
            tokens = plain.split()[2:]
        path = command_path([t for t in tokens if not t.startswith("-") and not PLACEHOLDER.match(t)][:2])
        rc, text = _help(path)
        if rc != 0:
            problems.append(f"`python cli.py {' '.join(path)} --help` exits {rc}")
            continue
        for tok in tokens:
            if tok.startswith("--") and len(tok) > 2:
                flag = tok.split("=", 1)[0].rstrip(".,;:")
                if flag not in text:
                    problems.append(f"{flag} is not an option of `{' '.join(path)}`")
    return problems


# -- the tests -------------------------------------------------------------------------------------
def test_examples_were_found() -> None:
    assert len(EXAMPLES) >= 20, [e.id for e in EXAMPLES]
    assert any(e.page == "README.md" for e in EXAMPLES)


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example(ex: Example, sandbox: Path) -> None:
    if is_synopsis(ex):
        problems = _check_synopsis(ex)
        assert not problems, f"{ex.id}: `{ex.command}`: " + "; ".join(problems)
        return
    if run_elsewhere(ex):
        return
    assert runs_here(ex), (
        f"{ex.id}: `{ex.command}` is neither cheap enough to run here nor run verbatim by another test "
        "under tests/: make the example smaller, or run it (the same string) in the feature's test")
    r = _run(ex, sandbox)
    expect_error = ex.shown.startswith("error:")
    if expect_error:
        assert r.returncode == 2, f"{ex.id}: `{ex.command}` exits {r.returncode}, the page shows an error\n{r.stderr}"
        shown = ex.shown.splitlines()[0]
        assert _norm(shown) in _norm(r.stderr), f"{ex.id}: shows {shown!r}, prints {r.stderr.strip()!r}"
        return
    assert r.returncode == 0, f"{ex.id}: `{ex.command}` exits {r.returncode}\n{r.stderr[-2000:]}"
    if "--json" in ex.command.split("|")[-1].split():
        printed = json.loads(r.stdout)
        if ex.shown.startswith("{"):  # the page shows the object: the same keys (values may move)
            shown = json.loads(ex.shown)
            assert set(shown) <= set(printed), f"{ex.id}: shown keys {sorted(set(shown) - set(printed))} not printed"


# -- other shell commands --------------------------------------------------------------------------
#: Run by test_shell_example in the repository root.
SHELL_RUN_HERE = {
    ".venv/bin/python -m pytest -q tests/test_plan.py",
    '.venv/bin/python -m pytest -q "tests/test_solver.py::test_paper_burst_mixes_variants"',
    ".venv/bin/python -m pytest -q tests/test_policies.py -k vpa",
    ".venv/bin/ruff check .",
}
#: Not run by any test, and why.
SHELL_NOT_RUN = {
    "bash scripts/setup.sh": "scripts/test.sh runs it first, so every CI run does",
    "bash scripts/test.sh": "the whole suite: CI runs exactly this (.ci/run; "
                            "test_ci_runs_exactly_the_readme_test_command)",
    '.venv/bin/python -m pytest -m "not slow"': "the suite less its slow tests: a test cannot run the suite it is in",
    "bash scripts/lock.sh --upgrade-package rich": "moves a pin to a newer release: a change to commit, not a check "
                                                   "(the plain refresh runs in tests/test_package.py)",
    "bash scripts/lock.sh --upgrade": "moves every pin: as above",
    "pip install .": "downloads the dependencies from PyPI; tests/test_package.py builds the same wheel "
                     "(pip wheel .) and installs it beside the locked dependencies",
    "pipx install .": "as pip install . (pipx builds the same wheel into its own venv)",
}
_PACKAGE_COMMAND = re.compile(r"^(infadapter |python -m infadapter|pipx? install )")


def shell_examples() -> list[tuple[str, int, str]]:
    """(page, line, command) of the shell commands held to the rule (see the module doc)."""
    out = []
    for page in PAGES:
        if not page.exists():
            continue
        rel = str(page.relative_to(ROOT))
        in_block = shown = False
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_block, shown = not in_block, False
                continue
            cmd = _norm(_strip_comment(line.strip().removeprefix("$ ")))
            if not in_block or not cmd:
                continue
            if "python cli.py" in cmd:
                shown = True  # the lines after it are its shown output (e.g. a row labelled "infadapter alpha=...")
                continue
            if page == CONTRIBUTING or (_PACKAGE_COMMAND.match(cmd) and not shown):
                out.append((rel, no, cmd))
    return out


SHELL_EXAMPLES = shell_examples()


def test_shell_examples_were_found() -> None:
    cmds = {c for _, _, c in SHELL_EXAMPLES}
    assert {"bash scripts/test.sh", "bash scripts/lock.sh", "infadapter --version"} <= cmds, sorted(cmds)


@pytest.mark.parametrize("page,line,command", SHELL_EXAMPLES, ids=[f"{p}:{n}" for p, n, _ in SHELL_EXAMPLES])
def test_shell_example(page: str, line: int, command: str) -> None:
    if command in SHELL_NOT_RUN:
        return
    if re.search(r"[\"']" + re.escape(command) + r"[\"']", _tests_text()):
        return  # run verbatim by the test of its feature
    assert command in SHELL_RUN_HERE, (
        f"{page}:{line}: `{command}` is not run by any test: run it verbatim in the test of its feature, add it "
        "to SHELL_RUN_HERE (cheap) or to SHELL_NOT_RUN with the reason")
    run = command.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    r = subprocess.run(["bash", "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    assert r.returncode == 0, f"{page}:{line}: `{command}` exits {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"


def test_shell_lists_name_only_shown_commands() -> None:
    """An entry of SHELL_RUN_HERE or SHELL_NOT_RUN that no page shows any more is left over."""
    shown = {c for _, _, c in SHELL_EXAMPLES}
    assert not (SHELL_RUN_HERE | set(SHELL_NOT_RUN)) - shown


# -- the README's own promises ---------------------------------------------------------------------
README_TEXT = README.read_text(encoding="utf-8")


def test_first_commands_are_run_and_test() -> None:
    blocks = re.findall(r"```\n(.*?)```", README_TEXT, flags=re.S)
    assert blocks[0].strip() == "bash scripts/run.sh"
    assert blocks[1].strip() == "bash scripts/test.sh"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_a_page_with_results_and_a_plot() -> None:
    assert len(README_TEXT.encode()) <= 20_000, "README.md is about a page; the reference lives in docs/"
    assert "\n## Results\n" in README_TEXT
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README_TEXT):
        p = ROOT / img
        assert p.exists() and p.stat().st_size < 150_000, img


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_resolve(page: Path) -> None:
    """Relative links point at files that exist, and their #anchors at headings of those files."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md":
            heads = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", dest.read_text(), flags=re.S), flags=re.M)
            if anchor not in {_anchor(h) for h in heads}:
                bad.append(f"{target}: no heading with that anchor")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_no_readme_generator_is_left() -> None:
    assert not (ROOT / "scripts" / "build_readme.py").exists()
