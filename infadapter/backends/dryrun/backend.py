"""Dry-run backend: writes the manifests a plan would apply, one numbered folder per change.

Each apply that changes something renders the plan (same templates as the Kubernetes backend) into
``OUT/gen-NNNN/`` with the plan as ``plan.json`` and a unified diff against the previous generation
as ``changes.diff``; ``OUT/LATEST`` names the newest folder. An apply that would change nothing
writes nothing. Nothing is sent anywhere; every variant is reported ready.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from infadapter.backends.base import ApplyResult, BackendState, TargetsCallback, VariantState
from infadapter.core.plan import Plan, diff
from infadapter.core.profile import Profile
from infadapter.errors import BadInput
from infadapter.render import PodRules, RenderConfig, render_plan, write_manifests

PLAN_FILE = "plan.json"
DIFF_FILE = "changes.diff"
LATEST = "LATEST"


class DryRunBackend:
    """Applies plans to a folder; see the module docstring."""

    name = "dry-run"
    in_place_resize = False

    def in_place_max_cores(self) -> dict[str, float]:
        return {}

    def cpu_seconds(self) -> dict[str, float]:
        return {}  # nothing runs

    def __init__(self, profile: Profile, out_dir: str | Path, config: RenderConfig | None = None,
                 pods: PodRules | None = None) -> None:
        self.profile = profile
        self.config = config or RenderConfig()
        self.pods = pods or PodRules()  # the policy's pod rules, as the kubernetes backend renders them
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"--out: cannot create {self.out_dir} ({exc.strerror}); pass a writable folder") from None

    # -- folders --------------------------------------------------------------------------------
    def latest_dir(self) -> Path | None:
        """The newest generation folder, or None before the first apply."""
        try:
            name = (self.out_dir / LATEST).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        d = self.out_dir / name
        return d if d.is_dir() else None

    def _generation(self, d: Path | None) -> int:
        return int(d.name.removeprefix("gen-")) if d is not None else 0

    def _last_plan(self) -> Plan | None:
        d = self.latest_dir()
        if d is None or not (d / PLAN_FILE).exists():
            return None
        data = json.loads((d / PLAN_FILE).read_text(encoding="utf-8"))
        return Plan.from_dict(data["plan"], origin=str(d / PLAN_FILE))

    # -- Backend protocol -----------------------------------------------------------------------
    def apply(self, plan: Plan) -> ApplyResult:
        """Write the manifests of ``plan`` to a new generation folder with a diff; nothing if unchanged."""
        for a in plan.allocations:
            self.profile.variant(a.name)  # BadInput for a variant the profile does not know
        last_dir = self.latest_dir()
        last = self._last_plan()
        if last is not None and diff(last, plan).empty:
            return ApplyResult(plan, (f"no change (still {last_dir.name if last_dir else '?'})",), ok=True)
        generation = self._generation(last_dir) + 1
        d = self.out_dir / f"gen-{generation:04d}"
        d.mkdir(parents=True, exist_ok=True)
        written = write_manifests(render_plan(plan, self.profile, self.config, generation, pods=self.pods), d)
        (d / PLAN_FILE).write_text(json.dumps({"generation": generation, "plan": plan.as_dict()}, indent=1) + "\n")
        patch, summary = unified_diff(last_dir, d)
        (d / DIFF_FILE).write_text(patch, encoding="utf-8")
        (self.out_dir / LATEST).write_text(d.name + "\n", encoding="utf-8")
        actions = (
            f"wrote {len(written)} manifests to {d}",
            f"diff against {last_dir.name if last_dir else 'nothing'}: {summary} ({d / DIFF_FILE})",
        )
        return ApplyResult(plan, actions, ok=True)

    def state(self) -> BackendState:
        plan = self._last_plan()
        variants = tuple(
            VariantState(a.name, a.cores, True, self.config.variant_url(a.name), "dry-run: not applied")
            for a in (plan.allocations if plan else ())
        )
        d = self.latest_dir()
        return BackendState(variants, plan, True, (f"dry-run folder {d or self.out_dir}",))

    def health(self) -> bool:
        return True

    def heal(self) -> str | None:
        return None  # nothing runs, nothing to repair

    def watch_targets(self, callback: TargetsCallback) -> None:
        """Nothing runs, so nothing is scraped."""

    def stop(self) -> None:
        """Nothing runs; the folder stays."""


def unified_diff(old_dir: Path | None, new_dir: Path) -> tuple[str, str]:
    """A unified diff of the manifests in two folders, and a one-line summary."""

    def files(d: Path | None) -> dict[str, list[str]]:
        if d is None:
            return {}
        return {p.name: p.read_text(encoding="utf-8").splitlines(keepends=True) for p in sorted(d.glob("*.yaml"))}

    old, new = files(old_dir), files(new_dir)
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    chunks = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, []), new.get(name, [])
        if a != b:
            src = f"{old_dir.name}/{name}" if old_dir is not None and name in old else "/dev/null"
            dst = f"{new_dir.name}/{name}" if name in new else "/dev/null"
            chunks.extend(difflib.unified_diff(a, b, fromfile=src, tofile=dst))
    summary = f"{len(added)} added, {len(removed)} removed, {len(changed)} changed"
    return "".join(chunks), summary
