"""The monitor against a real dispatcher and a real Prometheus, and its fallback when Prometheus dies."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from infadapter.core.control import ControlConfig, observed_rate
from infadapter.observe.monitor import Monitor, PrometheusServer, history_from_stats, render_config, series
from infadapter.ports import free_port
from infadapter.serving.dispatcher import DispatcherClient

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_rendered_config_scrapes_every_part_each_second(tmp_path):
    text = render_config("127.0.0.1:8500", tmp_path / "servers.json", "127.0.0.1:9100", 1.0, "run1")
    cfg = yaml.safe_load(text)
    assert cfg["global"]["scrape_interval"] == "1000ms"
    assert cfg["global"]["scrape_timeout"] == "1000ms"  # Prometheus refuses a timeout above the interval
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["dispatcher"]["static_configs"][0]["targets"] == ["127.0.0.1:8500"]
    assert jobs["adapter"]["static_configs"][0]["targets"] == ["127.0.0.1:9100"]
    assert jobs["model-servers"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["model-servers"]["file_sd_configs"][0]["files"] == [str(tmp_path / "servers.json")]


def test_history_is_dense_and_ends_at_the_last_complete_second():
    stats = {"per_second": [[100, 3], [102, 5], [103, 7]]}
    pts = history_from_stats(stats, now_s=103.5)  # second 103 is still running: left out
    assert pts == {100: 3.0, 102: 5.0}
    assert series(pts, 103.5, start_s=99) == (0.0, 3.0, 0.0, 5.0)  # seconds 99..102


@pytest.fixture
def dispatcher(tmp_path):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("secret-token\n")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", str(port), "--admin-token-file", str(token_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    client = DispatcherClient(f"http://127.0.0.1:{port}", "secret-token")
    for _ in range(100):
        if client.healthy():
            break
        time.sleep(0.1)
    yield port, client
    proc.terminate()
    proc.wait(15)


def _send(port: int, n: int) -> None:
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/m:predict", data=b'{"instances": [1]}',
                                     method="POST", headers={"Content-Type": "application/json"})
        # No backend: 503, still counted as a request.
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=2).read()


def test_prometheus_then_fallback_to_the_dispatcher_when_it_dies(tmp_path, dispatcher):
    port, client = dispatcher
    prom = PrometheusServer(tmp_path, f"127.0.0.1:{port}")
    url = prom.start()
    try:
        start = time.time()
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                _send(port, 5)
                time.sleep(0.2)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        mon = Monitor(client.stats, url, start_s=start)
        obs = None
        for _ in range(40):  # Prometheus needs a few 1 s scrapes before rates exist
            time.sleep(0.5)
            obs = mon.observe()
            if obs.source == "prometheus" and sum(obs.history_rps) > 0:
                break
        assert obs is not None and obs.source == "prometheus", obs
        assert obs.warning == ""
        assert max(obs.history_rps) > 0
        prom.stop()
        obs = mon.observe()
        assert obs.source == "dispatcher"
        assert "does not answer" in obs.warning
        assert sum(obs.history_rps) > 0  # the dispatcher's own counters keep the history
        stop.set()
        t.join(5)
    finally:
        prom.stop()
    assert not prom.alive()


def test_without_prometheus_the_monitor_reads_the_dispatcher(dispatcher):
    port, client = dispatcher
    start = time.time() - 1
    _send(port, 4)
    time.sleep(1.1)
    obs = Monitor(client.stats, None, start_s=start).observe()
    assert obs.source == "dispatcher" and "no Prometheus" in obs.warning
    assert sum(obs.history_rps) == 4
    assert obs.requests_total == 4


def test_a_load_not_started_yet_leaves_no_history_until_it_starts(dispatcher):
    """A run that sends its own load decides first, while its servers come up: the seconds before the load
    are not history (they read as zeros and pulled the first forecast down to nothing: a live run's second
    service planned 0.013 req/s from its 46 req/s window history, then shed 105 requests at its start)."""
    port, client = dispatcher
    mon = Monitor(client.stats, None, start_s=time.time() - 30, load_pending=True, services=("a",))
    _send(port, 3)  # e.g. a health check: counted by the dispatcher, but not the run's load
    time.sleep(1.1)
    obs = mon.observe()
    assert obs.history_rps == () and obs.history_by_service == {"a": ()}
    while time.time() % 1 > 0.5:  # the load starts in the first half of a second, the earlier count before it
        time.sleep(0.05)
    mon.load_starts()
    _send(port, 4)
    time.sleep(2.1)
    obs = mon.observe()
    assert 1 <= len(obs.history_rps) <= 3 and sum(obs.history_rps) == 4


def test_the_newest_seconds_come_from_the_dispatchers_exact_counts(tmp_path, dispatcher):
    """Prometheus's newest seconds lag its scrapes; the dispatcher counted them, so a burst shows at once."""
    port, client = dispatcher
    prom = PrometheusServer(tmp_path, f"127.0.0.1:{port}")
    url = prom.start()
    try:
        mon = Monitor(client.stats, url, start_s=time.time())
        for _ in range(40):  # until Prometheus has rates
            _send(port, 2)
            time.sleep(0.5)
            if mon.observe().source == "prometheus":
                break
        # A burst inside one second, observed as soon as that second is complete.
        while time.time() % 1 > 0.3:
            time.sleep(0.02)
        burst_s = int(time.time())
        _send(port, 40)
        while time.time() < burst_s + 1.02:
            time.sleep(0.01)
        obs = mon.observe()
        assert obs.source == "prometheus"
        prom_only = mon.reader.history(obs.now_s, query=mon.rate_query) if mon.reader else {}
        assert obs.history_rps[-1] >= 40, (obs.history_rps[-5:], prom_only.get(burst_s))
        assert observed_rate(obs.history_rps, ControlConfig()) >= 40 / 3
    finally:
        prom.stop()
