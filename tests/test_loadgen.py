"""The open-loop load generator against real HTTP servers (and a closed port)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infadapter.errors import BadInput
from infadapter.observe.loadgen import (
    CSV_COLUMNS,
    arrival_offsets,
    make_jpegs,
    predict_body,
    predict_url,
    run_load,
    summarize,
)
from tests.test_dispatcher_support import Cluster

ROOT = Path(__file__).resolve().parents[1]
CLOSED_URL = "http://127.0.0.1:9/v1/models/m:predict"  # the discard port: nothing listens there




def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def assert_accounted(summary, rows: list[dict[str, str]] | None = None) -> None:  # type: ignore[no-untyped-def]
    assert summary.sent == summary.ok + summary.errors + summary.timeouts
    if rows is not None:
        assert len(rows) == summary.sent
        outcomes = Counter(r["outcome"] for r in rows)
        assert outcomes == Counter({"ok": summary.ok, "error": summary.errors, "timeout": summary.timeouts}) - Counter()


# -- pure parts -----------------------------------------------------------------------------------
def test_arrivals_follow_the_per_second_rates() -> None:
    rates = np.array([0, 100, 0, 400, 50], dtype=float)
    t = arrival_offsets(rates, np.random.default_rng(7))
    per_second = np.bincount(t.astype(int), minlength=5)
    assert per_second[0] == 0 and per_second[2] == 0  # zero-rate seconds send nothing
    # Poisson counts: within 5 standard deviations (sqrt(rate)) of the rate in each busy second.
    for s, r in ((1, 100), (3, 400), (4, 50)):
        assert abs(per_second[s] - r) <= 5 * np.sqrt(r)
    assert np.all(np.diff(t) >= 0)
    assert t.min() >= 1 and t.max() < 5
    again = arrival_offsets(rates, np.random.default_rng(7))
    assert np.array_equal(t, again)  # the seed fixes the schedule


def test_interarrival_times_are_exponential() -> None:
    # A Poisson process at 200/s over 50 s: gaps have mean 1/200 s and coefficient of variation 1.
    t = arrival_offsets(np.full(50, 200.0), np.random.default_rng(1))
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("bad", [[], [-1.0, 2.0], [float("nan")], [[1.0, 2.0]]])
def test_bad_rates_are_rejected(bad: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(BadInput, match="rates"):
        arrival_offsets(bad, np.random.default_rng(0))


def test_jpeg_payloads_are_real_distinct_images() -> None:
    jpegs = make_jpegs(count=3, resolution=48, seed=2)
    assert len(set(jpegs)) == 3
    for j in jpegs:
        img = Image.open(io.BytesIO(j))
        assert img.format == "JPEG"
        assert img.size == (48, 48)
    body = json.loads(predict_body(jpegs[0]))
    assert base64.b64decode(body["instances"][0]["b64"]) == jpegs[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8500", "http://127.0.0.1:8500/v1/models/resnet:predict"),
        ("http://127.0.0.1:8500/", "http://127.0.0.1:8500/v1/models/resnet:predict"),
        ("http://h:1/v1/models/x:predict", "http://h:1/v1/models/x:predict"),
    ],
)
def test_predict_url(url: str, expected: str) -> None:
    assert predict_url(url) == expected


def test_summary_definitions() -> None:
    # rows: index, scheduled, sent, unix, latency_ms, status, outcome, variant, error
    rows = [
        [0, 0.0, 0.0, 0.0, 10.0, 200, "ok", "a", ""],
        [1, 0.1, 0.1, 0.0, 30.0, 200, "ok", "b", ""],  # ok but slower than the 20 ms SLO
        [2, 0.2, 0.2, 0.0, 5.0, 500, "error", "a", ""],
        [3, 0.3, 0.3, 0.0, 0.0, 0, "error", "", "unsent: all 1 connections busy"],
        [4, 0.4, 0.4, 0.0, 99.0, 0, "timeout", "", "no answer"],
    ]
    s = summarize(rows, slo_ms=20, duration_s=2.0)
    assert (s.sent, s.ok, s.errors, s.timeouts, s.unsent, s.answered) == (5, 2, 2, 1, 1, 3)
    assert s.slo_violation_rate == pytest.approx(4 / 5)  # 1 slow + 2 errors + 1 timeout
    assert s.p50_ms == pytest.approx(20.0)  # of the ok requests only
    assert s.by_variant == {"a": 1, "b": 1}
    assert s.by_status == {"0": 2, "200": 2, "500": 1}
    assert s.achieved_rps == pytest.approx(2.5)


# -- against real servers ---------------------------------------------------------------------------
@pytest.mark.slow
def test_records_every_request_to_csv(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.backend("a"), cluster.backend("b")
    _, base = cluster.dispatcher([a.spec(1), b.spec(1)])
    out = tmp_path / "requests.csv"
    s = run_load(base, np.full(2, 40.0), out_path=out, slo_ms=750, seed=3, resolution=32, images=2)
    rows = read_csv(out)
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    assert_accounted(s, rows)
    assert s.sent > 40 and s.ok == s.sent and s.errors == 0
    assert set(s.by_variant) == {"a", "b"}
    assert Counter(r["variant"] for r in rows) == Counter(s.by_variant)
    assert all(r["status"] == "200" for r in rows)
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    sent = [float(r["sent_s"]) for r in rows]
    assert max(sent) < 3.0  # open loop: everything was sent within the 2 s schedule (plus slack)
    assert len(a.bodies) + len(b.bodies) == s.sent
    instance = json.loads((a.bodies or b.bodies)[0])["instances"][0]
    assert Image.open(io.BytesIO(base64.b64decode(instance["b64"]))).size == (32, 32)
    assert s.out_path == str(out)


@pytest.mark.slow
def test_closed_port_every_request_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "down.csv"
    s = run_load(CLOSED_URL, np.full(2, 25.0), out_path=out, seed=1, resolution=16)
    rows = read_csv(out)
    assert_accounted(s, rows)
    assert s.sent > 20
    assert s.errors == s.sent and s.ok == 0 and s.answered == 0
    assert s.slo_violation_rate == 1.0
    assert s.p50_ms is None
    assert all(r["status"] == "0" and r["error"] for r in rows)


@pytest.mark.slow
def test_slow_backend_requests_become_timeouts(cluster: Cluster) -> None:
    held = cluster.backend("held", gated=True)
    s = run_load(held.url + "/v1/models/held:predict", np.full(1, 10.0), timeout_s=0.3, seed=2, resolution=16)
    assert_accounted(s)
    assert s.sent > 0 and s.timeouts == s.sent


@pytest.mark.slow
def test_connection_bound_counts_unsent_requests_as_errors(cluster: Cluster, tmp_path: Path) -> None:
    held = cluster.backend("held", gated=True)
    out = tmp_path / "bounded.csv"
    s = run_load(
        held.url + "/v1/models/held:predict",
        np.full(1, 60.0),
        out_path=out,
        timeout_s=0.5,
        max_connections=2,
        seed=4,
        resolution=16,
    )
    rows = read_csv(out)
    assert_accounted(s, rows)
    # Two requests hold the two connections until they time out; every arrival in the meantime was
    # not sent and is counted as an error (more precisely: unsent), never silently delayed.
    assert s.timeouts >= 2
    assert s.unsent > 0 and s.unsent == s.errors
    assert all(r["error"].startswith("unsent") for r in rows if r["outcome"] == "error")
    assert len(held.paths) == s.timeouts  # the unsent ones never reached the server


def test_parquet_only_with_pyarrow(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.backend("a")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(BadInput, match="pyarrow"):
            run_load(a.url, np.full(1, 5.0), out_path=tmp_path / "r.parquet", resolution=16)
    else:
        s = run_load(a.url, np.full(1, 5.0), out_path=tmp_path / "r.parquet", resolution=16)
        assert pq.read_table(tmp_path / "r.parquet").num_rows == s.sent


# -- the CLI ------------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_cli_load_with_a_trace_window_prints_one_json_value(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.backend("a")
    _, base = cluster.dispatcher([a.spec()])
    trace = tmp_path / "trace.txt"
    trace.write_text("10\n30\n20\n40\n")  # per-second rates; window 1:2 = [30, 20], speedup 2 -> [25]
    out = tmp_path / "r.csv"
    res = cli(
        "load", "--url", base, "--trace", str(trace), "--window", "1:2", "--speedup", "2",
        "--resolution", "16", "--out", str(out), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # exactly one JSON value
    assert summary["sent"] == summary["ok"] + summary["errors"] + summary["timeouts"]
    assert 5 <= summary["sent"] <= 60  # Poisson around 25 in one second
    assert summary["by_variant"] == {"a": summary["ok"]}
    assert len(read_csv(out)) == summary["sent"]


@pytest.mark.slow
def test_cli_load_table_summary(cluster: Cluster) -> None:
    a = cluster.backend("a")
    res = cli("load", "--url", a.url, "--model", "a", "--rate", "20", "--duration", "1", "--resolution", "16")
    assert res.returncode == 0, res.stderr
    for word in ("sent", "answered", "errors", "timeouts", "SLO violation rate", "p50 / p99"):
        assert word in res.stdout


@pytest.mark.slow
def test_cli_load_against_a_closed_port_exits_4_after_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "down.csv"
    res = cli("load", "--url", "http://127.0.0.1:9", "--rate", "10", "--duration", "1", "--out", str(out), "--json")
    assert res.returncode == 4
    summary = json.loads(res.stdout)
    assert summary["errors"] == summary["sent"] > 0
    assert "no request" in res.stderr and "Traceback" not in res.stderr
    assert len(read_csv(out)) == summary["sent"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "5", "--window", "paper"], "--window/--rate"),
        (["--rate", "5"], "--duration"),
        ([], "--window or --rate"),
        (["--rate", "5", "--duration", "1", "--resolution", "2"], "--resolution"),
        (["--window", "nonsense"], "--window"),
    ],
)
def test_cli_load_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    res = cli("load", "--url", "http://127.0.0.1:9", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_load_interrupted_writes_what_was_recorded(cluster: Cluster, tmp_path: Path) -> None:
    held = cluster.backend("held", gated=True)  # never answers: requests are in flight at Ctrl-C
    out = tmp_path / "interrupted.csv"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "load",
            "--url",
            held.url,
            "--rate",
            "30",
            "--duration",
            "60",
            "--resolution",
            "16",
            "--timeout-s",
            "60",
            "--out",
            str(out),
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(held.paths) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    rows = read_csv(out)
    assert summary["interrupted"] is True
    assert summary["sent"] == len(rows) >= 10
    assert summary["sent"] == summary["ok"] + summary["errors"] + summary["timeouts"]
    assert all(r["outcome"] in ("ok", "error", "timeout") for r in rows)
    assert any(r["error"].startswith("interrupted") for r in rows)


def test_cli_load_help_shows_examples() -> None:
    res = cli("load", "--help")
    assert res.returncode == 0
    assert "Examples:" in res.stdout
    assert "--window paper" in res.stdout


def test_env_var_prefix_reaches_load_options(cluster: Cluster) -> None:
    a = cluster.backend("a")
    env = {**os.environ, "INFADAPTER_LOAD_RESOLUTION": "3"}  # click's auto_envvar_prefix: INFADAPTER_LOAD_*
    res = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "load", "--url", a.url, "--rate", "1", "--duration", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "--resolution" in res.stderr
