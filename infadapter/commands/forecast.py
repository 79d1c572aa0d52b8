"""``cli.py forecast train|evaluate``: the learned forecaster and the forecasters' scores on a trace."""

from __future__ import annotations

import re
from pathlib import Path

import click

from infadapter.commands.common import json_option, out_console, print_json
from infadapter.errors import BadInput

TRAIN_EPILOG = """\b
Examples:
  python cli.py forecast train
  python cli.py forecast train --out models/forecaster.npz --json
  python cli.py forecast train --train-days 1-12 --calibration-days 13-14 --target-under 0.25
"""
EVAL_EPILOG = """\b
Examples:
  python cli.py forecast evaluate
  python cli.py forecast evaluate --days 15-21 --json
  python cli.py forecast evaluate --model models/forecaster.npz --forecasters last,ewma,ewma:20,learned
"""


def parse_days(text: str, field: str) -> tuple[int, int]:
    """``A-B`` (inclusive, 0-based like ``dayN``) -> (A, B + 1)."""
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m or int(m.group(1)) > int(m.group(2)):
        raise BadInput(f"{field}: expected FIRST-LAST day numbers like 1-14, got {text!r}")
    return int(m.group(1)), int(m.group(2)) + 1


@click.group(epilog="\b\nExamples:\n  python cli.py forecast train\n  python cli.py forecast evaluate")
def forecast() -> None:
    """Train and evaluate the forecasters (peak req/s of the next minute)."""


@forecast.command(epilog=TRAIN_EPILOG)
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="INFADAPTER_TRACE", help="Trace file (.tbz2 or text/CSV of req/s per second).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Model file [default: INFADAPTER_FORECAST_MODEL, else the committed profiles/forecaster.npz].")
@click.option("--train-days", default="1-12", show_default=True, help="Days to fit on (0-based, like dayN).")
@click.option("--calibration-days", default="13-14", show_default=True,
              help="Held-out days that calibrate the headroom factor.")
@click.option("--target-under", type=float, default=0.25, show_default=True,
              help="Share of calibration minutes allowed to be under-predicted.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def train(trace_path: Path | None, out_path: Path | None, train_days: str, calibration_days: str,
          target_under: float, seed: int, as_json: bool) -> None:
    """Fit the learned forecaster on days of the trace and save it (a numpy .npz, no pickle)."""
    from infadapter.core import forecast as fc
    from infadapter.observe.trace import load_trace

    cfg = fc.TrainConfig(parse_days(train_days, "--train-days"), parse_days(calibration_days, "--calibration-days"),
                         target_under, seed=seed)
    model = fc.train(load_trace(trace_path), cfg)
    try:
        path = model.save(out_path or fc.default_model_path())
    except OSError as exc:
        raise BadInput(f"--out: cannot write the model: {exc.strerror}") from None
    info = {"model_path": str(path), "factor": round(model.factor, 4), **model.meta}
    if as_json:
        print_json(info)
    else:
        out_console().print(f"saved {path}: headroom factor {model.factor:.3f}, "
                            f"{model.meta['train_samples']} training minutes", highlight=False)


@forecast.command(epilog=EVAL_EPILOG)
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="INFADAPTER_TRACE", help="Trace file (.tbz2 or text/CSV of req/s per second).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Learned model file [default: INFADAPTER_FORECAST_MODEL or the user cache].")
@click.option("--days", default="15-21", show_default=True,
              help="Days to score (0-based; the trace's last day, 21, is partial).")
@click.option("--forecasters", default="last,ewma,learned", show_default=True, help="Comma list of specs.")
@json_option
def evaluate(trace_path: Path | None, model_path: Path | None, days: str, forecasters: str, as_json: bool) -> None:
    """Score forecasters minute by minute: under-prediction rate and over-provisioning."""
    from rich.table import Table

    from infadapter.core import forecast as fc
    from infadapter.observe.trace import load_trace

    span = parse_days(days, "--days")
    models = [fc.make_forecaster(s.strip(), model_path) for s in forecasters.split(",") if s.strip()]
    if not models:
        raise BadInput(f"--forecasters: expected a comma list of {fc.FORECAST_HELP}")
    scores = fc.evaluate(load_trace(trace_path), models, span)
    if as_json:
        print_json({"days": days, "scores": [s.as_dict() for s in scores]})
        return
    table = Table(title=f"forecasters on days {days}: next-minute peak")
    for col in ("forecaster", "minutes", "under-predicted", "mean over-provisioning", "total provisioning"):
        table.add_column(col, justify="left" if col == "forecaster" else "right")
    for s in scores:
        table.add_row(s.name, str(s.minutes), f"{s.under_rate:.2%}", f"{s.over_pct:.1f}%", f"{s.provisioned_pct:+.1f}%")
    con = out_console()
    if not con.is_terminal:
        con.width = 120  # piped output: no terminal width to fit, keep the columns whole
    con.print(table)
