"""Forecasters: known values on hand-made histories, the learned model on a synthetic trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infadapter.core import forecast as fc
from infadapter.errors import BadInput


def test_last_is_the_last_minutes_peak() -> None:
    h = np.r_[np.full(60, 100.0), np.full(59, 10.0), 30.0]
    assert fc.make_forecaster("last").predict(h) == 30.0
    assert fc.make_forecaster("last:10").predict(h) == pytest.approx(33.0)


def test_ewma_weights_and_headroom() -> None:
    # Two minutes with peaks 10 and 20; span 10 -> a = 2/11, adjust=True weights (1 - a, 1):
    # (0.8182 * 10 + 20) / 1.8182 = 15.5, plus 10 % = 17.05.
    h = np.r_[np.full(60, 10.0), np.full(60, 20.0)]
    assert fc.make_forecaster("ewma").predict(h) == pytest.approx((9 / 11 * 10 + 20) / (9 / 11 + 1) * 1.1)
    assert fc.make_forecaster("ewma:0").predict(np.full(30, 7.0)) == 7.0
    assert fc.make_forecaster("ewma").predict([]) == 0.0


@pytest.mark.parametrize("spec", ["lstm", "ewma:x", "ewma:-5"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(BadInput, match="--forecaster"):
        fc.make_forecaster(spec)


def test_missing_model_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="forecast train"):
        fc.make_forecaster(f"learned:{tmp_path / 'none.npz'}")


def synthetic_trace(days: int = 4, seed: int = 0) -> np.ndarray:
    # A daily sine between 20 and 180 req/s with Poisson counts: peaks are predictable from the past.
    t = np.arange(days * fc.DAY_S)
    rate = 100 + 80 * np.sin(2 * np.pi * t / fc.DAY_S)
    return np.random.default_rng(seed).poisson(rate).astype(float)


@pytest.mark.slow
def test_learned_trains_saves_loads_and_beats_ewma(tmp_path: Path) -> None:
    trace = synthetic_trace()
    model = fc.train(trace, fc.TrainConfig(train_days=(0, 2), calibration_days=(2, 3), max_iter=40,
                                           target_under=0.065))
    path = model.save(tmp_path / "m.npz")
    loaded = fc.make_forecaster(f"learned:{path}")
    p, m, _ = fc.minute_table(trace, 3 * fc.DAY_S, 4 * fc.DAY_S)
    np.testing.assert_allclose(loaded.predict_batch(p, m), model.predict_batch(p, m))  # type: ignore[attr-defined]
    h = trace[3 * fc.DAY_S : 3 * fc.DAY_S + 600]
    peaks, means = fc.minute_stats(h)
    assert loaded.predict(h) == pytest.approx(model.predict_batch(peaks[None], means[None])[0])
    learned, ewma = fc.evaluate(trace, [loaded, fc.make_forecaster("ewma")], days=(3, 4))
    # Calibrated for 6.5 % under-predicted minutes on a held-out day; on this smooth trace ewma+10 %
    # is generous, and the learned model gets near its target with less over-provisioning.
    assert 0.02 < learned.under_rate < 0.12
    assert learned.over_pct < ewma.over_pct
    # Short history: the paper's cold start falls back to ewma, with the model's calibrated headroom.
    assert loaded.predict(h[:300]) == fc.Ewma(loaded.factor - 1).predict(h[:300])
    # Outside the load levels it was trained on, trees answer a constant: the fallback forecasts.
    lo, _hi = loaded.meta["level_range"]
    quiet = h * (lo / 2) / h.mean()
    assert not loaded.in_range(float(quiet.mean()))
    assert loaded.predict(quiet) == fc.Ewma(loaded.factor - 1).predict(quiet)


def test_model_file_is_not_a_pickle(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, meta=np.array('{"format": "other"}'))
    with pytest.raises(BadInput, match="not a forecaster model"):
        fc.make_forecaster(f"learned:{bad}")


@pytest.mark.slow
def test_forecast_train_regenerates_the_committed_model(tmp_path: Path) -> None:
    """profiles/forecaster.npz is what `python cli.py forecast train` makes from the shared trace."""
    from infadapter.observe.trace import load_trace
    from tests.cli_helpers import run_cli

    out = tmp_path / "forecaster.npz"
    # The committed model was trained where numpy runs its AVX2 (X86_V3) loops. On an AVX-512 machine its
    # X86_V4 loops round differently and 59 of 1430 predictions moved by up to 0.6 % (different splits), so the
    # retrain here uses the same loops; on an AVX2 machine the setting changes nothing.
    r = run_cli("forecast", "train", "--out", str(out), "--json", timeout=600,
                env={"NPY_DISABLE_CPU_FEATURES": "X86_V4"})
    assert r.returncode == 0, r.stderr
    fresh, committed = fc.Learned.load(out), fc.Learned.load(fc.SHIPPED_MODEL)
    assert fresh.factor == pytest.approx(committed.factor, abs=1e-3)
    assert fresh.meta["level_range"] == pytest.approx(committed.meta["level_range"], abs=1e-3)
    p, m, _ = fc.minute_table(load_trace(None), 15 * fc.DAY_S, 16 * fc.DAY_S)
    np.testing.assert_allclose(fresh.predict_batch(p, m), committed.predict_batch(p, m), rtol=1e-6)
