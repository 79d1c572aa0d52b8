"""The request log's one reader: every reader of ``requests.csv`` (explain --cores, the plots, the
experiment's simulated side) sees the same requests, and a row torn by a kill mid-write costs that row only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infadapter.adapter.cores import read_requests
from infadapter.observe import requestlog
from infadapter.plots import violation_rates
from infadapter.sim.experiment import live_arrival_times

HEADER = ",".join(requestlog.CSV_COLUMNS)
ROWS = [
    "0,0.000000,0.001,1000.001000,12.000,200,ok,resnet18,,a",
    "1,0.500000,0.501,1000.501000,400.000,200,ok,resnet50,,a",  # late at a 300 ms SLO
    "2,1.000000,1.001,1001.001000,,503,error,,shed,b",  # failed: no latency
    "3,1.500000,1.501,1001.501000,20.000,200,ok,resnet18,,b",
]


def _log(tmp_path: Path, tail: str = "") -> Path:
    path = tmp_path / requestlog.REQUESTS_FILE
    path.write_text("\n".join([HEADER, *ROWS]) + "\n" + tail)
    return path


def test_every_reader_skips_a_torn_last_row_and_counts_the_rest(tmp_path: Path) -> None:
    path = _log(tmp_path, "4,2.000000,2.0")  # a kill mid-write
    log = requestlog.read(path)
    assert log is not None and len(log) == 4
    assert log.violated(300.0).tolist() == [False, True, True, False]
    assert np.isnan(log.latency_ms[2]) and log.variant[2] == "" and log.service == ("a", "a", "b", "b")
    assert read_requests(tmp_path, 300.0).bad == (False, True, True, False)
    assert live_arrival_times(path).tolist() == [0.0, 0.5, 1.0, 1.5]
    # The plot's violation panel: before this reader, one torn row lost the whole panel (None).
    starts, rates = violation_rates(path, 300.0, start_s=1000.0, bin_s=1.0)
    assert starts == (0.0, 1.0) and rates == (0.5, 0.5)
    assert violation_rates(path, 300.0, start_s=1000.0, bin_s=1.0, service="b") == ((1.0,), (0.5,))


def test_a_cut_number_is_skipped_and_a_missing_file_is_none(tmp_path: Path) -> None:
    path = _log(tmp_path, "4,2.0000x0,2.001,1002.001000,10.000,200,ok,resnet18,,a\n")
    log = requestlog.read(path)
    assert log is not None and len(log) == 4
    assert requestlog.read(tmp_path / "none.csv") is None
    assert violation_rates(tmp_path / "none.csv", 300.0, 0.0) is None


def test_a_file_with_only_some_columns_reads_the_rest_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "times.csv"
    path.write_text("index,scheduled_s\n0,0.25\n1,0.75\n")
    log = requestlog.read(path)
    assert log is not None and log.scheduled_s.tolist() == [0.25, 0.75]
    assert np.isnan(log.sent_unix).all() and not log.ok.any()
