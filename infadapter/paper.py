"""Build the paper's profile (``profiles/paper.yaml``) from the authors' capacity CSV.

The paper fitted ``capacity = a * cores + b`` per variant on cores 1, 2, 4, 8, 16 at SLA 750 ms and
multiplied it by 0.8; accuracies, load times and memory come from the data README. The same fit at the
other SLAs the authors measured (500, 1000, 1500 ms) goes to each variant's ``capacity_at_slo_ms``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from infadapter.core.profile import Profile, profile_from_dict
from infadapter.errors import BadInput

#: Default location, relative to the repository root; override with INFADAPTER_PAPER_CSV.
DEFAULT_CSV = Path("../shared/data/paper-profile/capacity_result_Feb_21.csv")
FIT_CORES = (1, 2, 4, 8, 16)
#: The SLAs (ms) the authors measured every variant at; the profile's own is one, the others go to each
#: variant's ``capacity_at_slo_ms`` (what ``--what-if slo=MS`` plans with).
SLAS_MS = (500, 750, 1000, 1500)
SAFETY = 0.8
# Published torchvision top-1 (%), the paper's load times (s) and memory limits: data README.
VARIANTS = {
    18: (69.758, 6.44, "1.25Gi"),
    34: (73.314, 6.79, "1.5Gi"),
    50: (76.130, 6.82, "1.75Gi"),
    101: (77.374, 7.77, "2.25Gi"),
    152: (78.312, 8.52, "2.5Gi"),
}


def default_csv(root: Path) -> Path:
    env = os.environ.get("INFADAPTER_PAPER_CSV")
    return Path(env) if env else (root / DEFAULT_CSV).resolve()


def fit(rows: list[dict[str, str]], arch: int, sla_ms: int) -> tuple[float, float]:
    """Least-squares (slope, intercept) of capacity on FIT_CORES for one architecture."""
    pts = sorted(
        (int(r["CPU"]), float(r["capacity"]))
        for r in rows
        if r["ARCH"] == str(arch) and r["SLA"] == str(sla_ms) and int(r["CPU"]) in FIT_CORES
    )
    if len(pts) < 2:
        raise BadInput(f"paper csv: ResNet-{arch} at SLA {sla_ms}: need at least 2 of cores {FIT_CORES}")
    x, y = zip(*pts, strict=True)
    slope, intercept = np.polyfit(np.array(x, float), np.array(y, float), 1)
    return round(float(slope), 4), round(float(intercept), 4)


def _linear(slope: float, intercept: float) -> dict[str, object]:
    return {"kind": "linear", "slope": slope, "intercept": intercept, "safety": SAFETY}


def _measured(rows: list[dict[str, str]], arch: int, sla_ms: int) -> bool:
    return sum(1 for r in rows if r["ARCH"] == str(arch) and r["SLA"] == str(sla_ms)
               and int(r["CPU"]) in FIT_CORES) >= 2


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise BadInput(f"{csv_path}: paper capacity CSV not found (pass --csv or set INFADAPTER_PAPER_CSV)") from None
    missing = {"CPU", "ARCH", "SLA", "capacity"} - set(rows[0] if rows else {})
    if missing:
        raise BadInput(f"{csv_path}: missing columns {', '.join(sorted(missing))}")
    return rows


def _variants(rows: list[dict[str, str]], sla_ms: int) -> list[dict[str, object]]:
    variants = []
    for arch, (acc, load_s, mem) in VARIANTS.items():
        fits = {sla: _linear(*fit(rows, arch, sla)) for sla in SLAS_MS if sla == sla_ms or _measured(rows, arch, sla)}
        variants.append(
            {
                "name": f"resnet{arch}",
                "accuracy": round(acc / 100, 5),
                "load_time_s": load_s,
                "memory": mem,
                "capacity": fits.pop(sla_ms),
                **({"capacity_at_slo_ms": fits} if fits else {}),
            }
        )
    return variants


def build_paper_profile(csv_path: Path, sla_ms: int = 750) -> Profile:
    """The paper's setting as a validated Profile."""
    variants = _variants(_read_rows(csv_path), sla_ms)
    return profile_from_dict(
        {
            "name": "paper",
            "source": f"InfAdapter (EuroMLSys 2023) capacity_result_Feb_21.csv, SLA {sla_ms} ms, "
            f"linear fit on cores {list(FIT_CORES)}, times {SAFETY}",
            "slo_ms": sla_ms,
            "budget_cores": 20,
            "core_step": 1,
            "min_cores": 2,
            "alpha": 0.05,
            "beta": 0.001,
            "variants": variants,
        },
        origin=str(csv_path),
    )


#: ``profiles/services.yaml``: three services of the paper's ResNet family at three of the CSV's SLAs, with
#: different weights, each replaying a different 21-minute slice of the Twitter trace (the paper's, and the
#: same minutes of days 18 and 20). name: (SLA ms, weight, accuracy floor, window).
SERVICES = {
    "live": (500, 3.0, 0.72, "1554600:1260"),
    "feed": (750, 2.0, None, "paper"),
    "archive": (1000, 1.0, None, "1768200:1260"),
}
SERVICES_BUDGET_CORES = 32


def build_services_profile(csv_path: Path) -> Profile:
    """Three services sharing one budget, from the paper's CSV (:data:`SERVICES`)."""
    rows = _read_rows(csv_path)
    services = []
    for name, (sla_ms, weight, floor, window) in SERVICES.items():
        svc: dict[str, object] = {"name": name, "slo_ms": sla_ms, "weight": weight}
        if floor is not None:
            svc["accuracy_floor"] = floor
        services.append({**svc, "window": window, "variants": _variants(rows, sla_ms)})
    return profile_from_dict(
        {
            "name": "services",
            "source": f"InfAdapter (EuroMLSys 2023) capacity_result_Feb_21.csv at SLA "
            f"{'/'.join(str(v[0]) for v in SERVICES.values())} ms, linear fit on cores {list(FIT_CORES)}, "
            f"times {SAFETY}",
            "budget_cores": SERVICES_BUDGET_CORES,
            "core_step": 1,
            "min_cores": 2,
            "alpha": 0.05,
            "beta": 0.001,
            "services": services,
        },
        origin=str(csv_path),
    )
