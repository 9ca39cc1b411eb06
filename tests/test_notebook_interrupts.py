"""Ctrl-C in a notebook: the interrupt arrives in the kernel's own (main) thread, mid-run.

Jupyter's "interrupt kernel" raises ``KeyboardInterrupt`` in the thread running the cell. Here a
timer raises it in this test's main thread (``_thread.interrupt_main``) while a sampler runs
in-process; control must come back within about a second, and no thread, worker process or
open progress bar may be left behind (the Gibbs engine runs a θ writer thread; PyMC may run
chains in worker processes).
"""

from __future__ import annotations

import _thread
import multiprocessing
import threading
import time

import numpy as np
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.gibbs import theta_writer

RETURN_WITHIN = 1.5
"""Seconds from the interrupt to the KeyboardInterrupt in the cell (a second, plus slack for a
loaded test machine)."""


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(3, 400))
    return bh.ShrinkageModel((b, np.full(b.shape, 0.5)))


def _ours(threads: set[threading.Thread]) -> set[threading.Thread]:
    """Leave out tqdm's monitor: one shared daemon thread per process, not a run's thread."""
    return {thread for thread in threads if type(thread).__name__ != "TMonitor"}


def _interrupted(run, delay: float) -> float:
    """Run ``run()`` in this thread, interrupt it after ``delay`` s; seconds to come back."""
    threads_before = set(threading.enumerate())
    fired: list[float] = []

    def interrupt() -> None:
        fired.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(delay, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
            time.sleep(30)  # a run that ends before the timer must not pass the test
        elapsed = time.perf_counter() - fired[0]
    finally:
        timer.cancel()
    deadline = time.perf_counter() + 2.0
    while time.perf_counter() < deadline:
        left = _ours(set(threading.enumerate()) - threads_before)
        if not left and not multiprocessing.active_children():
            break
        time.sleep(0.05)
    assert not _ours(set(threading.enumerate()) - threads_before), "a thread outlived the run"
    assert not multiprocessing.active_children(), "a worker process outlived the run"
    return elapsed


def test_gibbs_engine_while_tuning(model):
    elapsed = _interrupted(
        lambda: model.sample("gibbs", draws=100, tune=10_000_000, chains=4, cores=2), 1.0
    )
    assert elapsed < RETURN_WITHIN


def test_gibbs_engine_while_its_writer_thread_draws_theta(model, monkeypatch):
    write = theta_writer.ThetaWriter._write

    def slow_write(self, draw):
        time.sleep(0.01)  # stands for a long θ kernel
        write(self, draw)

    monkeypatch.setattr(theta_writer.ThetaWriter, "_write", slow_write)
    elapsed = _interrupted(
        lambda: model.sample("gibbs", draws=5000, tune=10, chains=4, cores=2), 1.0
    )
    assert elapsed < RETURN_WITHIN


def test_default_nuts_while_sampling(model):
    elapsed = _interrupted(
        lambda: model.sample(draws=100_000, tune=50, chains=2, random_seed=1), 8.0
    )
    assert elapsed < RETURN_WITHIN


def test_pymc_nuts_with_worker_processes(model):
    elapsed = _interrupted(
        lambda: model.sample(
            nuts_sampler="pymc", draws=100_000, tune=20, chains=2, cores=2, random_seed=1
        ),
        6.0,
    )
    assert elapsed < RETURN_WITHIN
