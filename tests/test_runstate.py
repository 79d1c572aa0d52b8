"""The state file's typed form: round trips, and a file from another version or a torn write reads safely."""

from __future__ import annotations

import json

from infadapter.adapter.runstate import AdapterInfo, LoopSnapshot, RunState


def test_round_trip_through_json() -> None:
    info = AdapterInfo(pid=12, started_s=1.5, policy="infadapter", backend="kubernetes", slo_ms=750.0,
                       replay=True, namespace="ns")
    snap = LoopSnapshot(time_s=3.0, policy="infadapter", plan={"variants": []}, observed_rps=4.0,
                        monitor={"source": "prometheus"}, totals={"decisions": 2}, write_error="disk full")
    assert AdapterInfo.from_dict(json.loads(json.dumps(info.as_dict()))) == info
    assert LoopSnapshot.from_dict(json.loads(json.dumps(snap.as_dict()))) == snap
    st = RunState.from_dict({"adapter": info.as_dict(), "loop": snap.as_dict(), "prometheus": {"url": "http://p"},
                             "servers": [{"name": "resnet18"}], "dispatcher": {"port": 1}, "updated_s": 9})
    assert (st.adapter, st.loop, st.prometheus_url, st.updated_s) == (info, snap, "http://p", 9.0)
    assert st.servers == ({"name": "resnet18"},) and st.dispatcher == {"port": 1}


def test_unknown_missing_and_ill_typed_keys_take_defaults() -> None:
    st = RunState.from_dict({"adapter": {"pid": "12", "backend": 3, "started_s": True, "future_key": 1},
                             "loop": {"plan": [1, 2], "observed_rps": "fast", "degraded": None},
                             "servers": "nope", "prometheus": ["x"]})
    assert st.adapter == AdapterInfo()
    assert st.loop == LoopSnapshot()
    assert st.servers == () and st.prometheus_url is None
    assert RunState.from_dict(None) == RunState.from_dict([]) == RunState()
