"""What a person sees after `adapt`: a rounded summary table (one line with -q) and adapt.png in the run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from infadapter.commands.views import adapt_summary, adapt_summary_line, adapt_summary_rows
from tests.cli_helpers import run_cli

# A local run's summary as AdapterRun.summary returns it (raw floats, as --json prints them).
LOCAL = {
    "policy": "infadapter", "interrupted": False, "mean_cores": 0.47412345, "mean_accuracy": 0.721634,
    "transitions": 12, "decisions": 40, "failed_applies": 0, "crashes": 0, "seconds": 131.2,
    "limit_mode": "cgroup", "run_dir": "runs/adapt", "requests": 1248, "ok": 1240, "errors": 8, "timeouts": 0,
    "slo_violation_rate": 0.04407051282, "p50_ms": 41.27, "p99_ms": 80.72892963001779,
    "by_variant": {"resnet18": 930, "resnet50": 310},
}
LONG_FLOAT = re.compile(r"\d\.\d{4,}")


def _render(renderable: object) -> str:
    con = Console(width=120, record=True)
    with con.capture() as cap:
        con.print(renderable)
    return cap.get()


def test_local_summary_is_rounded() -> None:
    rows = dict(adapt_summary_rows(LOCAL))
    # 0.04407 of 1248 requests = 55 requests; p99 80.73 ms rounds to 81 ms.
    assert rows["SLO violations"] == "4.41 % (55 of 1248 requests)"
    assert rows["latency p50 / p99"] == "41 ms / 81 ms"
    assert rows["mean cores"] == "0.474" and rows["mean accuracy"] == "72.16 %"
    assert rows["served by"] == "resnet18 75%, resnet50 25%"  # 930 / 1240 and 310 / 1240
    text = _render(adapt_summary(LOCAL, "runs/adapt/adapt.png"))
    assert "adapt.png" in text and not LONG_FLOAT.search(text), text
    line = adapt_summary_line(LOCAL)
    assert line == ("policy infadapter, SLO violations 4.41 %, p99 81 ms, mean cores 0.474, "
                    "mean accuracy 72.16 %, transitions 12")


@pytest.mark.slow
def test_dry_run_adapt_writes_the_plot_and_a_rounded_summary(tmp_path: Path) -> None:
    out = tmp_path / "dry"
    r = run_cli("adapt", "--backend", "dry-run", "--out", str(out), "--rate", "20", "--duration", "4",
                "--interval", "2", timeout=120)
    assert r.returncode == 0, r.stderr
    png = out / "adapt.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "adapt: policy infadapter on dry-run" in r.stdout
    assert "mean accuracy" in r.stdout and "adapt.png" in r.stdout
    assert not LONG_FLOAT.search(r.stdout), r.stdout
    # -q: one line of results; --json: the summary object alone, unchanged in form.
    q = run_cli("-q", "adapt", "--backend", "dry-run", "--out", str(tmp_path / "q"), "--rate", "20", "--duration",
                "2", "--interval", "2", timeout=120)
    assert q.returncode == 0, q.stderr
    assert q.stdout.count("\n") == 1 and q.stdout.startswith("policy infadapter, mean cores "), q.stdout
    assert (tmp_path / "q" / "adapt.png").exists()
    j = run_cli("adapt", "--backend", "dry-run", "--out", str(tmp_path / "j"), "--rate", "20", "--duration", "2",
                "--interval", "2", "--json", timeout=120)
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert doc["backend"] == "dry-run" and "plot" not in doc
