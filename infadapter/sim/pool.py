"""Independent simulations side by side, one process each: the what-if scenarios of ``simulate --what-if``.

A simulation is single-threaded Python (the solver runs HiGHS on one thread), so on a machine with
several cores, runs that do not depend on each other finish sooner in separate processes. Each run draws
its arrivals in its own process from its rates and seed (a day's requests are several million: cheaper to
draw again than to send), the same draw as :func:`~infadapter.sim.simulation.make_arrivals` in this process,
so a run's result does not depend on where it ran. Processes are spawned, not forked: a fork copies a
parent's threads' locks in whatever state they are (a solver or a BLAS pool that ran before), a spawn
starts clean.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from infadapter.core.forecast import Forecaster
from infadapter.core.policies import Policy
from infadapter.core.profile import Profile
from infadapter.sim.simulation import SimConfig, SimResult, make_arrivals, simulate


@dataclass(frozen=True)
class Run:
    """One simulation to run: :func:`~infadapter.sim.simulation.simulate`'s arguments, arrivals by seed."""

    profile: Profile
    rates_rps: np.ndarray
    policy: str | Policy
    config: SimConfig
    seed: int = 0
    forecaster: Forecaster | None = None


def run_one(run: Run) -> SimResult:
    """One run in this process: its arrivals drawn from its rates and seed, then the simulation."""
    return simulate(run.profile, run.rates_rps, run.policy, run.config, arrivals=make_arrivals(run.rates_rps, run.seed),
                    forecaster=run.forecaster)


def default_jobs() -> int:
    """The CPU cores this process may run on (its affinity; the machine's count where that is unknown)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def run_all(runs: Sequence[Run], jobs: int | None = None) -> list[SimResult]:
    """Every run's result, in the order given, with at most ``jobs`` processes at once (None:
    :func:`default_jobs`). One job, or one run, runs in this process, with no process started."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1 or len(runs) <= 1:
        return [run_one(r) for r in runs]
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_one, runs))
