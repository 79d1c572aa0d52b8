"""Smooth weighted round robin: exact shares over a cycle, nginx's interleaving, exclusions."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from infadapter.serving.wrr import SmoothWRR, integer_weights


@pytest.mark.parametrize(
    "weights",
    [
        [1],
        [1, 1],
        [7, 3],
        [5, 1, 1],
        [3, 0, 2],
        [1, 2, 3, 4, 5],
        [10, 1],
        [13, 17, 19],
    ],
)
def test_each_peer_is_picked_exactly_weight_times_per_cycle(weights: list[int]) -> None:
    wrr = SmoothWRR(weights)
    for _cycle in range(3):  # the state returns to zero after each cycle, so every cycle is exact
        counts = Counter(wrr.sequence(wrr.cycle))
        assert [counts.get(i, 0) for i in range(len(weights))] == weights


def test_interleaving_matches_nginx() -> None:
    # nginx's documented example (ngx_http_upstream_round_robin.c): weights a=5, b=1, c=1
    # give "a a b a c a a", not "a a a a a b c".
    assert SmoothWRR([5, 1, 1]).sequence(7) == [0, 0, 1, 0, 2, 0, 0]


@pytest.mark.parametrize("weights", [[7, 3], [1, 1, 1], [9, 1], [2, 3]])
def test_no_burst_longer_than_the_weight_ratio(weights: list[int]) -> None:
    # Smoothness: the heaviest peer never runs more than ceil(w_max / (total - w_max)) + 1 times in a row.
    wrr = SmoothWRR(weights)
    seq = wrr.sequence(wrr.cycle * 2)
    longest = run = 1
    for prev, cur in itertools.pairwise(seq):
        run = run + 1 if cur == prev else 1
        longest = max(longest, run)
    w_max, total = max(weights), sum(weights)
    rest = total - w_max
    bound = -(-w_max // rest) + 1 if rest else total
    assert longest <= bound


def test_zero_weight_is_never_picked_and_all_zero_picks_nothing() -> None:
    assert 1 not in SmoothWRR([4, 0, 1]).sequence(50)
    assert SmoothWRR([0, 0]).pick() is None


def test_excluded_peers_are_skipped_without_gaining_weight() -> None:
    wrr = SmoothWRR([1, 1])
    # Peer 0 excluded for 10 picks: peer 1 gets them all ...
    assert [wrr.pick(exclude={0}) for _ in range(10)] == [1] * 10
    # ... and when 0 comes back it does not get a burst of 10 to "catch up": strict alternation.
    assert wrr.sequence(4) in ([0, 1, 0, 1], [1, 0, 1, 0])
    assert wrr.pick(exclude={0, 1}) is None


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ([0.7, 0.3], [7, 3]),  # 70/30 -> the smallest exact integers
        ([1 / 3, 1 / 3, 1 / 3], [1, 1, 1]),
        ([1 / 3, 2 / 3], [1, 2]),
        ([2, 0], [1, 0]),  # a zero share stays zero
        ([5, 1, 1], [5, 1, 1]),
        ([0.12345, 0.87655], [123, 877]),  # no exact ratio <= 1000: largest remainder over 1000 parts
        ([0.00001, 1.0], [1, 1000]),  # a positive share never rounds to zero
    ],
)
def test_integer_weights(shares: list[float], expected: list[int]) -> None:
    assert integer_weights(shares) == expected


@pytest.mark.parametrize("bad", [[], [0, 0], [-1, 2], [float("nan"), 1], [float("inf"), 1]])
def test_integer_weights_rejects_bad_input(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        integer_weights(bad)


@pytest.mark.slow
def test_from_shares_splits_a_plan_exactly() -> None:
    wrr = SmoothWRR.from_shares([0.5, 0.25, 0.25])
    assert wrr.weights == (2, 1, 1)
    assert Counter(wrr.sequence(400)) == {0: 200, 1: 100, 2: 100}
