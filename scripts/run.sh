#!/usr/bin/env bash
# Set up (venv, requirements, Debian packages as root) and run the main job: the adaptive inference
# service on the local backend (real ONNX Runtime servers under cgroup CPU limits, the dispatcher,
# Prometheus when installed) driven by the paper's 21-minute Twitter-trace window at scale 0.25 (a
# 12 -> 60 req/s burst: more than ResNet-152, the most accurate variant, serves on this machine's
# 1.75-core budget, so the run trades accuracy for capacity and mixes variants) played 6x faster
# (about 3.5 minutes); a summary and a plot (runs/adapt/adapt.png) at the end, then what the warm VPA
# of the same accuracy (ResNet-101) and HPA on it would have done on the same arrivals: the
# simulator's rows, labelled as simulated (nothing else runs live).
# The policy is infadapter:standby: the budget the plan leaves idle runs ResNet-18 with no share, and the
# dispatcher hands it what a full server's queue would hold past the SLO (the burst's first seconds,
# before the overload re-plan's servers are up); docs/adapt.md has the figures with and without it.
# Extra arguments go to `cli.py adapt` (e.g. --policy vpa:resnet50, --duration 60); --window, --scale,
# --speedup, --interval, --profile and --run-dir are read from them for the simulated rows too.
set -euo pipefail
cd "$(dirname "$0")/.."
# The main job runs on the local backend: the Kubernetes control plane (for the tests) is not built here.
INFADAPTER_SKIP_K8S_BUILD=1 bash scripts/setup.sh
window=paper scale=0.25 speedup=6 interval=5 profile=profiles/local.yaml run_dir=runs/adapt json=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  next="${args[i + 1]:-}"
  case "${args[i]}" in
    --window) window=$next ;;  --scale) scale=$next ;;  --speedup) speedup=$next ;;
    --interval) interval=$next ;;  --profile) profile=$next ;;  --run-dir) run_dir=$next ;;
    --json) json=1 ;;
  esac
done
.venv/bin/python cli.py adapt --profile "$profile" --window "$window" --scale "$scale" --speedup "$speedup" \
  --interval "$interval" --run-dir "$run_dir" --policy infadapter:standby "$@"
# The baselines on the same arrivals, simulated with the local backend's service model. With --json the
# rows go to stderr, so that stdout stays the one JSON object of the run.
[ -f "$run_dir/requests.csv" ] || exit 0  # no replayed load (e.g. --rate without requests): nothing to compare
{
  echo
  echo "SIMULATED, not run live: the warm VPA of the same accuracy and HPA on the same $(($(wc -l < "$run_dir/requests.csv") - 1)) requests"
  .venv/bin/python cli.py simulate --profile "$profile" --window "$window" --scale "$scale" --speedup "$speedup" \
    --interval "$interval" --service-model cfs --service-cv 0.2 --arrivals "$run_dir/requests.csv" \
    --policy infadapter,vpa:resnet101,hpa:resnet101
} > >(if [ "$json" = 1 ]; then cat >&2; else cat; fi)
