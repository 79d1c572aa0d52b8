"""HAProxy as the local router: real haproxy, real model servers (32 px ResNets), loopback only.

What the local backend relies on: the planned split, weights changed live through the Runtime API,
a killed model server ejected by the health checks (its requests retried on the other variant),
the model name rewritten per variant, the variant header, Prometheus metrics, 503 when full, the
admin socket private to the adapter, and the monitor's statistics in the dispatcher's shape.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from infadapter.adapter.state import StateStore
from infadapter.core.control import ControlConfig, observed_rate
from infadapter.observe.loadgen import make_jpegs, predict_body, run_load
from infadapter.observe.monitor import Monitor
from infadapter.ports import free_port
from infadapter.serving.dispatcher import RequestStats
from infadapter.serving.haproxy import (
    HAProxyRouter,
    HAProxySettings,
    haproxy_binary,
    parse_log_line,
    render_config,
    weights,
)
from infadapter.serving.router import Route, RouterConfig

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [("resnet18", "resnet18"), ("resnet50", "resnet50"), ("spare", "spare")]

needs_haproxy = pytest.mark.skipif(haproxy_binary() is None,
                                   reason="haproxy is not installed (scripts/setup.sh installs it as root)")


# -- pure parts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shares", "expected"), [
    ([0.7, 0.3], [179, 77]),  # 256 * 0.7 = 179.2, 256 * 0.3 = 76.8
    ([1.0], [256]),
    ([0.999, 0.001], [256, 1]),  # a positive share never rounds to 0 (0 would stop its traffic)
    ([0.5, 0.0], [256, 0]),
    ([0.0, 0.0], [1, 1]),  # no positive share: split evenly rather than route nowhere
])
def test_weights_map_shares_onto_haproxys_integer_scale(shares, expected):
    assert weights(shares) == expected


def test_log_lines_parse_into_the_dispatchers_statistics():
    assert parse_log_line("1700000000.250 12 200 resnet18") == (1700000000.25, 12.0, 200, "resnet18")
    assert parse_log_line("1700000000.250 -1 200 resnet18") == (1700000000.25, 0.0, 499, "resnet18")
    assert parse_log_line("garbage") is None
    now = 1_700_000_100.5
    clock = iter([now - 60, now])  # constructed a minute ago; stats() read now
    router = HAProxyRouter(RouterConfig(Path("/nonexistent")), StateStore("/dev/null"), VARIANTS,
                           clock=lambda: next(clock))
    # Completion order is not arrival order: the later-arriving request is logged first.
    router.feed(f"{now - 2.1:.3f} 5 200 resnet18")
    router.feed(f"{now - 3.1:.3f} 900 200 resnet50")
    router.feed(f"{now - 2.1:.3f} 3 503 <NOSRV>")
    s = router.stats()
    reference = RequestStats(500, now).snapshot(now)
    assert set(reference) <= set(s)
    assert s["requests_total"] == 3
    assert s["by_code"] == {"200": 2, "503": 1}
    assert s["by_variant"] == {"resnet18": 1, "resnet50": 1}
    counts = dict((t, n) for t, n in s["per_second"])
    assert counts[int(now - 2.1)] == 2 and counts[int(now - 3.1)] == 1


def test_counter_deltas_are_credited_to_the_seconds_they_span():
    from infadapter.serving.haproxy import _LogStats

    st = _LogStats(500, 99.0)
    st.arrivals_between(100.5, 101.5, 10)  # half in second 100, half in 101
    st.arrivals_between(101.5, 102.0, 4)
    assert dict((t, n) for t, n in st.snapshot(103.0)["per_second"]) == {99: 0, 100: 5.0, 101: 9.0, 102: 0}


def test_bad_variant_names_are_refused_with_the_field():
    from infadapter.errors import BadInput

    with pytest.raises(BadInput, match="variants: 'a b'"):
        render_config([("a b", "m")], 1, 2, "/tmp/x.sock", None, "t", 500)


@needs_haproxy
def test_rendered_config_is_valid_for_haproxy(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_config(VARIANTS, free_port(), free_port(), str(tmp_path / "a.sock"),
                                 str(tmp_path / "l.sock"), "infadapter-test", 500))
    out = subprocess.run([haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


# -- real haproxy, real model servers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_servers(tmp_path_factory):
    """resnet18 and resnet50 (32 px) serving on loopback, one thread each."""
    base = tmp_path_factory.mktemp("haproxy-models")
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "build-models", "--out", str(base / "models"),
                    "--variants", "resnet18,resnet50", "--resolution", "32"], check=True, capture_output=True)
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in ("resnet18", "resnet50"):
            port = free_port()
            procs[name] = (subprocess.Popen(
                [sys.executable, str(ROOT / "cli.py"), "serve-model", "--model-dir", str(base / "models"),
                 "--name", name, "--port", str(port), "--warmup", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True), port)
        for name, (proc, port) in procs.items():
            _wait_available(f"http://127.0.0.1:{port}", name, proc)
        yield {"models": base / "models", "procs": procs}
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _wait_available(url: str, model: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{model} server exited"
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{model}", timeout=2) as resp:
                if b"AVAILABLE" in resp.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{model} not AVAILABLE in {timeout_s} s")


@pytest.fixture
def router(tmp_path):
    r = HAProxyRouter(RouterConfig(tmp_path / "run", slo_ms=500), StateStore(tmp_path / "run" / "state.json"),
                      VARIANTS)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def _routes(servers: dict, shares: dict[str, float]) -> list[Route]:
    return [Route(n, f"http://127.0.0.1:{servers['procs'][n][1]}", n, w) for n, w in shares.items()]


BODY = predict_body(make_jpegs(1, 32, seed=0)[0])


def _post(url: str) -> tuple[int, str | None, bytes]:
    req = urllib.request.Request(f"{url}/v1/models/resnet:predict", data=BODY, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("X-Infadapter-Variant"), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Infadapter-Variant"), exc.read()


@needs_haproxy
@pytest.mark.slow
def test_planned_split_header_rewrite_metrics_and_private_socket(router, model_servers):
    shown = router.set_backends(_routes(model_servers, {"resnet18": 0.7, "resnet50": 0.3}))
    assert {b["name"]: b["share"] for b in shown["backends"] if b["share"]} == pytest.approx(
        {"resnet18": 0.7, "resnet50": 0.3}, abs=0.005)
    # The public name "resnet" is rewritten to each variant's model (the servers 404 other names).
    s = run_load(router.url, np.full(10, 20.0), slo_ms=500, seed=1, payloads=[BODY])
    assert s.ok == s.sent and s.sent > 100
    # Smooth weighted round robin: the split follows the weights to within a few percent.
    assert s.by_variant["resnet18"] / s.ok == pytest.approx(0.7, abs=0.03)
    body = json.loads(_post(router.url)[2])
    assert "predictions" in body
    # The monitor's source: the request log, in the dispatcher's /admin/stats shape.
    deadline = time.monotonic() + 5
    while router.stats()["requests_total"] < s.sent + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.2)  # per_second holds complete seconds only
    st = router.stats()
    # Arrivals come from HAProxy's own request counter (exact at any rate; the log may drop lines).
    assert st["requests_total"] == s.sent + 1
    assert sum(n for _, n in st["per_second"]) == pytest.approx(s.sent + 1, abs=1e-6)
    assert sum(st["by_variant"].values()) == s.sent + 1
    assert st["weights"] == pytest.approx({"resnet18": 0.7, "resnet50": 0.3}, abs=0.005)
    assert 0 < st["latency_ms_p99_60s"] < 500
    obs = Monitor(router.stats, None, start_s=time.time() - 20).observe()
    assert observed_rate(obs.history_rps, ControlConfig()) > 5 and obs.p99_ms is not None
    # HAProxy's own Prometheus exporter.
    with urllib.request.urlopen(f"http://{router.metrics_target}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'haproxy_frontend_http_requests_total{proxy="predict"}' in metrics
    assert 'haproxy_server_weight{proxy="variants",server="resnet18"} 179' in metrics
    # The Runtime API socket: in the run folder, a socket only its owner may use.
    mode = os.stat(router.admin_socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert router.admin_socket.parent == (router.config.run_dir).resolve()


@needs_haproxy
@pytest.mark.slow
def test_weights_change_live_without_failures(router, model_servers):
    router.set_backends(_routes(model_servers, {"resnet18": 0.8, "resnet50": 0.2}))
    results: dict[str, object] = {}

    def load() -> None:
        results["summary"] = run_load(router.url, np.full(12, 15.0), slo_ms=500, seed=2, payloads=[BODY],
                                      out_path=Path(router.config.run_dir) / "requests.csv")

    t = threading.Thread(target=load)
    t.start()
    time.sleep(5)
    changed_at = time.time()
    router.set_backends(_routes(model_servers, {"resnet18": 0.2, "resnet50": 0.8}))
    t.join(60)
    s = results["summary"]
    assert s.ok == s.sent, s.by_status  # nothing lost while the weights moved
    # The requests sent after the change (from the load's own record) follow the new weights.
    import csv

    rows = list(csv.DictReader((Path(router.config.run_dir) / "requests.csv").open()))
    after = [r for r in rows if float(r["sent_unix"]) > changed_at + 0.5]
    assert len(after) > 40
    share50 = sum(r["variant"] == "resnet50" for r in after) / len(after)
    assert share50 == pytest.approx(0.8, abs=0.06)


@needs_haproxy
@pytest.mark.slow
def test_killed_server_is_ejected_and_its_requests_retried_elsewhere(tmp_path, model_servers):
    # A server of our own to kill (the module's servers serve the other tests).
    port = free_port()
    victim = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve-model", "--model-dir", str(model_servers["models"]),
         "--name", "resnet18", "--port", str(port), "--warmup", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    r = HAProxyRouter(RouterConfig(tmp_path / "run", slo_ms=500), StateStore(tmp_path / "run" / "state.json"),
                      VARIANTS)
    try:
        _wait_available(f"http://127.0.0.1:{port}", "resnet18", victim)
        r.start()
        r.set_backends([Route("resnet18", f"http://127.0.0.1:{port}", "resnet18", 0.5),
                        *_routes(model_servers, {"resnet50": 0.5})])
        assert _post(r.url)[0] == 200
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # Right after the kill, before any health check noticed: refused connections are retried
        # once on the other variant (retries 1 + option redispatch), so clients see no error.
        codes = [_post(r.url)[:2] for _ in range(6)]
        assert all(c == (200, "resnet50") for c in codes), codes
        deadline = time.monotonic() + 10  # 2 failed checks 1 s apart eject it
        while "resnet18" not in r.stats()["ejected"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.stats()["ejected"] == ["resnet18"]
        s = run_load(r.url, np.full(3, 10.0), slo_ms=500, seed=3, payloads=[BODY])
        assert s.ok == s.sent and set(s.by_variant) == {"resnet50"}
        # Everything down: HAProxy itself answers 503, without a variant header.
        r.set_backends([Route("resnet18", f"http://127.0.0.1:{port}", "resnet18", 1.0)])
        code, variant, body = _post(r.url)
        assert code == 503 and variant is None
        assert "error" in json.loads(body)  # TF Serving's error shape, as from the dispatcher
    finally:
        r.stop()
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)


@needs_haproxy
@pytest.mark.slow
def test_full_server_queues_then_503_after_the_queue_timeout(tmp_path, model_servers):
    """maxconn 1 per variant and a 1 ms queue timeout (the SLO): concurrent requests beyond the one
    being served get HAProxy's 503 instead of waiting without bound."""
    r = HAProxyRouter(RouterConfig(tmp_path / "run", slo_ms=1), StateStore(tmp_path / "run" / "state.json"),
                      VARIANTS, HAProxySettings())
    try:
        r.start()
        r.set_backends([Route(n, f"http://127.0.0.1:{model_servers['procs'][n][1]}", n, 0.5, max_conn=1)
                        for n in ("resnet18", "resnet50")])
        s = run_load(r.url, np.full(2, 150.0), slo_ms=500, seed=4, payloads=[BODY])
        assert s.by_status.get("503", 0) > 0, s.by_status
        assert s.ok > 0
    finally:
        r.stop()


@needs_haproxy
@pytest.mark.slow
def test_restarted_adapter_adopts_the_running_haproxy(tmp_path, model_servers):
    store_path = tmp_path / "run" / "state.json"
    first = HAProxyRouter(RouterConfig(tmp_path / "run", slo_ms=500), StateStore(store_path), VARIANTS)
    first.start()
    try:
        first.set_backends(_routes(model_servers, {"resnet50": 1.0}))
        from infadapter.adapter.state import read_state

        saved = StateStore(store_path, read_state(store_path))
        second = HAProxyRouter(RouterConfig(tmp_path / "run", slo_ms=500), saved, VARIANTS)
        assert second.start() == first.url
        assert second.pid == first.pid and second.messages
        assert _post(second.url)[:2] == (200, "resnet50")
        deadline = time.monotonic() + 5
        while second.stats()["requests_total"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert second.stats()["requests_total"] == 1  # the log socket moved to the new adapter
        second.stop()
    finally:
        first.stop()


def _server_requests(port: int, model: str) -> int:
    """Predict requests a model server counted (its TF-Serving-style Prometheus counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/monitoring/prometheus/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith(":tensorflow:serving:request_count{") and f'model_name="{model}"' in ln))


@needs_haproxy
@pytest.mark.slow
def test_replaced_server_takes_over_live_and_the_old_one_drains(router, model_servers):
    """A replacement (new port, as when a variant's thread count changes) is one `set server addr`:
    new requests reach the new server at once, nothing fails while the old one stops."""
    old_port = model_servers["procs"]["resnet50"][1]
    router.set_backends(_routes(model_servers, {"resnet50": 1.0}))
    assert _post(router.url)[:2] == (200, "resnet50")
    port = free_port()
    new = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve-model", "--model-dir", str(model_servers["models"]),
         "--name", "resnet50", "--port", str(port), "--warmup", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_available(f"http://127.0.0.1:{port}", "resnet50", new)
        results: dict[str, object] = {}
        t = threading.Thread(target=lambda: results.update(
            s=run_load(router.url, np.full(6, 15.0), slo_ms=500, seed=5, payloads=[BODY])))
        t.start()
        time.sleep(2)
        old_before = _server_requests(old_port, "resnet50")
        router.set_backends([Route("resnet50", f"http://127.0.0.1:{port}", "resnet50", 1.0)])
        time.sleep(0.5)  # requests already in flight on the old server finish there
        old_after = _server_requests(old_port, "resnet50")
        t.join(60)
        s = results["s"]
        assert s.ok == s.sent, s.by_status  # nothing lost in the switch
        assert _server_requests(old_port, "resnet50") == old_after  # no new request reached the old server
        assert old_after >= old_before and _server_requests(port, "resnet50") > 40
    finally:
        if new.poll() is None:
            new.kill()
        new.wait(10)


@needs_haproxy
@pytest.mark.slow
def test_dead_haproxy_restarts_on_its_port_and_counts_once(router, model_servers):
    routes = _routes(model_servers, {"resnet18": 0.5, "resnet50": 0.5})
    router.set_backends(routes)
    url = router.url
    os.killpg(router.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while router.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not router.alive()
    assert router.start() == url  # the same port: clients and Prometheus keep their target
    router.set_backends(routes)  # the backend re-applies the routes it had
    for _ in range(4):
        assert _post(router.url)[0] == 200
    time.sleep(2.2)  # two counter reads
    st = router.stats()
    assert sum(n for _, n in st["per_second"]) == pytest.approx(4, abs=1e-6)  # one counter, not two
    assert sum(st["by_variant"].values()) == 4
