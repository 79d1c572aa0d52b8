"""The VPA recommender against figures computed by hand from upstream's algorithm.

Upstream: kubernetes/autoscaler, vertical-pod-autoscaler/pkg/recommender (checked against v1.8.1):
``model/aggregate_container_state.go`` ``addCPUSample`` adds every CPU sample with weight
``minSampleWeight`` = 0.1 (since VPA 1.4, kubernetes/autoscaler#7819/#7824: no longer max(request, 0.1));
``util/decaying_histogram.go`` multiplies it by 2^((t - t_ref) / 24 h); ``util/histogram.go``'s
``Percentile`` returns the end of the first bucket whose cumulative weight reaches p x total, buckets of
``NewExponentialHistogramOptions(1000, 0.01, 1.05, 1e-4)``: bucket i starts at 0.01 (1.05^i - 1) / 0.05,
a value v falls in bucket floor(ln(5 v + 1) / ln 1.05); ``logic/estimator.go``: CPUAmountFromCores
(whole millicores, rounded down), margin x1.15, upper x (1 + 1/conf), lower x (1 + 0.001/conf)^-2,
each ScaleResource rounding down, then the 25 m floor; conf = min(days from first to last sample,
samples / 1440). See ../shared/REFERENCE.md "Kubernetes VPA recommender".
"""

from __future__ import annotations

import pytest

from infadapter.core import vpa

# A request that changes with every VPA resize: a burst seen on a small request, then a resize up.
# (time s, usage cores, request cores); samples 61 s apart so the confidence is not a round number.
SERIES = [(61.0 * k, 1.50 if k == 0 else 0.90 if k == 1 else 0.40, 0.25 if k == 0 else 0.5 if k == 1 else 2.0)
          for k in range(10)]


def _feed(series: list[tuple[float, float, float]]) -> vpa.VpaState:
    st = vpa.VpaState.empty()
    for t, used, request in series:
        st = st.add_sample(t, used, request)
    return st


def test_changing_request_matches_upstream_by_hand():
    # Buckets: 1.50 -> floor(ln 8.5 / ln 1.05) = floor(43.86) = 43, ends at 0.2 (1.05^44 - 1) = 1.51143 cores;
    #          0.90 -> floor(ln 5.5 / ln 1.05) = floor(34.94) = 34, ends at 0.2 (1.05^35 - 1) = 0.90320;
    #          0.40 -> floor(ln 3.0 / ln 1.05) = floor(22.52) = 22, ends at 0.2 (1.05^23 - 1) = 0.41430.
    # Weights: 0.1 x 2^(61 k / 86400), k = 0..9 (0.1000 .. 0.1004); the request does not enter. Shares of
    # the total: the k=0 sample (1.50) 9.978 %, k=1 (0.90) 9.985 %, the eight 0.40 samples 80.039 %.
    # p50: 80.04 % >= 50 % in bucket 22 -> 0.41430 -> 414 m; x1.15 = 476.1 -> 476 m.
    # p90: 80.04 % < 90 %, + bucket 34 -> 90.022 % >= 90 % -> 0.90320 -> 903 m; x1.15 = 1038.45 -> 1038 m.
    # p95: 90.022 % < 95 %, + bucket 43 -> 100 % -> 1.51143 -> 1511 m; x1.15 = 1737.65 -> 1737 m.
    # conf = min(549 s / 86400 = 0.0063542 days, 10 / 1440 = 0.0069444) = 0.0063542.
    # upper: 1737 x (1 + 1 / 0.0063542) = 1737 x 158.377 = 275100.9 -> 275100 m.
    # lower: 476 x (1 + 0.001 / 0.0063542)^-2 = 476 x 1.157377^-2 = 476 x 0.746535 = 355.35 -> 355 m.
    rec = vpa.recommend(_feed(SERIES))
    assert rec is not None
    assert round(rec.lower_cores * 1000) == 355
    assert round(rec.target_cores * 1000) == 1038
    assert round(rec.upper_cores * 1000) == 275100
    # The pre-1.4 weight max(request, 0.1) would give the 2-core samples 16 of 16.75 (95.5 %): every
    # percentile in bucket 22, target 476 m. The request must not weigh a sample.
    assert round(rec.target_cores * 1000) != 476


def test_request_does_not_weigh_a_sample():
    same_request = [(t, used, 1.0) for t, used, _ in SERIES]
    assert vpa.recommend(_feed(SERIES)) == vpa.recommend(_feed(same_request))


def test_zero_confidence_bounds_as_upstream():
    # One sample: conf = min(0 days, 1/1440) = 0, so upstream's multiplier (1 + m/0) is infinite: the
    # upper bound unbounded, the lower bound 0 x ... = 0, then the 25 m floor. Target: 0.40 -> 476 m.
    rec = vpa.recommend(vpa.VpaState.empty().add_sample(0.0, 0.40, 2.0))
    assert rec is not None
    assert rec.upper_cores == float("inf")
    assert rec.lower_cores == pytest.approx(0.025)
    assert round(rec.target_cores * 1000) == 476
