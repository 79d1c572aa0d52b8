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
  python cli.py explain --run-dir runs/experiment/infadapter --cores

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
@click.option("--cores", "cores", is_flag=True,
              help="Where the cores went: each plan against the load that came (the run's requests.csv), "
                   "and what each layer of headroom cost in cores and accuracy.")
@json_option
def explain(run_dir: Path, seq: int | None, replay: bool, cores: bool, as_json: bool) -> None:
    """Why each decision chose its plan: the binding constraints and the runner-up (see docs/explain.md)."""
    from infadapter.adapter import explain as ex

    found, path = ex.load_run(run_dir)
    if found.damaged:
        err_console().print(f"[yellow]warning:[/] {found.damage_note(path)}", highlight=False)
    records = found.records
    if cores:
        if seq is not None or replay:
            raise BadInput("--cores: breaks down the whole run; drop --decision and --replay")
        _cores(run_dir, records, as_json)
        return
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
    # Several services: the objective's accuracy term adds each service's weight x accuracy (core.explain).
    acc = "weight x accuracy" if ex.services_view(rec) else "accuracy"
    for col in ("plan", acc, "cost", "transition", "objective"):
        t.add_column(col)
    for row in ex.terms_rows(rec):
        t.add_row(*row)
    con.print(t)


def _cores(run_dir: Path, records: list[dict], as_json: bool) -> None:
    """``explain --cores``: the ladder of :mod:`infadapter.adapter.cores` as a table (or JSON)."""
    from infadapter.adapter import cores as cw
    from infadapter.adapter.explain import replay_profile

    slo_ms = None
    for rec in records:
        ctx_rec = rec.get("replay") or {}
        if "profile" in ctx_rec:
            prof = replay_profile(ctx_rec, {})
            if not isinstance(prof, str):  # several services: each request at its own service's SLO
                slo_ms = {x.name: x.slo_ms for x in prof.services} if prof.services else prof.slo_ms
                break
    if slo_ms is None:
        raise BadInput("--cores: no decision of this run names a readable profile (its SLO judges the requests)")
    report = cw.where_cores_went(records, cw.read_requests(run_dir, slo_ms))
    if as_json:
        print_json(report.as_dict())
        return
    from rich.table import Table

    con = out_console()
    con.print(f"{report.decisions} decisions, {report.requests} requests ({report.late_share:.2%} late or failed); "
              f"per second on average: planned for {report.mean_target_rps:.1f}, the plans served "
              f"{report.mean_planned_capacity_rps:.1f} at the SLO, {report.mean_arrived_rps:.1f} arrived "
              f"(busiest second {report.mean_busiest_second_rps:.1f})", highlight=False)
    t = Table(title="Where the cores went (cores: mean over time; accuracy: over the requests; each step: what that "
                    "layer cost)")
    for col in ("plan", "mean cores", "accuracy", "cores step", "accuracy step"):
        t.add_column(col)
    for row in report.as_dict()["layers"]:
        t.add_row(row["layer"], f"{row['mean_cores']:.3f}", f"{row['accuracy']:.2%}",
                  "" if row["cores_step"] is None else f"{row['cores_step']:+.3f}",
                  "" if row["accuracy_step"] is None else f"{100 * row['accuracy_step']:+.2f} pt")
    con.print(t)
    if report.services:
        st = Table(title="Per service: its part of each row's plans, its requests at its own SLO")
        for col in ("service", "plan", "mean cores", "accuracy", "cores step", "accuracy step"):
            st.add_column(col)
        for svc in report.as_dict()["services"]:
            for i, row in enumerate(svc["layers"]):
                label = f"{svc['name']} ({svc['requests']} req., {svc['late_share']:.2%} late)" if i == 0 else ""
                st.add_row(label, row["layer"], f"{row['mean_cores']:.3f}", f"{row['accuracy']:.2%}",
                           "" if row["cores_step"] is None else f"{row['cores_step']:+.3f}",
                           "" if row["accuracy_step"] is None else f"{100 * row['accuracy_step']:+.2f} pt")
        con.print(st)
    v = Table(title="What each variant got while it served (per-second arrivals against its planned capacity)")
    for col in ("variant", "cores", "capacity", "seconds", "p95 /s", "max /s", "s > cap.", "late"):
        v.add_column(col)
    for u in report.as_dict()["variants"]:
        v.add_row(u["variant"], f"{u['cores']:g}", f"{u['capacity_rps']:.1f}", str(u["seconds"]),
                  str(u["p95_second_rps"]), str(u["busiest_second_rps"]), str(u["seconds_over_capacity"]),
                  f"{u['late_share']:.2%}")
    con.print(v)
    for note in report.notes:
        con.print(f"note: {note}", highlight=False)
