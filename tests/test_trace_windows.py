"""Trace windows, user traces and the parsed-trace cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infadapter.core.control import DAY_S
from infadapter.errors import BadInput
from infadapter.observe.trace import PAPER_WINDOW, cut, load_trace, load_window, parse_window, transform


@pytest.mark.parametrize(("spec", "start", "dur"), [
    ("paper", 15 * DAY_S + 82 * 60, 1260),
    ("day16", 16 * DAY_S, DAY_S),
    ("100:20", 100, 20),
])
def test_windows(spec: str, start: int, dur: int) -> None:
    w = parse_window(spec)
    assert (w.start_s, w.duration_s) == (start, dur)


@pytest.mark.parametrize("spec", ["yesterday", "10:0", "-5:3", "day"])
def test_bad_window_names_the_flag(spec: str) -> None:
    with pytest.raises(BadInput, match="--window"):
        parse_window(spec)


def test_csv_and_text_traces(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("second,rps\n0,5\n1,7.5\n2,0\n")
    (tmp_path / "r.txt").write_text("5 7.5\n0\n")
    np.testing.assert_array_equal(load_trace(tmp_path / "r.csv"), [5, 7.5, 0])
    np.testing.assert_array_equal(load_trace(tmp_path / "r.txt"), [5, 7.5, 0])
    assert load_window("1:2", tmp_path / "r.txt", scale=2).tolist() == [15.0, 0.0]
    with pytest.raises(BadInput, match="past the trace"):
        cut(load_trace(tmp_path / "r.txt"), parse_window("2:5"))


def test_speedup_keeps_the_level() -> None:
    assert transform(np.array([1.0, 3.0, 5.0, 7.0]), speedup=2).tolist() == [2.0, 6.0]


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Files over 1 MiB are cached as .npy; the second load reads the cache, not the text.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "big.txt"
    src.write_text("\n".join(str(i % 300) for i in range(300_000)))
    first = load_trace(src)
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.zeros(3))  # prove the second call reads the cache entry
    assert load_trace(src).tolist() == [0.0, 0.0, 0.0]
    assert first.size == 300_000


def test_paper_window_from_the_shared_trace() -> None:
    # The real Twitter trace (../shared/data): ~10 minutes near 45 req/s, then a burst to ~274.
    rates = load_window("paper")
    assert rates.size == PAPER_WINDOW[1]
    assert 35 < rates[:540].mean() < 55 and 240 <= rates.max() <= 300
