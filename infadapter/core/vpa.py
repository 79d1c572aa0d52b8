"""A re-implementation of the Kubernetes VPA recommender's CPU estimate (pure, immutable).

Follows ``vertical-pod-autoscaler/pkg/recommender``: a decaying exponential histogram of CPU usage
samples (first bucket 0.01 cores, buckets growing by 5%, up to 1000 cores; sample weight =
0.1 * 2^((t - t_ref) / half_life), half-life 24 h, the same for every sample whatever the request:
upstream's ``addCPUSample`` since VPA 1.4, kubernetes/autoscaler#7819/#7824, checked against v1.8.1);
target = 90th percentile,
lower/upper bounds = 50th/95th percentiles, each times (1 + 15% safety margin); the bounds widened by
the confidence factor (upper * (1 + 1/conf), lower * (1 + 0.001/conf)^-2, conf = min(history days,
samples / 1440)); a 25 millicore floor. Percentiles return the end of the bucket, as upstream.

Where we differ (documented in docs/core.md): the paper applied the *target* every decision (30 s) by
a rolling update, not the updater's "only outside [lower, upper]" rule; we do the same, rounded up
to the core grid and clamped to [min_cores, max_cores]. The memory estimate, OOM bumps, checkpoints
and the load-adjusted CPU multiplier of recent releases are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FIRST_BUCKET_CORES = 0.01
BUCKET_RATIO = 1.05
MAX_CORES = 1000.0
EPSILON = 1e-4
MIN_SAMPLE_WEIGHT = 0.1
MAX_DECAY_EXPONENT = 100
MIN_CPU_CORES = 0.025
_NUM_BUCKETS = math.ceil(math.log(MAX_CORES * (BUCKET_RATIO - 1) / FIRST_BUCKET_CORES + 1) / math.log(BUCKET_RATIO)) + 1


def bucket_start(i: int) -> float:
    """Lower edge of bucket ``i`` of the exponential histogram."""
    if i == 0:
        return 0.0
    return FIRST_BUCKET_CORES * (BUCKET_RATIO**i - 1) / (BUCKET_RATIO - 1)


def find_bucket(value: float) -> int:
    if value < FIRST_BUCKET_CORES:
        return 0
    i = int(math.log(value * (BUCKET_RATIO - 1) / FIRST_BUCKET_CORES + 1) / math.log(BUCKET_RATIO))
    return min(i, _NUM_BUCKETS - 1)


@dataclass(frozen=True)
class VpaConfig:
    """Recommender knobs (upstream defaults) and the clamp applied to its target."""

    half_life_s: float = 24 * 3600.0
    target_percentile: float = 0.9
    lower_percentile: float = 0.5
    upper_percentile: float = 0.95
    safety_margin: float = 0.15
    min_cores: float = 2.0
    max_cores: float = 20.0


@dataclass(frozen=True)
class VpaState:
    """The decaying histogram plus the sample bookkeeping used for confidence."""

    weights: tuple[float, ...]
    reference_s: float = 0.0
    first_sample_s: float | None = None
    last_sample_s: float | None = None
    samples: int = 0
    half_life_s: float = 24 * 3600.0

    @classmethod
    def empty(cls, config: VpaConfig | None = None) -> VpaState:
        cfg = config or VpaConfig()
        return cls(weights=(0.0,) * _NUM_BUCKETS, half_life_s=cfg.half_life_s)

    @property
    def total_weight(self) -> float:
        return sum(self.weights)

    def add_sample(self, t_s: float, usage_cores: float, request_cores: float) -> VpaState:
        """A new state with one CPU usage sample added (negative usage is ignored, as upstream).

        ``request_cores`` is the container's request when sampled: upstream's sample carries it, and
        it does not weigh the sample (see the module doc); kept so callers pass what upstream sees."""
        if usage_cores < 0:
            return self
        weights = list(self.weights)
        ref = self.reference_s if self.samples else t_s
        exponent = (t_s - ref) / self.half_life_s
        if exponent > MAX_DECAY_EXPONENT:
            # Upstream shifts the reference forward and rescales to keep weights finite.
            factor = 2.0 ** (-exponent)
            weights = [w * factor for w in weights]
            ref = t_s
            exponent = 0.0
        # Upstream once weighted a sample by its request (so a resize decayed the history at once);
        # since VPA 1.4 every CPU sample weighs the same 0.1, whatever the request.
        weight = MIN_SAMPLE_WEIGHT * 2.0**exponent
        weights[find_bucket(usage_cores)] += weight
        return VpaState(
            weights=tuple(weights),
            reference_s=ref,
            first_sample_s=self.first_sample_s if self.first_sample_s is not None else t_s,
            last_sample_s=t_s,
            samples=self.samples + 1,
            half_life_s=self.half_life_s,
        )

    def percentile(self, p: float) -> float:
        """Upstream semantics: the end of the first bucket where the cumulative weight reaches p."""
        total = self.total_weight
        if total < EPSILON:
            return 0.0
        threshold = p * total
        partial = 0.0
        used = [i for i, w in enumerate(self.weights) if w > 0]
        bucket = used[0]
        for bucket in range(used[0], used[-1] + 1):
            partial += self.weights[bucket]
            if partial >= threshold:
                break
        if bucket < _NUM_BUCKETS - 1:
            return bucket_start(bucket + 1)
        return bucket_start(bucket)

    def confidence(self) -> float:
        if self.first_sample_s is None or self.last_sample_s is None:
            return 0.0
        days = (self.last_sample_s - self.first_sample_s) / 86400.0
        return min(days, self.samples / (60 * 24))


@dataclass(frozen=True)
class Recommendation:
    """The recommender's CPU amounts, in cores (whole millicores, as upstream's ``ResourceAmount``)."""

    target_cores: float
    lower_cores: float
    upper_cores: float
    confidence: float = field(default=0.0)


def _millicores(cores: float) -> int:
    """Upstream's ``CPUAmountFromCores``: whole millicores, rounded down (negative: 0)."""
    return max(int(cores * 1000.0), 0)


def _scale(millicores: float, factor: float) -> float:
    """Upstream's ``ScaleResource``: the amount times ``factor``, rounded down to a whole millicore
    (an infinite factor, a zero-confidence upper bound, stays infinite: upstream caps it at MaxInt64)."""
    scaled = millicores * factor
    return scaled if math.isinf(scaled) else float(max(int(scaled), 0))


def recommend(state: VpaState, config: VpaConfig | None = None) -> Recommendation | None:
    """The recommender's target and bounds, or None without samples.

    Upstream's estimator chain, step by step in whole millicores (each step rounds down): percentile,
    times the margin, the bounds times the confidence multiplier, then the 25 m floor."""
    cfg = config or VpaConfig()
    if state.samples == 0 or state.total_weight < EPSILON:
        return None
    margin = 1.0 + cfg.safety_margin
    target = _scale(_millicores(state.percentile(cfg.target_percentile)), margin)
    lower = _scale(_millicores(state.percentile(cfg.lower_percentile)), margin)
    upper = _scale(_millicores(state.percentile(cfg.upper_percentile)), margin)
    conf = state.confidence()
    # Upstream's (1 + multiplier / confidence) ** exponent: at zero confidence infinite, so the upper
    # bound is unbounded and the lower bound 0 (then the floor).
    upper = _scale(upper, 1.0 + 1.0 / conf) if conf > 0 else math.inf
    lower = _scale(lower, (1.0 + 0.001 / conf) ** -2.0) if conf > 0 else 0.0
    floor = MIN_CPU_CORES * 1000.0
    return Recommendation(max(target, floor) / 1000.0, max(lower, floor) / 1000.0, max(upper, floor) / 1000.0, conf)


#: Upstream's checkpoint format (``model.SupportedCheckpointVersion``) and its largest stored bucket weight.
CHECKPOINT_VERSION = "v3"
MAX_CHECKPOINT_WEIGHT = 10000


def _rfc3339(t_s: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def checkpoint_status(state: VpaState) -> dict[str, object]:
    """``state`` (its times in Unix seconds) as the status of upstream's ``VerticalPodAutoscalerCheckpoint``: what
    the recommender saves of a container's history and loads when it starts (``histogram.SaveToChekpoint``:
    bucket weights scaled so that the largest is 10000, the true total beside them; CPU only, the memory
    histogram empty)."""
    top = max(state.weights, default=0.0)
    ratio = MAX_CHECKPOINT_WEIGHT / top if top > 0 else 0.0
    scaled = {str(i): math.floor(w * ratio + 0.5) for i, w in enumerate(state.weights)}
    buckets = {i: w for i, w in scaled.items() if w > 0}
    ref = _rfc3339(state.reference_s)
    first = state.first_sample_s if state.first_sample_s is not None else state.reference_s
    last = state.last_sample_s if state.last_sample_s is not None else state.reference_s
    return {
        "lastUpdateTime": _rfc3339(last),
        "version": CHECKPOINT_VERSION,
        "cpuHistogram": {"referenceTimestamp": ref, "bucketWeights": buckets, "totalWeight": state.total_weight},
        "memoryHistogram": {"referenceTimestamp": ref, "bucketWeights": {}, "totalWeight": 0.0},
        "firstSampleStart": _rfc3339(first),
        "lastSampleStart": _rfc3339(last),
        "totalSamplesCount": state.samples,
    }
