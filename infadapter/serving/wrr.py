"""Smooth weighted round robin, nginx's algorithm (``ngx_http_upstream_get_peer``).

Each pick adds every eligible peer's weight to its running ``current`` weight, chooses the peer with
the highest ``current`` and subtracts the total of the eligible weights from it. Over one cycle of
``sum(weights)`` picks each peer is chosen exactly ``weight`` times, and the picks are interleaved
(weights 5,1,1 give a a b a c a a, not a a a a a b c), so a variant never gets a burst.

Shares from a plan are floats (0.7, 0.3); they are turned into small integers first
(:func:`integer_weights`) so that the cycle is exact and short. No I/O, no clock: the dispatcher
keeps one :class:`SmoothWRR` per backend set and replaces it whole when the weights change.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

#: Shares are quantized to this many parts before reducing by the greatest common divisor.
RESOLUTION = 1000


def integer_weights(weights: Sequence[float], resolution: int = RESOLUTION) -> list[int]:
    """Small integers proportional to ``weights`` (largest-remainder rounding, then divided by the gcd).

    Exact ratios with a denominator up to ``resolution`` are kept exactly (``[1/3, 2/3]`` ->
    ``[1, 2]``); others are rounded. A positive weight never rounds to 0 (it keeps at least 1 part in
    ``resolution``), a zero weight stays 0. ``[0.7, 0.3]`` -> ``[7, 3]``; ``[2, 0]`` -> ``[1, 0]``.
    """
    if resolution < 1:
        raise ValueError("resolution must be >= 1")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError("weights must be finite numbers >= 0")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    fractions = [w / total for w in weights]
    for scale in range(1, resolution + 1):
        scaled = [f * scale for f in fractions]
        if all(abs(x - round(x)) < 1e-6 for x in scaled) and all(
            round(x) > 0 for x, w in zip(scaled, weights, strict=True) if w > 0
        ):
            return _reduce([round(x) for x in scaled])
    exact = [f * resolution for f in fractions]
    parts = [math.floor(x) for x in exact]
    # Hand the parts lost to flooring to the largest remainders (ties: the earlier peer).
    missing = resolution - sum(parts)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:missing]:
        parts[i] += 1
    for i, w in enumerate(weights):
        if w > 0 and parts[i] == 0:
            parts[i] = 1
    return _reduce(parts)


def _reduce(parts: list[int]) -> list[int]:
    divisor = 0
    for p in parts:
        divisor = math.gcd(divisor, p)
    return [p // divisor for p in parts]


class SmoothWRR:
    """The smooth weighted round robin picker over peers ``0..n-1`` with integer weights.

    Not thread-safe by design: the dispatcher calls it from its single event loop.
    """

    __slots__ = ("_current", "_total", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        if any(int(w) != w or w < 0 for w in weights):
            raise ValueError("weights must be integers >= 0")
        self.weights: tuple[int, ...] = tuple(int(w) for w in weights)
        self._total = sum(self.weights)
        self._current = [0] * len(self.weights)

    @classmethod
    def from_shares(cls, shares: Sequence[float], resolution: int = RESOLUTION) -> SmoothWRR:
        """A picker for float shares (see :func:`integer_weights`)."""
        return cls(integer_weights(shares, resolution))

    @property
    def cycle(self) -> int:
        """Picks after which the sequence repeats (the sum of the weights)."""
        return self._total

    def pick(self, exclude: Collection[int] = ()) -> int | None:
        """The next peer's index, skipping peers in ``exclude`` and peers of weight 0.

        Skipped peers do not accumulate weight (as nginx skips peers that are down), so when one
        comes back it does not receive a burst. ``None`` when no peer is eligible.
        """
        current = self._current
        weights = self.weights
        best = -1
        total = 0
        if exclude:
            for i, w in enumerate(weights):
                if w == 0 or i in exclude:
                    continue
                current[i] += w
                total += w
                if best < 0 or current[i] > current[best]:
                    best = i
        else:
            total = self._total
            for i, w in enumerate(weights):
                if w == 0:
                    continue
                current[i] += w
                if best < 0 or current[i] > current[best]:
                    best = i
        if best < 0:
            return None
        current[best] -= total
        return best

    def sequence(self, n: int) -> list[int]:
        """The next ``n`` picks (convenience for tests and docs)."""
        out: list[int] = []
        for _ in range(n):
            p = self.pick()
            if p is None:
                break
            out.append(p)
        return out
