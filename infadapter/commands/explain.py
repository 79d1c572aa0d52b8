"""``cli.py explain``: why a run's decisions chose their plans, and an offline replay of each."""

from __future__ import annotations

from pathlib import Path

import click

from infadapter.commands.common import err_console, json_option, out_console, print_json
from infadapter.errors import BadInput

EXAMPLES = """
\b
Examples:
  python cli.py explain --run-dir runs/dry-run
  python cli.py explain --run-dir runs/dry-run --decision 3
  python cli.py explain --run-dir runs/dry-run --json
  python cli.py explain --run-dir runs/dry-run --replay

\b
Exit codes: 0 done (with --replay: every decision reproduced), 1 --replay found
decisions that do not reproduce (or cannot be replayed), 2 bad input (no run
folder, no such decision).
"""


@click.command(epilog=EXAMPLES)
@click.option("--run-dir", type=click.Path(path_type=Path), required=True,
              help="The run folder adapt wrote (it holds decisions.jsonl).")
@click.option("--decision", "seq", type=int, default=None,
              help="One decision (its seq number): a paragraph and a table. Default: the run's story.")
@click.option("--replay", is_flag=True, help="Re-solve every decision from its record and compare the plans.")
@json_option
def explain(run_dir: Path, seq: int | None, replay: bool, as_json: bool) -> None:
    """Why each decision chose its plan: the binding constraints and the runner-up (see docs/explain.md)."""
    from infadapter.adapter import explain as ex

    found, path = ex.load_run(run_dir)
    if found.damaged:
        err_console().print(f"[yellow]warning:[/] {found.damage_note(path)}", highlight=False)
    records = found.records
    if seq is not None:
        records = [r for r in records if r.get("seq") == seq]
        if not records:
            seqs = [r.get("seq") for r in found.records]
            span = f"{min(seqs)}..{max(seqs)}" if seqs else "none"
            raise BadInput(f"--decision: no decision {seq} in {path} (seq numbers: {span})")
        records = records[-1:]  # one log of an old, unnumbered-across-restarts run may repeat a seq
    if replay:
        report = ex.replay(records)
        if as_json:
            print_json(report.as_dict())
        else:
            con = out_console()
            for d in report.differ:
                con.print(f"decision #{d['seq']} does not reproduce: {d['difference']}", highlight=False)
            for d in report.skipped:
                con.print(f"decision #{d['seq']} not replayed: {d['why']}", highlight=False)
            con.print(f"{report.reproduced} of {report.total} decisions reproduced"
                      + (" (every decision)" if report.ok else ""), highlight=False)
        if not report.ok:
            raise click.exceptions.Exit(1)
        return
    if as_json:
        print_json([ex.structured(r) for r in ex.complete_runner_ups(records)])
        return
    con = out_console()
    if seq is None:
        for line in ex.story(records):
            con.print(line, highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    rec = ex.complete_runner_ups(records)[0]
    con.print(ex.paragraph(rec), highlight=False)
    t = Table()
    for col in ("plan", "accuracy", "cost", "transition", "objective"):
        t.add_column(col)
    for row in ex.terms_rows(rec):
        t.add_row(*row)
    con.print(t)
