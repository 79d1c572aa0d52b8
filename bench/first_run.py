"""The first run a new user makes, judged: `bash scripts/run.sh --json` several times in a row, each
run's requests.csv read for what the main job must show.

    python bench/first_run.py                    # three runs of scripts/run.sh with its defaults
    python bench/first_run.py --runs 1 -- --speedup 10
    python bench/first_run.py --judge runs/adapt # judge an existing run folder, run nothing

Per run: SLO violations (late, failed or dropped, as core/slo.py says), each variant's share of the
requests, and served accuracy (the profile's accuracy of the variant that answered) in the run's first
minute against its busiest minute (wall-clock minutes of the replay: the faster variants should carry
the burst). The targets (issue 24) are printed beside: violations <= 1 %, at least two variants each
serving >= 5 %, a dip of >= 1.5 accuracy points.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infadapter.core import slo
from infadapter.core.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]


def judge(run_dir: Path, profile_path: Path, slo_ms: float | None = None) -> dict[str, Any]:
    """The main job's criteria for one run folder (requests.csv as the load generator wrote it)."""
    profile = load_profile(profile_path)
    accuracy = {v.name: v.accuracy for v in profile.variants}
    limit = slo_ms or profile.slo_ms
    try:
        with (run_dir / "requests.csv").open() as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise SystemExit(f"error: {run_dir}: no readable requests.csv ({exc.strerror}); "
                         "give a finished run folder") from None
    if not rows:
        raise SystemExit(f"error: {run_dir}/requests.csv has no requests")
    late = sum(1 for r in rows if slo.violated(r["outcome"] == "ok", float(r["latency_ms"] or "inf"), limit))
    shares = Counter(r["variant"] for r in rows if r["variant"])
    minutes: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["variant"] in accuracy:
            minutes[int(float(r["scheduled_s"]) // 60)].append(accuracy[r["variant"]])
    busiest = max(minutes, key=lambda m: len(minutes[m]))
    first = sum(minutes[0]) / len(minutes[0])
    busy = sum(minutes[busiest]) / len(minutes[busiest])
    share = {k: v / len(rows) for k, v in shares.most_common()}
    out = {
        "run_dir": str(run_dir), "requests": len(rows), "slo_violation_rate": late / len(rows),
        "variant_shares": share, "first_minute_accuracy": first, "busiest_minute": busiest,
        "busiest_minute_accuracy": busy, "accuracy_dip_points": 100 * (first - busy),
    }
    out["meets"] = {
        "violations <= 1%": out["slo_violation_rate"] <= 0.01,
        ">= 2 variants >= 5%": sum(1 for s in share.values() if s >= 0.05) >= 2,
        "dip >= 1.5 pt": out["accuracy_dip_points"] >= 1.5,
    }
    return out


def line(r: dict[str, Any]) -> str:
    shares = ", ".join(f"{k} {v:.0%}" for k, v in r["variant_shares"].items())
    met = "all met" if all(r["meets"].values()) else "NOT MET: " + ", ".join(k for k, v in r["meets"].items() if not v)
    return (f"{r['requests']} requests, violations {r['slo_violation_rate']:.2%}; {shares}; accuracy first minute "
            f"{r['first_minute_accuracy']:.2%}, busiest (minute {r['busiest_minute']}) "
            f"{r['busiest_minute_accuracy']:.2%}: dip {r['accuracy_dip_points']:.2f} pt; {met}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "first-run", help="folder of the run folders")
    ap.add_argument("--profile", type=Path, default=ROOT / "profiles" / "local.yaml")
    ap.add_argument("--judge", type=Path, default=None, help="judge this run folder only")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("extra", nargs="*", help="after --: arguments for scripts/run.sh")
    args = ap.parse_args()
    if args.judge is not None:
        results = [judge(args.judge, args.profile)]
    else:
        results = []
        for i in range(args.runs):
            run_dir = args.out / f"run{i + 1}"
            cmd = ["bash", str(ROOT / "scripts" / "run.sh"), "--json", "--run-dir", str(run_dir), *args.extra]
            done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                print(f"run {i + 1}: scripts/run.sh exited {done.returncode}", file=sys.stderr)
                return 1
            results.append(judge(run_dir, args.profile))
            if not args.json:
                print(f"run {i + 1}: {line(results[-1])}", flush=True)
    if args.json:
        print(json.dumps({"runs": results}, indent=1))
    elif args.judge is not None:
        print(line(results[0]))
    return 0 if all(all(r["meets"].values()) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
