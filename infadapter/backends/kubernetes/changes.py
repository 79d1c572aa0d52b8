"""Changing one variant to its planned layout: more or fewer pods of the same size, a resize of each pod in place, or
a rolling replacement (also when the node refuses the resize); and putting changed variants back when an apply fails.

A mixin of :class:`~infadapter.backends.kubernetes.backend.KubernetesBackend`: it reads the backend's API session,
profile, pod rules and resizer, and applies and deletes variants through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infadapter.backends.kubernetes.api import KubeError, KubeOptions
from infadapter.backends.kubernetes.layout import Observed, pods_text, with_layout, with_template
from infadapter.backends.kubernetes.resize import InPlaceResize
from infadapter.core.plan import Plan
from infadapter.core.profile import Profile
from infadapter.render import PodRules, VariantSpec


class VariantChanges:
    """Bring variants to their layouts, for the backend that mixes this in."""

    profile: Profile
    pods: PodRules
    resizer: InPlaceResize
    options: KubeOptions
    pod_limit_cores: float | None

    def _change(
        self,
        ob: Observed,
        specs: dict[str, VariantSpec],
        plan: Plan,
        generation: int,
        rolled: dict[str, tuple[int, float]],
        waits: list[str],
        no_room: bool = False,
    ) -> str:
        """Bring one variant to its planned layout; says how. Fills ``rolled`` (for a roll back) and
        ``waits`` (Deployments whose new pods must become ready)."""
        name = ob.name
        spec = specs[name]
        k0, c0 = ob.layout
        k, c = spec.replicas, spec.template_cores
        old = f"{ob.cores:g} cores{pods_text(k0, c0)}" if c0 > 0 else "pods of mixed sizes"
        new = f"{spec.cores:g} cores{pods_text(k, c)}"
        if c0 > 0 and abs(c0 - c) < 1e-9:  # same pod size: only the number of pods changes
            rolled[name] = (k0, ob.template_cores)
            self._apply_variant(with_template(spec, ob.template_cores), plan, generation)
            if k > k0:
                waits.append(name)
            return f"scale {name} {old} -> {new}"
        refused = ""
        if c0 > 0 and k == k0 and self.pods.in_place:  # same number of pods: resize each in place where it can
            how, refused = self.resizer.resize(ob, c, self.pods.cpu_limited,
                                               no_room_s=self.options.no_room_s if no_room else None)
            if how:
                self._apply_variant(with_template(spec, ob.template_cores), plan, generation)  # annotations only
                return f"resize {name} {old} -> {new} in place ({how})"
            if refused and self._refused_for_size(refused):
                # The node cannot hold a pod that size: cap pods at the size that runs, use more of them.
                self.pod_limit_cores = min(self.pod_limit_cores or c0, c0)
                k, c = self._layout(spec.cores)
                spec = specs[name] = with_layout(spec, k, c)
                new = f"{spec.cores:g} cores{pods_text(k, c)}"
        rolled[name] = (k0, ob.template_cores)
        self._apply_variant(spec, plan, generation)
        waits.append(name)
        why = (f"resize refused: {refused}" if refused else "pod layout changes" if k != k0
               else self.resizer.why_rolling() if self.pods.in_place else "the policy never resizes pods in place")
        return f"replace {name} {old} -> {new} by rolling replacement ({why})"

    @staticmethod
    def _refused_for_size(reason: str) -> bool:
        return ("403" in reason and "exceeded quota" not in reason) or "Infeasible" in reason

    def _roll_back(
        self,
        created: list[str],
        rolled: Mapping[str, tuple[int, float]],
        plan: Plan,
        previous: Plan,
        generation: int,
        in_place: Sequence[Observed] = (),
    ) -> list[str]:
        """Undo a failed apply: delete what it created, put changed Deployments back, and resize the variants it
        grew in place (``in_place``, as they were before) back to their pods' cores."""
        notes = []
        for ob in in_place:
            try:
                _, c0 = ob.layout
                how, refused = self.resizer.resize(ob, c0, self.pods.cpu_limited)
                spec = next(s for s in self._specs(previous, {ob.name: ob.template_cores}) if s.name == ob.name)
                self._apply_variant(with_template(spec, ob.template_cores), previous, generation - 1)
                notes.append(f"rolled back: {ob.name} to {ob.cores:g} cores in place" if how
                             else f"roll back of {ob.name} in place refused ({refused}); the next apply resizes it")
            except (KubeError, StopIteration) as exc:
                notes.append(f"roll back of {ob.name} failed ({exc}); the next apply resizes it")
        for name in created:
            try:
                self._delete_variant(name)
                notes.append(f"rolled back: deleted {name}")
            except KubeError as exc:
                notes.append(f"roll back of {name} failed ({exc}); the next apply deletes it")
        for name, (replicas, cores) in rolled.items():
            try:
                alloc = previous.get(name)
                keep = previous if alloc is not None else plan
                spec = next(s for s in self._specs(keep, {name: cores}) if s.name == name)
                self._apply_variant(with_layout(spec, replicas, cores), keep, generation - 1)
                notes.append(f"rolled back: {name} to {replicas * cores:g} cores{pods_text(replicas, cores)}")
            except KubeError as exc:
                notes.append(f"roll back of {name} failed ({exc})")
        return notes
