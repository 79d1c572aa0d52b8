"""Forecasters: per-second request history in, predicted peak rate (req/s) of the next interval out.

All forecasters work on the paper's input: the last 10 minutes of per-second counts, reduced to each
minute's peak (minutes aligned to the end of the history). Specs for :func:`make_forecaster`:

- ``last[:PCT]``: the last minute's peak, plus PCT % headroom (default 0).
- ``ewma[:PCT]``: the paper's cold-start scheme, an exponentially weighted mean (span 10, pandas'
  ``adjust=True`` weights) of the per-minute peaks, plus PCT % headroom (default 10).
- ``learned[:PATH]``: gradient-boosted trees (scikit-learn ``HistGradientBoostingRegressor``, absolute
  error on log rates, i.e. a median model) on the last 10 per-minute peaks and per-minute means, times
  a headroom factor calibrated on held-out days so that a chosen share of minutes is under-predicted
  (a split-conformal upper bound). It needs 10 minutes of history and falls back to ``ewma`` before
  (as the paper's LSTM did). Train it with ``cli.py forecast train``; the model is a plain ``.npz``
  of tree arrays (no pickle), evaluated here with numpy, so loading a model file runs no code.

Why trees instead of the paper's LSTM: on the Twitter trace they train in seconds on two CPU cores,
need no deep-learning stack, and reach the target (see docs/simulator.md for the evaluation).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from infadapter import paths
from infadapter.core.control import DAY_S
from infadapter.errors import BadInput

MINUTES = 10
EWMA_SPAN = 10
FORECAST_HELP = "auto | last[:PCT] | ewma[:PCT] | learned[:MODEL.npz]"
MODEL_FORMAT = "infadapter-forecaster/1"


class Forecaster(Protocol):
    """The one forecasting interface shared by the simulator and the live loop."""

    name: str

    def predict(self, history_rps: Sequence[float]) -> float:
        """Predicted peak req/s of the next interval; ``history_rps`` is per second, oldest first."""
        ...


def minute_stats(history_rps: Sequence[float], minutes: int = MINUTES) -> tuple[np.ndarray, np.ndarray]:
    """Per-minute peaks and means of the last ``minutes`` minutes (aligned to the history's end).

    With less than a minute of history the single partial minute is used; an empty history gives
    empty arrays.
    """
    h = np.asarray(history_rps, dtype=float)
    if h.size == 0:
        return np.zeros(0), np.zeros(0)
    full = min(minutes, h.size // 60)
    if full == 0:
        return np.array([h.max()]), np.array([h.mean()])
    block = h[h.size - full * 60 :].reshape(full, 60)
    return block.max(axis=1), block.mean(axis=1)


def ewma_weights(n: int, span: int = EWMA_SPAN) -> np.ndarray:
    """pandas ``ewm(span, adjust=True)`` weights of the last value of a series of length n, oldest first."""
    a = 2.0 / (span + 1.0)
    w = (1.0 - a) ** np.arange(n)[::-1]
    return w / w.sum()


@dataclass(frozen=True)
class Last:
    """The last minute's peak plus headroom."""

    headroom: float = 0.0

    @property
    def name(self) -> str:
        return "last" if self.headroom == 0 else f"last+{self.headroom:.0%}"

    def predict(self, history_rps: Sequence[float]) -> float:
        peaks, _ = minute_stats(history_rps, 1)
        return float(peaks[-1]) * (1 + self.headroom) if peaks.size else 0.0

    def predict_batch(self, peaks: np.ndarray, means: np.ndarray) -> np.ndarray:
        return peaks[:, -1] * (1 + self.headroom)


@dataclass(frozen=True)
class Ewma:
    """EWMA (span 10) of the per-minute peaks plus headroom: the paper's cold-start forecaster."""

    headroom: float = 0.10
    span: int = EWMA_SPAN

    @property
    def name(self) -> str:
        return f"ewma+{self.headroom:.0%}"

    def predict(self, history_rps: Sequence[float]) -> float:
        peaks, _ = minute_stats(history_rps)
        if peaks.size == 0:
            return 0.0
        return float(peaks @ ewma_weights(peaks.size, self.span)) * (1 + self.headroom)

    def predict_batch(self, peaks: np.ndarray, means: np.ndarray) -> np.ndarray:
        return peaks @ ewma_weights(peaks.shape[1], self.span) * (1 + self.headroom)


# -- the learned forecaster -------------------------------------------------------------------------
def features(peaks: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Model inputs: log1p of the 10 per-minute peaks and the 10 per-minute means (rows = samples)."""
    return np.hstack([np.log1p(np.atleast_2d(peaks)), np.log1p(np.atleast_2d(means))])


@dataclass(frozen=True)
class Trees:
    """A boosted tree ensemble as flat arrays: prediction = baseline + sum of the reached leaf values."""

    baseline: float
    feature: np.ndarray  # int, per node
    threshold: np.ndarray  # float: go left when x <= threshold
    left: np.ndarray  # int, absolute node index
    right: np.ndarray
    is_leaf: np.ndarray  # bool
    value: np.ndarray  # float
    roots: np.ndarray  # int, index of each tree's root

    def __post_init__(self) -> None:
        # Plain lists for the one-row path (a decision forecasts one row; numpy per node is slower).
        flat = (self.feature.tolist(), self.threshold.tolist(), self.left.tolist(), self.right.tolist(),
                self.is_leaf.tolist(), self.value.tolist(), self.roots.tolist())
        object.__setattr__(self, "_flat", flat)

    def predict_one(self, row: Sequence[float]) -> float:
        feature, threshold, left, right, is_leaf, value, roots = self._flat  # type: ignore[attr-defined]
        total = self.baseline
        for node in roots:
            while not is_leaf[node]:
                node = left[node] if row[feature[node]] <= threshold[node] else right[node]
            total += value[node]
        return total

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        rows = np.arange(x.shape[0])
        out = np.full(x.shape[0], self.baseline)
        for root in self.roots:
            node = np.full(x.shape[0], root)
            while True:
                leaf = self.is_leaf[node]
                if leaf.all():
                    break
                go_left = x[rows, self.feature[node]] <= self.threshold[node]
                nxt = np.where(go_left, self.left[node], self.right[node])
                node = np.where(leaf, node, nxt)
            out += self.value[node]
        return out

    @classmethod
    def from_sklearn(cls, model: object) -> Trees:
        """Flatten a fitted ``HistGradientBoostingRegressor`` (numeric features, no missing values)."""
        try:
            baseline = float(np.ravel(model._baseline_prediction)[0])  # type: ignore[attr-defined]
            predictors = [p[0].nodes for p in model._predictors]  # type: ignore[attr-defined]
        except (AttributeError, IndexError, TypeError) as exc:  # a scikit-learn release changed its internals
            raise BadInput(
                f"forecast train: cannot export this scikit-learn model ({exc}); pin scikit-learn<2"
            ) from None
        feats, thr, left, right, leaf, val, roots = [], [], [], [], [], [], []
        offset = 0
        for nodes in predictors:
            roots.append(offset)
            feats.append(nodes["feature_idx"].astype(np.int64))
            thr.append(nodes["num_threshold"].astype(float))
            left.append(nodes["left"].astype(np.int64) + offset)
            right.append(nodes["right"].astype(np.int64) + offset)
            leaf.append(nodes["is_leaf"].astype(bool))
            val.append(nodes["value"].astype(float))
            offset += len(nodes)
        cat = np.concatenate
        return cls(baseline, cat(feats), cat(thr), cat(left), cat(right), cat(leaf), cat(val), np.array(roots))


@dataclass(frozen=True)
class Learned:
    """Boosted trees on the last 10 minutes' peaks and means, times a calibrated headroom factor."""

    trees: Trees
    factor: float
    meta: dict = field(default_factory=dict, compare=False)
    fallback: Ewma | None = None  # None: ewma with the same calibrated headroom (factor - 1)

    name: str = "learned"

    def __post_init__(self) -> None:
        if self.fallback is None:
            object.__setattr__(self, "fallback", Ewma(max(self.factor - 1.0, 0.0)))

    def predict(self, history_rps: Sequence[float]) -> float:
        if len(history_rps) < MINUTES * 60:
            return self.fallback.predict(history_rps)
        peaks, means = minute_stats(history_rps)
        if not self.in_range(float(means.mean())):
            return self.fallback.predict(history_rps)
        raw = math.expm1(self.trees.predict_one(features(peaks, means)[0].tolist()))
        return max(raw, 0.0) * self.factor

    def in_range(self, level_rps: float) -> bool:
        """Trees cannot extrapolate: outside the load levels it was trained on (a load scaled down to a
        small machine), the model answers a constant, so the fallback forecasts instead."""
        lo, hi = self.meta.get("level_range", (0.0, math.inf))
        return level_rps == 0 or lo <= level_rps <= hi

    def predict_batch(self, peaks: np.ndarray, means: np.ndarray) -> np.ndarray:
        raw = np.maximum(np.expm1(self.trees.predict(features(peaks, means))), 0.0) * self.factor
        inside = np.array([self.in_range(float(x)) for x in means.mean(axis=1)], dtype=bool)
        if inside.all():
            return raw
        return np.where(inside, raw, self.fallback.predict_batch(peaks, means))

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        t = self.trees
        meta = {**self.meta, "format": MODEL_FORMAT, "factor": self.factor, "baseline": t.baseline}
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez_compressed(
            tmp, meta=np.array(json.dumps(meta)), feature=t.feature, threshold=t.threshold, left=t.left,
            right=t.right, is_leaf=t.is_leaf, value=t.value, roots=t.roots,
        )
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Learned:
        p = Path(path)
        if not p.exists():
            raise BadInput(
                f"--forecaster: learned model {p} not found; train it with `python cli.py forecast train` "
                "or pick ewma"
            )
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != MODEL_FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {MODEL_FORMAT}")
                trees = Trees(float(meta["baseline"]), z["feature"], z["threshold"], z["left"], z["right"],
                              z["is_leaf"], z["value"], z["roots"])
        except (OSError, ValueError, KeyError) as exc:
            raise BadInput(
                f"--forecaster: {p} is not a forecaster model ({exc}); retrain with `cli.py forecast train`"
            ) from None
        return cls(trees, float(meta["factor"]), meta)


#: The learned model trained on the Twitter trace, committed; ``forecast train`` regenerates it.
SHIPPED_MODEL = paths.FORECASTER


def default_model_path() -> Path:
    """``INFADAPTER_FORECAST_MODEL``, else the committed model (``profiles/forecaster.npz``)."""
    env = os.environ.get("INFADAPTER_FORECAST_MODEL")
    return Path(env) if env else SHIPPED_MODEL


def resolve_spec(spec: str, model_path: str | Path | None = None) -> str:
    """``auto`` is ``learned`` when its model file exists, else ``ewma`` (the paper's cold start)."""
    if spec.strip().lower() != "auto":
        return spec
    return "learned" if Path(model_path or default_model_path()).exists() else "ewma"


def make_forecaster(spec: str, model_path: str | Path | None = None) -> Forecaster:
    """Build a forecaster from ``auto``, ``last[:PCT]``, ``ewma[:PCT]`` or ``learned[:PATH]``."""
    name, _, arg = resolve_spec(spec, model_path).strip().partition(":")
    name = name.lower()
    if name in ("last", "ewma"):
        default = 0.0 if name == "last" else 10.0
        try:
            pct = float(arg) if arg else default
        except ValueError:
            raise BadInput(f"--forecaster: headroom of {name} must be a percentage, got {arg!r}") from None
        if not (0 <= pct <= 1000) or math.isnan(pct):
            raise BadInput(f"--forecaster: headroom must be between 0 and 1000 %, got {pct:g}")
        return Last(pct / 100) if name == "last" else Ewma(pct / 100)
    if name == "learned":
        return Learned.load(arg or model_path or default_model_path())
    raise BadInput(f"--forecaster: unknown forecaster {spec!r}, expected {FORECAST_HELP}")


# -- training and evaluation on a trace ---------------------------------------------------------------
def minute_table(trace: np.ndarray, start_s: int, end_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(peaks[n, 10], means[n, 10], next-minute peak[n]) for every whole minute in [start_s, end_s)."""
    end_s = min(end_s, trace.size)
    n = (end_s - start_s) // 60
    if n <= MINUTES:
        raise BadInput(f"forecast: need more than {MINUTES} minutes of trace in [{start_s}, {end_s}) s")
    block = trace[start_s : start_s + n * 60].reshape(n, 60)
    peaks, means = block.max(axis=1), block.mean(axis=1)
    win = np.lib.stride_tricks.sliding_window_view
    return win(peaks[:-1], MINUTES), win(means[:-1], MINUTES), peaks[MINUTES:]


@dataclass(frozen=True)
class TrainConfig:
    """What ``forecast train`` fits: days are 0-based offsets (day N starts at N * 86400 s, as ``dayN``)."""

    train_days: tuple[int, int] = (1, 13)  # fit on days 1..12
    calibration_days: tuple[int, int] = (13, 15)  # calibrate the headroom on days 13..14
    # The adapter repairs an under-prediction within seconds (re-plan on the observed rate, growth in
    # place), so headroom buys little SLO and costs accuracy: a quarter of the minutes may be
    # under-predicted (factor ~1.05). docs/adapt.md has the side-by-side measurement.
    target_under: float = 0.25
    max_iter: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target_under < 0.5:
            raise BadInput(f"--target-under: must be between 0 and 0.5, got {self.target_under}")
        for label, (a, b) in (("--train-days", self.train_days), ("--calibration-days", self.calibration_days)):
            if not 0 <= a < b:
                raise BadInput(f"{label}: expected FIRST-LAST with FIRST <= LAST, got {a}-{b - 1}")


def train(trace: np.ndarray, config: TrainConfig | None = None) -> Learned:
    """Fit the learned forecaster on a trace (see :class:`TrainConfig`)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    cfg = config or TrainConfig()
    p, m, y = minute_table(trace, cfg.train_days[0] * DAY_S, cfg.train_days[1] * DAY_S)
    model = HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=cfg.max_iter, random_state=cfg.seed, early_stopping=False
    )
    model.fit(features(p, m), np.log1p(y))
    trees = Trees.from_sklearn(model)
    check = features(p[:500], m[:500])
    if not np.allclose(trees.predict(check), model.predict(check), atol=1e-6):
        raise BadInput("forecast train: exported trees disagree with scikit-learn; pin scikit-learn<2")
    cp, cm, cy = minute_table(trace, cfg.calibration_days[0] * DAY_S, cfg.calibration_days[1] * DAY_S)
    median = np.maximum(np.expm1(trees.predict(features(cp, cm))), 1e-9)
    ok = cy > 0
    # Split-conformal headroom: the (1 - target) quantile of true/predicted on held-out minutes.
    factor = float(np.quantile(cy[ok] / median[ok], 1 - cfg.target_under)) if ok.any() else 1.1
    # The factors other targets would give (bench/adaptation.py compares them side by side).
    factor_at = {str(q): round(float(np.quantile(cy[ok] / median[ok], 1 - q)), 4) if ok.any() else 1.1
                 for q in (0.065, 0.1, 0.25, 0.5)}
    level = m.mean(axis=1)
    busy = level[level > 0]
    # The load levels the trees have seen enough of: the 1st to the 100th percentile of non-zero levels.
    level_range = [float(np.quantile(busy, 0.01)), float(busy.max())] if busy.size else [0.0, math.inf]
    meta = {
        "model": "HistGradientBoostingRegressor(loss=absolute_error) on log1p(peaks, means)",
        "level_range": [round(x, 3) for x in level_range],
        "factor_at": factor_at,
        "train_days": list(cfg.train_days),
        "calibration_days": list(cfg.calibration_days),
        "target_under": cfg.target_under,
        "minutes": MINUTES,
        "train_samples": int(y.size),
    }
    return Learned(trees, max(factor, 1.0), meta)


@dataclass(frozen=True)
class Score:
    """A forecaster's accuracy over minutes with a non-zero true peak."""

    name: str
    minutes: int
    under_rate: float  # share of minutes whose true peak exceeded the forecast
    over_pct: float  # mean over minutes of max(0, forecast - true) / true, in %
    provisioned_pct: float  # sum(forecast) / sum(true) - 1, in %: the cost proxy

    def as_dict(self) -> dict[str, float | int | str]:
        return {"forecaster": self.name, "minutes": self.minutes, "under_prediction_rate": round(self.under_rate, 4),
                "mean_over_provisioning_pct": round(self.over_pct, 2),
                "total_provisioning_pct": round(self.provisioned_pct, 2)}


def evaluate(trace: np.ndarray, forecasters: Sequence[Forecaster], days: tuple[int, int] = (15, 22)) -> list[Score]:
    """Score forecasters on every minute of ``days`` (0-based, end exclusive) that has 10 minutes before it."""
    p, m, y = minute_table(trace, days[0] * DAY_S, min(days[1] * DAY_S, trace.size))
    ok = y > 0
    out = []
    for f in forecasters:
        batch = getattr(f, "predict_batch", None)
        if batch is not None:
            pred = np.asarray(batch(p, m), dtype=float)
        else:
            pred = np.array([f.predict(np.repeat(row, 60)) for row in p])  # pragma: no cover - foreign forecasters
        yy, ff = y[ok], pred[ok]
        out.append(Score(f.name, int(ok.sum()), float((yy > ff).mean()),
                         float((np.maximum(ff - yy, 0) / yy).mean() * 100), float((ff.sum() / yy.sum() - 1) * 100)))
    return out
