"""The dispatcher's per-service routing with real HTTP (real aiohttp backends, no mocks): several services on one
dispatcher, each under its own model name, each split by its own shares."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import pytest

from infadapter.errors import BadInput
from infadapter.serving.dispatcher import BackendSpec, DispatcherClient, parse_backends
from tests.test_dispatcher_support import TOKEN, Cluster, http, predict


def _spec(backend, service: str, weight: float) -> BackendSpec:  # type: ignore[no-untyped-def]
    return replace(backend.spec(weight), service=service)


def test_each_service_goes_to_its_own_variants_by_its_own_shares(cluster: Cluster) -> None:
    # live: a 3 : 1 split over l18/l50; batch: all of it on b18. Sequential requests over whole SWRR cycles
    # split exactly: 40 live requests -> 30 + 10; 20 batch requests -> 20 on b18, none on live's variants.
    l18, l50, b18 = cluster.backend("l18"), cluster.backend("l50"), cluster.backend("b18")
    _, base = cluster.dispatcher([_spec(l18, "live", 0.75), _spec(l50, "live", 0.25), _spec(b18, "batch", 1.0)])
    live = Counter(predict(base, "live").headers["X-Infadapter-Variant"] for _ in range(40))
    batch = Counter(predict(base, "batch").headers["X-Infadapter-Variant"] for _ in range(20))
    assert live == {"l18": 30, "l50": 10}
    assert batch == {"b18": 20}
    assert (len(l18.paths), len(l50.paths), len(b18.paths)) == (30, 10, 20)
    # A name that is no service is a 404 naming the services, sent nowhere.
    other = predict(base, "resnet")
    assert other.status == 404 and "services: live, batch" in other.body["error"]
    assert len(b18.paths) == 20
    assert http("GET", f"{base}/v1/models/live").status == 200
    assert http("GET", f"{base}/v1/models/resnet").status == 404
    # Shares are within each service: the admin view and the weight metric say 0.75 / 0.25 / 1.
    client = DispatcherClient(base, TOKEN)
    assert {b["name"]: b["share"] for b in client.backends()["backends"]} == {"l18": 0.75, "l50": 0.25, "b18": 1.0}
    time.sleep(1.1)  # per_second lists complete seconds only
    stats = client.stats()
    assert stats["weights"] == {"l18": 0.75, "l50": 0.25, "b18": 1.0}
    # The per-service counts the loop observes: arrivals per second and totals by service (the 404 in neither).
    assert {k: v["requests_total"] for k, v in stats["by_service"].items()} == {"live": 40, "batch": 20}
    assert {k: sum(c for _, c in v) for k, v in stats["per_second_by_service"].items()} == {"live": 40, "batch": 20}
    assert stats["requests_total"] == 61
    text = http("GET", f"{base}/metrics").body
    assert 'dispatcher_requests_total{code="200",model="l18",service="live"} 30.0' in text
    assert 'dispatcher_requests_total{code="200",model="b18",service="batch"} 20.0' in text
    assert 'dispatcher_backend_weight{model="b18"} 1.0' in text


def test_a_retry_stays_within_the_service(cluster: Cluster) -> None:
    # live's only variant fails: its request is not retried on batch's variant (another service's model), and
    # batch keeps serving.
    bad, b18 = cluster.backend("bad", status=500), cluster.backend("b18")
    _, base = cluster.dispatcher([_spec(bad, "live", 1.0), _spec(b18, "batch", 1.0)])
    assert predict(base, "live").status == 500
    assert b18.paths == []
    assert predict(base, "batch").status == 200


def test_one_service_keeps_any_model_name(cluster: Cluster) -> None:
    a = cluster.backend("a")
    _, base = cluster.dispatcher([a.spec(1.0)])
    assert predict(base, "anything").status == 200
    assert "by_service" not in DispatcherClient(base, TOKEN).stats()


def test_routes_change_per_service_in_one_swap(cluster: Cluster) -> None:
    l18, l50, b18 = cluster.backend("l18"), cluster.backend("l50"), cluster.backend("b18")
    _, base = cluster.dispatcher([_spec(l18, "live", 1.0), _spec(b18, "batch", 1.0)])
    client = DispatcherClient(base, TOKEN)
    client.set_backends([_spec(l50, "live", 1.0), _spec(b18, "batch", 1.0)])
    assert {predict(base, "live").headers["X-Infadapter-Variant"] for _ in range(4)} == {"l50"}


@pytest.mark.parametrize("payload, message", [
    ([{"name": "a", "url": "http://127.0.0.1:1", "weight": 1, "service": "live"},
      {"name": "b", "url": "http://127.0.0.1:2", "weight": 1}],
     "backends[1].service: give every backend its service, or none"),
    ([{"name": "a", "url": "http://127.0.0.1:1", "weight": 1, "service": "live"},
      {"name": "b", "url": "http://127.0.0.1:2", "weight": 0, "service": "batch"}],
     "backends: the weights of service batch must have a positive sum"),
    ([{"name": "a", "url": "http://127.0.0.1:1", "weight": 1, "service": "a b"}],
     "backends[0].service: a service name of letters"),
])
def test_bad_services_are_one_line_naming_the_field(payload, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_backends(payload)


@pytest.mark.slow
def test_the_load_generator_replays_one_stream_per_service(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Two services at 15 and 5 req/s for 2 s through one dispatcher: every row names its service, each service's
    # requests were answered by its own variant only, and requests.csv keeps its columns with service last.
    import csv

    from infadapter.observe.loadgen import CSV_COLUMNS, Stream, run_streams

    l18, b18 = cluster.backend("l18"), cluster.backend("b18")
    _, base = cluster.dispatcher([_spec(l18, "live", 1.0), _spec(b18, "batch", 1.0)])
    out = tmp_path / "requests.csv"
    summary = run_streams([Stream("live", f"{base}/v1/models/live:predict", [15.0, 15.0], 300.0),
                           Stream("batch", f"{base}/v1/models/batch:predict", [5.0, 5.0], 600.0)],
                          out_path=out, seed=1, images=1, resolution=16)
    assert summary.sent == summary.ok > 0
    assert set(summary.by_service) == {"live", "batch"}
    assert summary.by_service["live"]["by_variant"] == {"l18": summary.by_service["live"]["ok"]}
    assert summary.by_service["batch"]["by_variant"] == {"b18": summary.by_service["batch"]["ok"]}
    assert summary.by_service["live"]["requests"] + summary.by_service["batch"]["requests"] == summary.sent
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS and CSV_COLUMNS[-1] == "service"
    assert {(r["service"], r["variant"]) for r in rows} == {("live", "l18"), ("batch", "b18")}
    assert [float(r["scheduled_s"]) for r in rows] == sorted(float(r["scheduled_s"]) for r in rows)
