"""Decision -> serving time on a real (local) Kubernetes control plane: resize vs new variant vs rolling.

Starts ``scripts/local-cluster.sh up --ready-delay load-time`` in a temporary folder, so kwok makes a
pod Ready after the profile's TF Serving load time of its variant (paper profile: 6.4-8.5 s); an
in-place resize completes after kwok's resize stage (0.5 s, a kubelet changing a CPU quota). Then,
with the kubernetes backend, times ``apply(plan)`` from the call (the decision) until it returns with
the new plan routed, for three transitions of resnet50, each from the same start (4 cores):

- ``resize``: 4 -> 6 cores in place (``pods/resize``; the pod keeps running);
- ``new-variant``: resnet34 (2 cores) added next to it, make-before-break;
- ``rolling``: 4 -> 6 cores by rolling replacement (``in_place=never``: a new pod loads the model).

Prints the median of ``--repeat`` runs of each and the ratios to the in-place resize. It measures the
control plane's own path (API server, controllers, scheduler, kwok's stages), not a real kubelet.

``--real-node`` (root) runs the same three transitions on the local cluster's real node instead
(``up --real-node --project-image``): our ONNX server image loading the model from the model store,
a kubelet writing the CPU quota. The local profile's sizes, which fit the node's 2 CPUs: resnet50 from
0.5 core, resized (or rolled) to 1 core, and resnet34 on 0.5 core added:

    .venv/bin/python bench/k8s_transitions.py [--repeat 3] [--json]
    .venv/bin/python bench/k8s_transitions.py --real-node [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infadapter.backends.kubernetes.api import KubeOptions  # noqa: E402
from infadapter.backends.kubernetes.backend import KubernetesBackend  # noqa: E402
from infadapter.core.plan import Plan  # noqa: E402
from infadapter.core.profile import load_profile  # noqa: E402
from infadapter.render import RenderConfig  # noqa: E402

#: (start, {transition: (target, in_place)}) for kwok nodes (the paper's sizes) and the real node (2 CPUs).
KWOK = ({"resnet50": (4, 1.0)}, {
    "resize": ({"resnet50": (6, 1.0)}, "auto"),
    "new-variant": ({"resnet50": (4, 0.6), "resnet34": (2, 0.4)}, "auto"),
    "rolling": ({"resnet50": (6, 1.0)}, "never"),
})
REAL = ({"resnet50": (0.5, 1.0)}, {
    "resize": ({"resnet50": (1, 1.0)}, "auto"),
    "new-variant": ({"resnet50": (0.5, 0.6), "resnet34": (0.5, 0.4)}, "auto"),
    "rolling": ({"resnet50": (1, 1.0)}, "never"),
})


def plan(variants: dict[str, tuple[float, float]]) -> Plan:
    return Plan.from_dict({"load": 50, "variants": [{"name": n, "cores": c, "share": s}
                                                    for n, (c, s) in variants.items()]})


def one(kubeconfig: str, profile, how: str, cases: tuple = KWOK) -> float:
    start, targets = cases
    target, in_place = targets[how]
    backend = KubernetesBackend(profile, RenderConfig(namespace="infadapter"),
                                KubeOptions(kubeconfig=kubeconfig, ready_timeout_s=120, in_place=in_place))
    try:
        backend.teardown()
        _wait_gone(backend)
        first = backend.apply(plan(start))
        assert first.ok, first.error
        t0 = time.perf_counter()
        result = backend.apply(plan(target))
        took = time.perf_counter() - t0
        assert result.ok, result.error
        expect = "in place" if how == "resize" else "create" if how == "new-variant" else "rolling replacement"
        assert any(expect in a for a in result.actions), result.actions
        return took
    finally:
        backend.teardown()
        backend.stop()


def _wait_gone(backend: KubernetesBackend) -> None:
    for _ in range(300):
        pods = backend.api.list("Pod", backend.config.model_server_selector()).get("items", [])
        if not pods:
            return
        time.sleep(0.1)


def _models_on_the_store(state: str, profile) -> None:
    """The profile's ONNX models in the model store the cluster binds (the checkout's models/, else built)."""
    from infadapter.backends.local.setup import ensure_models

    store = Path(state) / "volumes" / "models"
    for v in profile.variants:
        src = ROOT / "models" / (v.model or v.name)
        if src.is_dir() and not (store / src.name).exists():
            shutil.copytree(src, store / src.name)
    ensure_models(profile, store, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real-node", action="store_true", help="a real kubelet and our image (root), not kwok")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.real_node:
        profile = load_profile(ROOT / "profiles" / "local.yaml")
        cases, flags = REAL, ["--real-node", "--project-image"]
    else:
        profile = load_profile(ROOT / "profiles" / "paper.yaml").with_overrides(max_pod_cores=8)
        cases, flags = KWOK, ["--ready-delay", "load-time"]
    with tempfile.TemporaryDirectory(prefix="k8s-bench-") as state:
        env = {**os.environ, "INFADAPTER_CLUSTER_DIR": state}
        up = subprocess.run(["bash", str(ROOT / "scripts" / "local-cluster.sh"), "up", *flags],
                            env=env, stdout=subprocess.PIPE, text=True, check=True)
        kubeconfig = up.stdout.strip().splitlines()[-1]
        try:
            if args.real_node:
                _models_on_the_store(state, profile)
            times = {how: [one(kubeconfig, profile, how, cases) for _ in range(args.repeat)] for how in cases[1]}
        finally:
            subprocess.run(["bash", str(ROOT / "scripts" / "local-cluster.sh"), "down"], env=env,
                           capture_output=True, check=False)
    med = {how: statistics.median(ts) for how, ts in times.items()}
    out = {
        "node": "real" if args.real_node else "kwok",
        "repeat": args.repeat,
        "load_time_s": {"resnet50": profile.variant("resnet50").load_time_s,
                        "resnet34": profile.variant("resnet34").load_time_s},
        "median_s": {h: round(v, 3) for h, v in med.items()},
        "runs_s": {h: [round(x, 3) for x in ts] for h, ts in times.items()},
        "ratio_to_resize": {h: round(v / med["resize"], 2) for h, v in med.items()},
    }
    if args.json:
        print(json.dumps(out))
        return
    how_ready = ("the real node: our image loads the model, the kubelet writes the quota" if args.real_node
                 else "kwok ready delay = profile load time; resize stage 0.5 s")
    print(f"decision -> serving, median of {args.repeat} ({how_ready})")
    print(f"{'transition':<14}{'median s':>10}{'x resize':>10}")
    for how in cases[1]:
        print(f"{how:<14}{med[how]:>10.2f}{out['ratio_to_resize'][how]:>10.2f}")


if __name__ == "__main__":
    main()
