"""Each adaptation mechanism's share of the result: the paper's setting, then one mechanism added at a
time up to today's defaults, on the same windows and arrivals, infadapter vs the oracle of the same
setting. A side-by-side table (means over the windows), not a pass/fail timing.

    python bench/adaptation.py                       # the paper window and two public busy windows
    python bench/adaptation.py --windows paper,1768200:1260,1554600:1260,1408500:1260 --json

Rows are cumulative: each adds one mechanism to the row above. The headroom rows change only the
learned forecaster's calibrated factor (the quantile of under-predicted minutes it is calibrated for).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infadapter.core.control import DAY_S, HISTORY_S
from infadapter.core.forecast import Learned, default_model_path, make_forecaster
from infadapter.core.profile import load_profile
from infadapter.observe.trace import load_history_before, load_window
from infadapter.sim import simulation as sim

ROOT = Path(__file__).resolve().parents[1]

#: (label, settings over the paper's, forecaster factor or None for the model's own).
STEPS: list[tuple[str, dict[str, Any], float | None]] = [
    ("paper: 30 s, ewma+10%, 2-min warm-up, replace", {}, None),
    ("+ learned forecaster (factor 1.05)", {"forecaster": "learned"}, None),
    ("+ 10-s interval", {"forecaster": "learned", "interval_s": 10.0}, None),
    ("+ warm start (history, first plan at 0 s)", {"forecaster": "learned", "interval_s": 10.0, "warm": True}, None),
    ("+ react on the 3-s rate (1-s checks)", {"forecaster": "learned", "interval_s": 10.0, "warm": True,
                                              "react": True}, None),
    ("+ in-place resize, grow first", {"forecaster": "learned", "interval_s": 10.0, "warm": True, "react": True,
                                       "in_place_resize": True}, None),
    ("+ bounded queues (today's defaults)", {"defaults": True}, None),
    ("defaults, headroom factor 1.00 (median)", {"defaults": True}, 1.0),
    ("defaults, headroom factor of 6.5% under", {"defaults": True}, "q0.065"),  # type: ignore[list-item]
]


def config(settings: dict[str, Any], window: str) -> sim.SimConfig:
    s = dict(settings)
    if s.pop("defaults", False):
        base: dict[str, Any] = {}
        s["warm"] = True
    else:
        base = dict(sim.PAPER_SETTING)
    warm = s.pop("warm", False)
    if warm:
        day = load_history_before(window, None, 1.0, 1.0, DAY_S)
        s.update(first_plan_ready=True, warmup_s=0.0, history_before=tuple(day[-HISTORY_S:]), rates_before=tuple(day))
    return sim.SimConfig.of(**{**base, **s})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="paper,1768200:1260,1554600:1260")
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "paper.yaml"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    model = Learned.load(default_model_path())
    q065 = model.meta.get("factor_at", {}).get("0.065")
    rows = []
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    data = {w: load_window(w) for w in windows}
    for label, settings, factor in STEPS:
        if factor == "q0.065":
            if q065 is None:
                continue
            factor = q065
        per = []
        for w in windows:
            cfg = config(settings, w)
            fc = make_forecaster(cfg.forecaster)
            if factor is not None and isinstance(fc, Learned):
                fc = dataclasses.replace(fc, factor=float(factor), fallback=None)
            arr = sim.make_arrivals(data[w], cfg.seed)
            ia = sim.simulate(profile, data[w], "infadapter", cfg, arrivals=arr, forecaster=fc)
            orc = sim.simulate(profile, data[w], "oracle", cfg, arrivals=arr, forecaster=fc)
            per.append({"window": w, "violations": ia.slo_violation_rate, "cores": ia.mean_cores,
                        "cores_x_oracle": ia.mean_cores / orc.mean_cores,
                        "accuracy_minus_oracle_pt": 100 * (ia.mean_accuracy - orc.mean_accuracy),
                        "oracle_violations": orc.slo_violation_rate})
        n = len(per)
        rows.append({"setting": label, "windows": per,
                     "mean_violations": sum(p["violations"] for p in per) / n,
                     "max_violations": max(p["violations"] for p in per),
                     "mean_cores_x_oracle": sum(p["cores_x_oracle"] for p in per) / n,
                     "mean_accuracy_minus_oracle_pt": sum(p["accuracy_minus_oracle_pt"] for p in per) / n})
        if not args.json:
            r = rows[-1]
            print(f"{label:44s} viol mean {r['mean_violations']:7.2%} max {r['max_violations']:7.2%}  "
                  f"cores x{r['mean_cores_x_oracle']:.3f} of oracle  "
                  f"accuracy {r['mean_accuracy_minus_oracle_pt']:+.2f} pt", flush=True)
    if args.json:
        print(json.dumps({"windows": windows, "rows": rows}))


if __name__ == "__main__":
    main()
