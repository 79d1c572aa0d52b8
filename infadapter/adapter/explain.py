"""``explain``: read a run folder's decisions back and say why each was taken; replay them offline.

The words come from the fields each record carries (``inputs``, ``terms``, ``binding``, ``runner_up``;
see :mod:`infadapter.core.explain`), so ``explain`` works without the profile. ``replay`` is the one
part that needs it: it re-solves every decision from its record (the profile at the recorded path,
checked against the recorded hash; the tuned alpha and budget; the plan before; the exact load; the
policy state) and compares the plan with the recorded one. A decision of several services (one joint solve)
is replayed with each service's recorded forecast and observed rate through the same joint policy
(:func:`infadapter.core.policies.joint_policy`), and compared service by service: the variants, cores and shares,
and the load each service's plan was made for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infadapter.adapter.records import LogRead, read_log
from infadapter.adapter.state import DECISIONS_FILE
from infadapter.errors import BadInput

#: Decisions whose plan differs from the one before by at most this many cores/share are "the same".
_TOL = 1e-6


def load_run(run_dir: Path) -> tuple[LogRead, Path]:
    """The run folder's decisions; BadInput when there is no decisions file."""
    path = Path(run_dir) / DECISIONS_FILE
    if not path.is_file():
        raise BadInput(f"--run-dir: no {DECISIONS_FILE} in {run_dir}; pass the run folder adapt printed")
    return read_log(path), path


def changed(rec: dict[str, Any]) -> bool:
    """The decision changed the plan (a create, resize or delete; a reweight alone does not count)."""
    d = str(rec.get("diff") or "")
    return any(d.startswith(w) or f"; {w}" in d for w in ("create", "resize", "delete"))


def _plan_words(plan: dict[str, Any] | None) -> str:
    from infadapter.core.explain import describe

    return describe(plan) if plan else "nothing"


def one_line_why(rec: dict[str, Any]) -> str:
    """Why, in one line: the first binding constraint and the runner-up's gap (or the policy's reason)."""
    binding = rec.get("binding") or []
    if not binding:
        return str(rec.get("explain_note") or rec.get("reason") or "")
    words = binding[0]["text"]
    if len(binding) > 1:
        words += f" (+{len(binding) - 1} more)"
    ru = rec.get("runner_up")
    if ru:
        from infadapter.core.explain import gap_words

        words += f"; runner-up {_plan_words(ru.get('plan'))} is {gap_words(ru['gap'])} lower"
    return words


def structured(rec: dict[str, Any]) -> dict[str, Any]:
    """The ``explain --json`` object of one decision."""
    return {
        "seq": rec.get("seq"),
        "run_id": rec.get("run_id", ""),
        "time_s": rec.get("time_s"),
        "trigger": rec.get("trigger"),
        "policy": rec.get("policy"),
        "changed": changed(rec),
        "diff": rec.get("diff"),
        "plan_before": rec.get("plan_before"),
        "plan_after": rec.get("plan_after"),
        "reason": rec.get("reason"),
        "why": one_line_why(rec),
        "inputs": rec.get("inputs"),
        "terms": rec.get("terms"),
        "binding": list(rec.get("binding") or []),
        "runner_up": rec.get("runner_up"),
        "explain_note": rec.get("explain_note", ""),
        "services": services_view(rec),
    }


def services_view(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each service of a decision of several services, from its record: the rate observed, the forecast, the
    load its plan was made for (below the forecast when the forecasts' headroom gave way), what it sheds, its
    variants (cores, share of its traffic) and accuracy; [] for a decision of one service."""
    plan = rec.get("plan_after") or {}
    seen = ((rec.get("inputs") or {}).get("services")) or {}
    out = []
    for o in plan.get("services") or []:
        name = o["name"]
        mine = [{"name": v["name"], "cores": v["cores"], "share": v.get("share", 0.0)}
                for v in plan.get("variants", []) if v.get("service") == name]
        out.append({"name": name, "observed_rps": (seen.get(name) or {}).get("observed_rps"),
                    "forecast_rps": (seen.get(name) or {}).get("forecast_rps"), "planned_rps": o.get("load"),
                    "shed_rps": o.get("shed", 0.0), "accuracy": o.get("accuracy"), "weight": o.get("weight"),
                    "accuracy_floor": o.get("accuracy_floor"), "floor_met": o.get("floor_met", True),
                    "cores": round(sum(float(v["cores"]) for v in mine), 9), "variants": mine,
                    "plan": _plan_words({"variants": mine})})
    return out


def _services_words(rec: dict[str, Any]) -> str:
    """``live: live-resnet152x0.5@100% for 9.3 req/s; batch: ...`` ('' for one service)."""
    parts = []
    for s in services_view(rec):
        load = f"{float(s['planned_rps'] or 0):.1f}"
        if s["forecast_rps"] is not None and float(s["planned_rps"] or 0) < float(s["forecast_rps"]) - 0.05:
            load += f" of {float(s['forecast_rps']):.1f} forecast"
        shed = f", shedding {float(s['shed_rps']):.1f}" if float(s["shed_rps"] or 0) > 1e-6 else ""
        parts.append(f"{s['name']}: {s['plan']} for {load} req/s{shed}")
    return "; ".join(parts)


def story(records: list[dict[str, Any]]) -> list[str]:
    """One line per transition (and per run start), each with its why."""
    lines: list[str] = []
    run = None
    for r in records:
        if r.get("run_id", "") != run:
            run = r.get("run_id", "")
            lines.append(f"run {run or '(unnamed)'}: policy {r.get('policy')}, first decision #{r.get('seq')}")
        if not changed(r) and r.get("trigger") != "start":
            continue
        per_service = _services_words(r)
        target = per_service or f"{_plan_words(r.get('plan_after'))} for {float(r.get('forecast_rps') or 0):.1f} req/s"
        lines.append(f"#{r.get('seq')} {r.get('trigger')}: {r.get('diff')} -> {target}: {one_line_why(r)}")
    return lines


def paragraph(rec: dict[str, Any]) -> str:
    """A short paragraph on one decision (``explain --decision N``)."""
    inp = rec.get("inputs") or {}
    hist = inp.get("history") or {}
    head = (f"Decision #{rec.get('seq')} ({rec.get('trigger')}, policy {rec.get('policy')}) saw "
            f"{float(rec.get('observed_rps') or 0):.1f} req/s")
    if hist.get("len"):
        head += f" (history {hist['len']} s, peak {hist.get('peak', 0):.1f})"
    headroom = inp.get("headroom")
    head += (f" and planned for {float(rec.get('forecast_rps') or 0):.1f} req/s"
             + (f" ({inp.get('forecaster')}, {100 * headroom:.0f}% headroom)." if headroom is not None else "."))
    services = services_view(rec)
    if services:
        head += " Per service: " + "; ".join(_service_sentence(sv) for sv in services) + "."
    after = f" It {'changed the plan (' + str(rec.get('diff')) + ')' if changed(rec) else 'kept the plan'}: " \
            f"{_plan_words(rec.get('plan_before'))} -> {_plan_words(rec.get('plan_after'))}."
    binding = rec.get("binding") or []
    note = str(rec.get("explain_note") or "")
    if binding:  # a note beside binding constraints (several services: no runner-up searched) is said too
        why = " Bound by: " + "; ".join(b["text"] for b in binding) + "." + (f" {note[0].upper()}{note[1:]}."
                                                                             if note else "")
    else:
        why = f" {note or rec.get('reason')}."
    ru = rec.get("runner_up")
    runner = f" Runner-up ({ru['kind'].replace('_', ' ')}): {ru['text']}." if ru else ""
    if ru and ru.get("note"):
        runner += f" ({ru['note'][0].upper()}{ru['note'][1:]}.)"
    return head + after + why + runner


def _service_sentence(s: dict[str, Any]) -> str:
    """One service of :func:`services_view` in words (``explain --decision N``)."""
    planned = float(s["planned_rps"] or 0)
    words = f"{s['name']} saw {float(s['observed_rps'] or 0):.1f} req/s, planned for {planned:.1f}"
    if s["forecast_rps"] is not None and abs(float(s["forecast_rps"]) - planned) > 0.05:
        words += f" (forecast {float(s['forecast_rps']):.1f})"
    words += f": {s['plan']}, {s['cores']:g} cores, accuracy {float(s['accuracy'] or 0):.2%}"
    if float(s["shed_rps"] or 0) > 1e-6:
        words += f", shedding {float(s['shed_rps']):.1f} req/s"
    if not s["floor_met"]:
        words += f", below its floor {float(s['accuracy_floor']):.2%}"
    return words


def terms_rows(rec: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(plan, accuracy, cost, transition, objective) rows: the chosen plan, the optimum, the runner-ups."""
    rows = []
    t = rec.get("terms") or {}
    if t:
        rows.append((f"chosen: {_plan_words(rec.get('plan_after'))}", *_fmt_terms(t)))
    opt = t.get("optimum")
    if opt:
        rows.append((f"solver's optimum (held back): {_plan_words(opt['plan'])}", *_fmt_terms(opt["terms"])))
    for kind, c in ((rec.get("runner_up") or {}).get("alternatives") or {}).items():
        label = f"runner-up, {kind.replace('_', ' ')}: {_plan_words(c['plan'])}"
        if c.get("terms"):
            *cells, _ = _fmt_terms(c["terms"])
            rows.append((label, *cells, f"{c['objective']:.5f} (-{c['gap']:.5f})"))
    return rows


def _fmt_terms(t: dict[str, Any]) -> tuple[str, str, str, str]:
    return (f"{t['accuracy']:.4f}", f"{t['cost']:.4f}", f"{t['transition']:.5f}", f"{t['objective']:.5f}")


# -- replay ---------------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    """What :func:`replay` found: decisions re-solved, matched, differing (with the difference), skipped."""

    total: int = 0
    reproduced: int = 0
    differ: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differ and not self.skipped and self.total > 0

    def as_dict(self) -> dict[str, Any]:
        return {"decisions": self.total, "reproduced": self.reproduced, "ok": self.ok, "differ": self.differ,
                "skipped": self.skipped}


def _cores_shares(plan: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    return {v["name"]: (float(v["cores"]), float(v.get("share", 0.0))) for v in (plan or {}).get("variants", [])}


def plan_difference(recorded: dict[str, Any] | None, replayed: dict[str, Any]) -> str:
    """'' when both plans run the same variants on the same cores with the same shares, else what differs."""
    a, b = _cores_shares(recorded), _cores_shares(replayed)
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"{name}: recorded {a[name][0]:g} cores, replay does not run it")
        elif name not in a:
            out.append(f"{name}: replay runs it on {b[name][0]:g} cores, the record does not")
        elif abs(a[name][0] - b[name][0]) > _TOL or abs(a[name][1] - b[name][1]) > 1e-4:
            out.append(f"{name}: recorded {a[name][0]:g} cores @ {a[name][1]:.2%}, "
                       f"replay {b[name][0]:g} cores @ {b[name][1]:.2%}")
    # Several services: each service's plan was made for a load (its forecast, or less where the headroom gave way).
    la, lb = _service_loads(recorded), _service_loads(replayed)
    for name in sorted(set(la) | set(lb)):
        if name not in lb or name not in la:
            out.append(f"service {name}: {'only the record' if name in la else 'only the replay'} plans for it")
        elif abs(la[name] - lb[name]) > 1e-6 * max(1.0, abs(la[name])):
            out.append(f"service {name}: recorded plan for {la[name]:.3f} req/s, replay {lb[name]:.3f}")
    return "; ".join(out)


def _service_loads(plan: dict[str, Any] | None) -> dict[str, float]:
    return {o["name"]: float(o.get("load", 0.0)) for o in (plan or {}).get("services") or []}


def complete_runner_ups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records, each whose runner-up skipped the other-variant-set search (a decision of a solving policy
    that kept its plan: the run saves that solve) completed with it from its replay inputs; a record that
    cannot be replayed (profile changed or gone) stays as it is."""
    from infadapter.core import explain as core
    from infadapter.core.plan import Plan
    from infadapter.core.policies import entry

    profiles: dict[ReplayKey, Any] = {}
    out = []
    for rec in records:
        ru, ctx_rec = rec.get("runner_up"), rec.get("replay") or {}
        if services_view(rec):  # a joint plan of several services: no runner-up search (core.explain.SERVICES_NOTE)
            out.append(rec)
            continue
        optimum = dict(((rec.get("terms") or {}).get("optimum") or {}).get("plan") or rec.get("plan_after") or {})
        try:
            solving = entry(str(ctx_rec.get("policy", ""))).name in core.SOLVING
        except BadInput:
            solving = False
        skipped = (ru.get("note") == core.NOT_SEARCHED) if ru else (solving and bool(rec.get("binding"))
                                                                     and bool(optimum.get("feasible")))
        if not skipped or "profile" not in ctx_rec:
            out.append(rec)
            continue
        try:
            profile = replay_profile(ctx_rec, profiles)
        except (ValueError, BadInput):
            profile = "profile unreadable"
        if isinstance(profile, str):
            out.append(rec)
            continue
        before = rec.get("plan_before")
        # The solver's own plan: without the idle variants the keep-warm wrapper added (share 0).
        optimum["variants"] = [v for v in optimum.get("variants", []) if float(v.get("share", 0)) > 1e-9]
        ru = core.with_other_sets(profile, str(ctx_rec["policy"]), float(ctx_rec["load_rps"]),
                                  Plan.from_dict(before) if before else None, Plan.from_dict(optimum), ru)
        out.append({**rec, "runner_up": ru})
    return out


#: A replayed profile's identity: path, alpha, budget, capacity scale, largest pod's cores (None: the file's).
ReplayKey = tuple[str, float, float, float, float | None]


def replay_profile(ctx_rec: dict[str, Any], cache: dict[ReplayKey, Any]) -> Any:
    """The profile a record's decision was solved on (its ``replay`` inputs: the profile at the recorded
    path, checked against the recorded hash, tuned with the run's alpha and budget, scaled by the start-up
    calibration, with the largest pod the Kubernetes backend found on the cluster), or a string saying why it
    cannot be had. ``cache`` keeps the profiles loaded so far."""
    from infadapter.core.profile import load_profile

    path = Path(ctx_rec["profile"])
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"profile {path} unreadable ({exc.strerror or exc})"
    if ctx_rec.get("profile_sha256") and digest != ctx_rec["profile_sha256"]:
        return f"profile {path} changed since the run (sha256 differs)"
    # capacity_scale: the local backend's start-up calibration on a machine slower than the profile's.
    pod = ctx_rec.get("max_pod_cores")
    key = (str(path), float(ctx_rec["alpha"]), float(ctx_rec["budget"]), float(ctx_rec.get("capacity_scale", 1.0)),
           None if pod is None else float(pod))
    if key not in cache:
        tuned = load_profile(path).tuned(alpha=key[1], budget=key[2])
        if key[4] is not None and key[4] != tuned.max_pod_cores:
            # The Kubernetes backend plans pods no larger than the cluster's nodes (KubernetesBackend.size_pods).
            tuned = tuned.with_overrides(max_pod_cores=key[4])
        cache[key] = tuned.scaled_capacity(key[3]) if key[3] != 1.0 else tuned
    return cache[key]


def replay(records: list[dict[str, Any]]) -> ReplayReport:
    """Re-solve every decision from its record; see the module doc."""
    from infadapter.core.explain import state_from_dict
    from infadapter.core.plan import Plan
    from infadapter.core.policies import Context

    report = ReplayReport()
    profiles: dict[ReplayKey, Any] = {}
    for rec in records:
        report.total += 1
        seq = rec.get("seq")
        ctx_rec = rec.get("replay") or {}
        if "profile" not in ctx_rec:
            report.skipped.append({"seq": seq, "why": "the record has no replay inputs (written before explain)"})
            continue
        profile = replay_profile(ctx_rec, profiles)
        if isinstance(profile, str):
            report.skipped.append({"seq": seq, "why": profile})
            continue
        try:
            state = state_from_dict(ctx_rec.get("policy_state"))
            policy, loads = _replay_policy(ctx_rec, profile)
        except ValueError as exc:
            report.skipped.append({"seq": seq, "why": str(exc)})
            continue
        before = rec.get("plan_before")
        current = Plan.from_dict(before, "replay.plan_before") if before else None
        decision = policy.decide(Context(profile=profile, now_s=float(rec.get("time_s") or 0.0),
                                         forecast_rps=float(ctx_rec["load_rps"]), current=current, state=state,
                                         **loads))
        why = plan_difference(rec.get("plan_after"), decision.plan.as_dict())
        if why:
            report.differ.append({"seq": seq, "difference": why})
        else:
            report.reproduced += 1
    return report


def _replay_policy(ctx_rec: dict[str, Any], profile: Any) -> tuple[Any, dict[str, Any]]:
    """The policy a record's decision ran (the joint policy for a profile of several services, as the runner
    builds it) and the Context's per-service loads; ValueError saying why a record cannot be replayed."""
    from infadapter.core.policies import entry, joint_policy, make_policy

    name, min_gain = str(ctx_rec["policy"]), float(ctx_rec.get("min_gain", 0.0))
    if entry(name).upstream:
        raise ValueError(f"the cluster's own {entry(name).upstream.upper()} decided ({name}): there is no decision "
                         "of ours to replay")
    if not profile.services:
        if "load_rps" not in ctx_rec:
            raise ValueError("the record has no replay inputs (written before explain)")
        return make_policy(name, profile, int(ctx_rec.get("stabilization_intervals", 1)), min_gain=min_gain), {}
    by_service = ctx_rec.get("load_by_service")
    if not isinstance(by_service, dict) or "load_rps" not in ctx_rec:
        raise ValueError("the record has no per-service loads (written before explain replayed several services)")
    if set(by_service) != set(profile.service_names):
        raise ValueError(f"the record's services ({', '.join(sorted(by_service))}) are not the profile's "
                         f"({', '.join(profile.service_names)})")
    observed = ctx_rec.get("observed_by_service") or {}
    return joint_policy(profile, min_gain, name, ctx_rec.get("split_budgets")), {
        "forecast_by_service": {n: float(by_service[n]) for n in profile.service_names},
        "observed_by_service": {n: float(v) for n, v in observed.items()}}
