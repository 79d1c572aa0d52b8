"""The dispatcher with real HTTP: real aiohttp backends speaking TF Serving's predict API."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infadapter.errors import BackendUnavailable, BadInput
from infadapter.ports import free_port
from infadapter.serving.dispatcher import (
    BackendSpec,
    DispatcherClient,
    latency_buckets,
    parse_backends,
    resolve_admin_token,
)
from tests.test_dispatcher_support import TOKEN, Cluster, http, predict

ROOT = Path(__file__).resolve().parents[1]




def wait_until(cond, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# -- forwarding ---------------------------------------------------------------------------------
def test_forwards_body_unchanged_rewrites_model_and_names_the_variant(cluster: Cluster) -> None:
    a = cluster.backend("resnet18")
    _, base = cluster.dispatcher([BackendSpec("r18", a.url, "resnet18", 1.0)])
    body = {"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}
    raw = json.dumps(body).encode()
    reply = http("POST", f"{base}/v1/models/public-name:predict", raw)
    assert reply.status == 200
    assert reply.headers["X-Infadapter-Variant"] == "r18"
    assert reply.body["predictions"] == [[0.25, 0.75], [0.25, 0.75]]
    assert reply.body["sha256"] == hashlib.sha256(raw).hexdigest()  # byte for byte
    assert a.paths == ["/v1/models/resnet18:predict"]  # public name rewritten to the backend's model
    versioned = http("POST", f"{base}/v1/models/public-name/versions/3:predict", raw)
    assert versioned.status == 200
    assert a.paths[-1] == "/v1/models/resnet18/versions/3:predict"


def test_split_follows_the_shares_exactly(cluster: Cluster) -> None:
    a, b = cluster.backend("a"), cluster.backend("b")
    _, base = cluster.dispatcher([a.spec(0.7), b.spec(0.3)])
    # Sequential requests over 10 SWRR cycles of 7+3: exactly 70 and 30.
    variants = Counter(predict(base).headers["X-Infadapter-Variant"] for _ in range(100))
    assert variants == {"a": 70, "b": 30}
    assert (len(a.paths), len(b.paths)) == (70, 30)


def test_model_status_is_available_only_with_backends(cluster: Cluster) -> None:
    a = cluster.backend("a")
    _, base = cluster.dispatcher()
    before = http("GET", f"{base}/v1/models/resnet")
    assert before.status == 503
    assert before.body["model_version_status"][0]["state"] != "AVAILABLE"
    assert predict(base).status == 503  # no backend: a clean error, not a hang
    http("PUT", f"{base}/admin/backends", {"backends": [{"name": "a", "url": a.url, "weight": 1}]}, TOKEN)
    after = http("GET", f"{base}/v1/models/resnet")
    assert after.status == 200
    assert after.body["model_version_status"][0]["state"] == "AVAILABLE"
    assert http("GET", f"{base}/healthz").body["status"] == "ok"


# -- admin API ----------------------------------------------------------------------------------
ADMIN_ROUTES = [("GET", "/admin/backends"), ("PUT", "/admin/backends"), ("GET", "/admin/stats")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", ""])
def test_admin_requires_the_token(cluster: Cluster, method: str, path: str, token: str | None) -> None:
    a = cluster.backend("a")
    d, base = cluster.dispatcher([a.spec()])
    body = {"backends": [{"name": "evil", "url": "http://127.0.0.1:1", "weight": 1}]} if method == "PUT" else None
    reply = http(method, base + path, body, token)
    if token:  # a wrong token: 403, no challenge
        assert reply.status == 403 and "WWW-Authenticate" not in reply.headers
    else:  # none at all: 401 with the Bearer challenge
        assert reply.status == 401 and reply.headers["WWW-Authenticate"] == "Bearer"
    assert "token" in reply.body["error"]
    assert [s.name for s in d.backends] == ["a"]  # nothing changed


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"not json", "body"),
        ({"backends": "a"}, "backends"),
        ({"backends": [{"url": "http://127.0.0.1:1", "weight": 1}]}, "backends[0].name"),
        ({"backends": [{"name": "a", "url": "ftp://127.0.0.1:1", "weight": 1}]}, "backends[0].url"),
        ({"backends": [{"name": "a", "url": "127.0.0.1:9001", "weight": 1}]}, "backends[0].url"),
        ({"backends": [{"name": "a", "url": "http://127.0.0.1:1", "weight": -1}]}, "backends[0].weight"),
        ({"backends": [{"name": "a", "url": "http://127.0.0.1:1", "weight": "1"}]}, "backends[0].weight"),
        ({"backends": [{"name": "a", "url": "http://127.0.0.1:1", "weight": 0}]}, "positive sum"),
        (
            {
                "backends": [
                    {"name": "a", "url": "http://h:1", "weight": 1},
                    {"name": "a", "url": "http://h:2", "weight": 2},
                ]
            },
            "backends[1].name",
        ),
        ({"backends": [{"name": "a", "url": "http://h:1", "weight": 1, "wieght": 2}]}, "unknown field"),
    ],
)
def test_bad_backend_payloads_get_400_and_change_nothing(cluster: Cluster, payload: object, field: str) -> None:
    a = cluster.backend("a")
    d, base = cluster.dispatcher([a.spec()])
    reply = http("PUT", f"{base}/admin/backends", payload, TOKEN)  # type: ignore[arg-type]
    assert reply.status == 400
    assert field in reply.body["error"]
    assert [s.name for s in d.backends] == ["a"]
    assert predict(base).status == 200


def test_get_backends_and_client_round_trip(cluster: Cluster) -> None:
    a, b = cluster.backend("a"), cluster.backend("b")
    _, base = cluster.dispatcher()
    client = DispatcherClient(base, TOKEN)
    view = client.set_backends([a.spec(3), {"name": "b", "url": b.url, "weight": 1}])
    assert view["generation"] == 1
    assert [(x["name"], x["model"], x["share"]) for x in view["backends"]] == [("a", "a", 0.75), ("b", "b", 0.25)]
    assert client.backends() == view
    assert client.healthy()
    with pytest.raises(BadInput, match=r"backends\[0\]\.weight"):
        client.set_backends([{"name": "a", "url": a.url, "weight": -2}])
    with pytest.raises(BadInput, match="admin token rejected"):
        DispatcherClient(base, "nope").stats()
    closed = DispatcherClient("http://127.0.0.1:9", TOKEN, timeout_s=2)
    with pytest.raises(BackendUnavailable, match="unreachable"):
        closed.stats()
    assert not closed.healthy()


# -- weight changes -----------------------------------------------------------------------------
def test_weight_changes_are_atomic_under_concurrent_traffic(cluster: Cluster) -> None:
    a, b, c = cluster.backend("a"), cluster.backend("b"), cluster.backend("c")
    _, base = cluster.dispatcher([a.spec(1), b.spec(1)])
    client = DispatcherClient(base, TOKEN)
    sets = [[a.spec(1), b.spec(1)], [c.spec(1)], [a.spec(0), b.spec(1)]]
    allowed = [{"a", "b"}, {"c"}, {"b"}]
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(6):
            k = round_ % 3
            client.set_backends(sets[k])
            # Everything sent after the PUT returned sees only the new set, never a mix.
            replies = list(pool.map(lambda _: predict(base), range(24)))
            assert all(r.status == 200 for r in replies)
            assert {r.headers["X-Infadapter-Variant"] for r in replies} <= allowed[k]
            view = client.backends()
            assert view["generation"] == round_ + 1
            assert {x["name"] for x in view["backends"] if x["weight"] > 0} == allowed[k]


def test_removed_backend_finishes_its_in_flight_requests(cluster: Cluster) -> None:
    slow = cluster.backend("slow", gated=True)
    fast = cluster.backend("fast")
    _, base = cluster.dispatcher([slow.spec(1)])
    with ThreadPoolExecutor(6) as pool:
        held = [pool.submit(predict, base) for _ in range(6)]
        wait_until(lambda: len(slow.paths) == 6)  # all six are inside the slow backend now
        DispatcherClient(base, TOKEN).set_backends([fast.spec(1)])  # remove it while they are in flight
        assert predict(base).headers["X-Infadapter-Variant"] == "fast"
        cluster.open_gate(slow)
        replies = [f.result(timeout=20) for f in held]
    assert [r.status for r in replies] == [200] * 6
    assert {r.headers["X-Infadapter-Variant"] for r in replies} == {"slow"}


# -- failures -----------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["http500", "refused", "timeout"])
def test_failing_backend_is_ejected_and_the_request_retried_on_another(cluster: Cluster, failure: str) -> None:
    good = cluster.backend("good")
    if failure == "refused":
        bad_spec = BackendSpec("bad", "http://127.0.0.1:9", "bad", 1)  # discard port: nothing listens
        bad = None
    else:
        bad = cluster.backend("bad", status=500 if failure == "http500" else 200, gated=failure == "timeout")
        bad_spec = bad.spec(1)
    _, base = cluster.dispatcher([bad_spec, good.spec(1)], eject_s=60, backend_timeout_s=0.5)
    replies = [predict(base) for _ in range(10)]
    assert [r.status for r in replies] == [200] * 10  # the client never sees the failure
    assert {r.headers["X-Infadapter-Variant"] for r in replies} == {"good"}
    if bad is not None:
        assert len(bad.paths) == 1  # tried once, then ejected for 60 s
    stats = DispatcherClient(base, TOKEN).stats()
    assert stats["ejected"] == ["bad"]
    assert 'dispatcher_backend_ejections_total{model="bad"} 1.0' in http("GET", f"{base}/metrics").body


def test_a_shed_request_is_retried_on_the_idle_standby_first(cluster: Cluster) -> None:
    """A 503 (a full server) is retried on the variant with no share (a plan's standby), not the other weighted one."""
    busy, other, spare = cluster.backend("busy", status=503), cluster.backend("other"), cluster.backend("spare")
    _, base = cluster.dispatcher([busy.spec(1), other.spec(1), spare.spec(0)], eject_s=0)
    replies = [predict(base) for _ in range(10)]
    assert [r.status for r in replies] == [200] * 10
    by = [r.headers["X-Infadapter-Variant"] for r in replies]
    assert by.count("spare") == len(busy.paths) == 5  # every shed request, and only those
    assert by.count("other") == 5
    assert 'dispatcher_backend_shed_total{model="busy"} 5.0' in http("GET", f"{base}/metrics").body


def test_a_server_with_spill_at_requests_in_flight_hands_new_ones_to_the_idle_standby(cluster: Cluster) -> None:
    """Past spill_at requests in flight (a queue that would hold a new one past the SLO), a new request goes to
    the variant with no share at once, while it has room (its own spill_at), and comes back when the queue drains;
    without a standby nothing is spilled."""
    slow, spare = cluster.backend("slow", gated=True), cluster.backend("spare", gated=True)
    primary = BackendSpec("slow", slow.url, "slow", 1.0, spill_at=2)
    _, base = cluster.dispatcher([primary, BackendSpec("spare", spare.url, "spare", 0.0, spill_at=1)], eject_s=0)
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(predict, base) for _ in range(2)]
        wait_until(lambda: len(slow.paths) == 2)
        spilled = pool.submit(predict, base)  # slow holds 2: to the spare
        wait_until(lambda: len(spare.paths) == 1)
        queued = pool.submit(predict, base)  # the spare holds its 1 too: it waits at slow
        wait_until(lambda: len(slow.paths) == 3)
        cluster.open_gate(slow)
        cluster.open_gate(spare)
        replies = [f.result(timeout=20) for f in (*held, spilled, queued)]
    assert [r.status for r in replies] == [200] * 4
    assert [r.headers["X-Infadapter-Variant"] for r in replies] == ["slow", "slow", "spare", "slow"]
    assert 'dispatcher_backend_spilled_total{model="slow"} 1.0' in http("GET", f"{base}/metrics").body
    assert predict(base).headers["X-Infadapter-Variant"] == "slow"  # drained: no spill
    backends = DispatcherClient(base, TOKEN).backends()["backends"]
    assert [(b["name"], b.get("spill_at")) for b in backends] == [("slow", 2), ("spare", 1)]


def test_without_an_idle_variant_nothing_is_spilled(cluster: Cluster) -> None:
    slow, other = cluster.backend("slow", gated=True), cluster.backend("other")
    _, base = cluster.dispatcher([BackendSpec("slow", slow.url, "slow", 1.0, spill_at=1), other.spec(0.0001)])
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(predict, base) for _ in range(3)]
        wait_until(lambda: len(slow.paths) == 3)  # the planned split holds: no weighted variant takes a spill
        cluster.open_gate(slow)
        assert [f.result(timeout=20).headers["X-Infadapter-Variant"] for f in held] == ["slow"] * 3
    assert "dispatcher_backend_spilled_total{" not in http("GET", f"{base}/metrics").body


@pytest.mark.parametrize("failure", ["http500", "refused"])
def test_never_retried_on_the_same_variant(cluster: Cluster, failure: str) -> None:
    if failure == "refused":
        spec, bad = BackendSpec("only", "http://127.0.0.1:9", "only", 1), None
    else:
        bad = cluster.backend("only", status=503)
        spec = bad.spec(1)
    _, base = cluster.dispatcher([spec], eject_s=0)
    reply = predict(base)
    assert reply.status == (503 if bad else 502)
    assert reply.headers["X-Infadapter-Variant"] == "only"
    assert "error" in reply.body
    if bad is not None:
        assert len(bad.paths) == 1  # one attempt: no second try on the same variant


def test_client_errors_are_passed_through_without_ejection(cluster: Cluster) -> None:
    a, b = cluster.backend("a"), cluster.backend("b")
    _, base = cluster.dispatcher([a.spec(1), b.spec(1)])
    reply = predict(base, body={"not_instances": 1})
    assert reply.status == 400
    assert reply.body == {"error": "JSON with instances required"}
    assert DispatcherClient(base, TOKEN).stats()["ejected"] == []


def test_in_flight_bound_answers_503_overloaded(cluster: Cluster) -> None:
    slow = cluster.backend("slow", gated=True)
    _, base = cluster.dispatcher([slow.spec(1)], max_in_flight=2)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(predict, base) for _ in range(2)]
        wait_until(lambda: len(slow.paths) == 2)
        extra = [predict(base) for _ in range(4)]
        assert [r.status for r in extra] == [503] * 4
        assert all(r.body == {"error": "overloaded"} for r in extra)
        assert DispatcherClient(base, TOKEN).stats()["in_flight"] == 2
        cluster.open_gate(slow)
        assert [f.result(timeout=20).status for f in held] == [200, 200]
    assert len(slow.paths) == 2  # the rejected ones never reached the backend


def test_oversized_body_gets_413(cluster: Cluster) -> None:
    a = cluster.backend("a")
    _, base = cluster.dispatcher([a.spec()], max_body_bytes=4096)
    big = json.dumps({"instances": [{"b64": "A" * 5000}]}).encode()
    reply = http("POST", f"{base}/v1/models/m:predict", big)
    assert reply.status == 413
    assert "4096" in reply.body["error"]
    assert a.paths == []
    assert predict(base).status == 200  # small bodies still pass


def test_oversized_chunked_body_gets_413(cluster: Cluster) -> None:
    import http.client

    a = cluster.backend("a")
    _, base = cluster.dispatcher([a.spec()], max_body_bytes=4096)
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    conn.request("POST", "/v1/models/m:predict", body=iter([b"x" * 3000] * 4), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    assert "error" in json.loads(resp.read())
    conn.close()
    assert a.paths == []


def test_idle_connection_closed_by_the_backend_is_reused_safely(cluster: Cluster) -> None:
    # The backend drops idle keep-alive connections after 0.2 s; the dispatcher's pooled connection
    # is then stale and the next request must go out on a fresh one, without an error or ejection.
    a = cluster.backend("a", keepalive_timeout_s=0.2)
    _, base = cluster.dispatcher([a.spec()])
    assert predict(base).status == 200
    time.sleep(0.6)
    assert predict(base).status == 200
    assert DispatcherClient(base, TOKEN).stats()["ejected"] == []


@pytest.mark.parametrize("kind", ["chunked", "close"])
def test_chunked_and_non_keepalive_answers_are_forwarded(cluster: Cluster, kind: str) -> None:
    a = cluster.backend("a", chunked=kind == "chunked", close=kind == "close")
    _, base = cluster.dispatcher([a.spec()])
    for _ in range(3):  # the second and third use a fresh or reused connection as the backend allows
        reply = predict(base)
        assert reply.status == 200
        assert reply.body["predictions"] == [[0.25, 0.75]]
        assert reply.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("url", ["https://127.0.0.1:9", "https://{plain}"])
def test_https_backends_go_through_aiohttp_and_fail_over(cluster: Cluster, url: str) -> None:
    plain = cluster.backend("plain")
    good = cluster.backend("good")
    bad = BackendSpec("tls", url.format(plain=f"127.0.0.1:{plain.port}"), "tls", 1)
    _, base = cluster.dispatcher([bad, good.spec(1)], eject_s=60)
    replies = [predict(base) for _ in range(4)]
    assert [r.status for r in replies] == [200] * 4
    assert {r.headers["X-Infadapter-Variant"] for r in replies} == {"good"}
    assert DispatcherClient(base, TOKEN).stats()["ejected"] == ["tls"]


# -- metrics and stats --------------------------------------------------------------------------
def test_metrics_names_and_values(cluster: Cluster) -> None:
    a, b = cluster.backend("a"), cluster.backend("b")
    _, base = cluster.dispatcher([a.spec(0.7), b.spec(0.3)], slo_ms=500)
    for _ in range(10):
        predict(base)
    text = http("GET", f"{base}/metrics").body
    # service="": one service (backends without a service); Prometheus drops an empty label.
    assert 'dispatcher_requests_total{code="200",model="a",service=""} 7.0' in text
    assert 'dispatcher_requests_total{code="200",model="b",service=""} 3.0' in text
    # the SLO is a bucket bound, 2x the SLO the last
    assert 'dispatcher_request_latency_seconds_bucket{le="0.5",model="a",service=""}' in text
    assert 'dispatcher_request_latency_seconds_bucket{le="1.0",model="a",service=""}' in text
    assert 'dispatcher_request_latency_seconds_count{model="a",service=""} 7.0' in text
    assert "dispatcher_in_flight 0.0" in text
    assert 'dispatcher_backend_weight{model="a"} 0.7' in text
    assert 'dispatcher_backend_weight{model="b"} 0.3' in text
    DispatcherClient(base, TOKEN).set_backends([a.spec(1)])
    text = http("GET", f"{base}/metrics").body
    assert 'dispatcher_backend_weight{model="a"} 1.0' in text
    assert 'dispatcher_backend_weight{model="b"}' not in text  # a removed variant's weight disappears


@pytest.mark.parametrize(
    ("slo_ms", "must_include"),
    [(750, [0.005, 0.375, 0.75, 0.825, 1.5]), (100, [0.005, 0.05, 0.1, 0.11, 0.2])],
)
def test_latency_buckets_surround_the_slo(slo_ms: float, must_include: list[float]) -> None:
    buckets = latency_buckets(slo_ms)
    assert list(buckets) == sorted(buckets)
    assert set(must_include) <= set(buckets)
    assert max(buckets) == pytest.approx(2 * slo_ms / 1000)


def test_stats_json_for_the_control_loop(cluster: Cluster) -> None:
    fast, slow = cluster.backend("fast"), cluster.backend("slow", delay_s=0.12)
    _, base = cluster.dispatcher([fast.spec(1), slow.spec(1)], slo_ms=100)
    for _ in range(10):
        predict(base)
    predict(base, body={"bad": 1})  # a 400: the client's fault, not a violation
    stats = DispatcherClient(base, TOKEN).stats()
    assert stats["requests_total"] == 11
    assert stats["by_code"] == {"200": 10, "400": 1}
    assert stats["by_variant"] == {"fast": 5, "slow": 5}
    assert stats["requests_60s"] == 11
    assert stats["violations_60s"] == 5  # the slow variant's answers took > 100 ms; the 400 is not one
    assert stats["latency_ms_p99_60s"] >= 100
    assert stats["in_flight"] == 0
    assert stats["weights"] == {"fast": 0.5, "slow": 0.5}
    assert stats["slo_ms"] == 100
    # per_second: complete seconds only, contiguous, summing to at most the total.
    seconds = [s for s, _ in stats["per_second"]]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))) if seconds else True
    assert sum(n for _, n in stats["per_second"]) <= 11


def test_per_second_counts_with_an_injected_clock() -> None:
    from infadapter.serving.dispatcher import RequestStats

    stats = RequestStats(slo_ms=100, start_s=1000.0)
    for t in (1000.1, 1000.5, 1002.2, 1003.9):
        stats.arrival(t)
        stats.done(t, 50.0, 200, "a")
    snap = stats.snapshot(1004.5)
    # Seconds 1000..1003 complete (1004 is still running); 1001 had no request and shows 0.
    assert snap["per_second"] == [[1000, 2], [1001, 0], [1002, 1], [1003, 1]]
    assert snap["requests_60s"] == 4
    later = stats.snapshot(1070.0)  # 60 s on, the tail window is empty again
    assert later["requests_60s"] == 0
    assert later["latency_ms_p99_60s"] == 0.0


def test_parse_backends_defaults_model_to_name() -> None:
    specs = parse_backends({"backends": [{"name": "resnet18", "url": "http://127.0.0.1:9001/", "weight": 2}]})
    assert specs == (BackendSpec("resnet18", "http://127.0.0.1:9001", "resnet18", 2.0),)


# -- the admin token ----------------------------------------------------------------------------
def test_admin_token_from_file_env_or_generated(tmp_path: Path) -> None:
    given = tmp_path / "given.token"
    given.write_text("from-file\n")
    assert resolve_admin_token(given, 8500, env={}) == ("from-file", None)
    assert resolve_admin_token(None, 8500, env={"INFADAPTER_ADMIN_TOKEN": "from-env"}) == ("from-env", None)
    fresh = tmp_path / "sub" / "fresh.token"
    token, written = resolve_admin_token(fresh, 8500, env={})
    assert written == fresh
    assert fresh.read_text().strip() == token
    assert len(token) >= 32
    assert fresh.stat().st_mode & 0o777 == 0o600  # only the owner may read it
    token2, written2 = resolve_admin_token(None, 8501, env={"XDG_CACHE_HOME": str(tmp_path)})
    assert written2 == tmp_path / "infadapter" / "dispatcher-8501.token"
    assert token2 != token
    (tmp_path / "empty.token").write_text("  \n")
    with pytest.raises(BadInput, match="--admin-token-file"):
        resolve_admin_token(tmp_path / "empty.token", 8500, env={})


# -- the CLI process ----------------------------------------------------------------------------
def test_cli_dispatch_serves_and_drains_in_flight_requests_on_sigterm(cluster: Cluster, tmp_path: Path) -> None:
    slow = cluster.backend("slow", gated=True)
    port = free_port()
    token_file = tmp_path / "admin.token"
    env = {k: v for k, v in os.environ.items() if k != "INFADAPTER_ADMIN_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "dispatch",
            "--port",
            str(port),
            "--admin-token-file",
            str(token_file),
            "--backend",
            f"slow={slow.url}@1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _up(base), timeout_s=30)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        token = token_file.read_text().strip()
        assert DispatcherClient(base, token).backends()["backends"][0]["name"] == "slow"
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(predict, base) for _ in range(3)]
            wait_until(lambda: len(slow.paths) == 3)
            proc.send_signal(signal.SIGTERM)  # graceful: stop listening, let the three finish
            time.sleep(0.3)
            cluster.open_gate(slow)
            assert [f.result(timeout=20).status for f in held] == [200, 200, 200]
        assert proc.wait(timeout=20) == 0
        _, err = proc.communicate(timeout=5)
        assert f"listening on http://127.0.0.1:{port}" in err
        assert f"admin token written to {token_file}" in err
        assert token not in err  # the token itself is never printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(base: str) -> bool:
    try:
        return http("GET", f"{base}/healthz", timeout=1).status == 200
    except OSError:
        return False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "nourl"], "--backend: expected NAME=URL"),
        (["--backend", "a=ftp://x:1"], "backends[0].url"),
        (["--max-in-flight", "0"], "--max-in-flight"),
    ],
)
def test_cli_dispatch_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    env = {**os.environ, "INFADAPTER_ADMIN_TOKEN": "x"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", "0", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_dispatch_help_shows_examples() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "dispatch", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "Examples:" in out.stdout
    assert "python cli.py dispatch --port 8500" in out.stdout
