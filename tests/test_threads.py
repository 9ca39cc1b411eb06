"""The package's thread helpers: the same results as without threads."""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import CancelledError

import pytest

from bayeshier_pymc import _threads
from bayeshier_pymc._threads import ahead, beside, in_threads


def test_ahead_gives_the_items_in_order_computed_in_another_thread():
    main = threading.get_ident()
    computed_in = []

    def items():
        for value in range(5):
            computed_in.append(threading.get_ident())
            yield value

    assert list(ahead(items())) == [0, 1, 2, 3, 4]
    assert computed_in and main not in computed_in
    assert list(ahead(iter([]))) == []


def test_ahead_raises_an_error_of_the_computation_at_its_item():
    def items():
        yield 1
        raise RuntimeError("second item failed")

    seen = []
    with pytest.raises(RuntimeError, match="second item failed"):
        for item in ahead(items()):
            seen.append(item)
    assert seen == [1]


@pytest.fixture
def two_threads(monkeypatch):
    """in_threads with two threads, whatever the machine's CPUs."""
    monkeypatch.setattr(_threads, "cpu_count", lambda: 2)


def test_in_threads_runs_every_part_once(two_threads):
    done = []
    in_threads(done.append, list(range(50)))
    assert sorted(done) == list(range(50))


def _no_thread_left(before: set[threading.Thread]) -> bool:
    """No thread but those of ``before`` is left (within 2 s: a Ctrl-C while a pool started a
    thread can leave that one out of the pool's count; it stops at the pool's shutdown signal)."""
    deadline = time.perf_counter() + 2.0
    while set(threading.enumerate()) - before:
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.02)
    return True


def _counted_parts(first):
    """``run(part)`` that calls ``first()`` for part 0 and counts the others, 10 ms each."""
    ran = []

    def run(part: int) -> None:
        if part == 0:
            first()
        else:
            time.sleep(0.01)
            ran.append(part)

    return run, ran


def test_in_threads_stops_at_a_keyboard_interrupt_of_a_part(two_threads):
    """The parts still queued are cancelled, not run before the interrupt is raised."""

    def interrupted():
        raise KeyboardInterrupt

    before = set(threading.enumerate())
    run, ran = _counted_parts(interrupted)
    with pytest.raises(KeyboardInterrupt):
        in_threads(run, list(range(200)))
    assert len(ran) < 20  # the part under way in the other thread, give or take; not all 199
    assert _no_thread_left(before)


def _interrupt_once_waiting_for_a_result(main: int) -> None:
    """Send SIGUSR1 to thread ``main`` once it waits for a part's result (all are submitted)."""
    deadline = time.perf_counter() + 10.0
    while time.perf_counter() < deadline:
        frame = sys._current_frames().get(main)
        if (
            frame is not None
            and frame.f_back is not None
            and frame.f_back.f_code.co_name == "result"
        ):
            break
        time.sleep(0.001)
    signal.pthread_kill(main, signal.SIGUSR1)


def test_in_threads_stops_at_a_keyboard_interrupt_of_the_caller(two_threads):
    """Ctrl-C in the calling (main) thread while it waits for the parts."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set in the main thread")
    main = threading.main_thread().ident

    def keyboard_interrupt(signum, frame):
        raise KeyboardInterrupt

    before = set(threading.enumerate())
    previous = signal.signal(signal.SIGUSR1, keyboard_interrupt)
    try:
        run, ran = _counted_parts(lambda: _interrupt_once_waiting_for_a_result(main))
        with pytest.raises(KeyboardInterrupt):
            in_threads(run, list(range(200)))
            time.sleep(30)  # parts that all end before the signal must not pass the test
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(ran) < 100  # not all 199 (about 1 s of parts), a few at most
    assert _no_thread_left(before)


def test_in_threads_stops_at_the_first_error_of_a_part(two_threads):
    def failed():
        raise RuntimeError("part 0 failed")

    run, ran = _counted_parts(failed)
    with pytest.raises(RuntimeError, match="part 0 failed"):
        in_threads(run, list(range(200)))
    assert len(ran) < 20


def test_ahead_starts_no_item_after_a_keyboard_interrupt_of_the_caller():
    computed = []

    def items():
        for value in range(10):
            computed.append(value)
            yield value

    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        for item in ahead(items()):
            if item == 2:
                raise KeyboardInterrupt
    time.sleep(0.1)
    # item 2 was in the caller's hands, item 3 under way or cancelled before it started
    assert computed in ([0, 1, 2], [0, 1, 2, 3])
    assert _no_thread_left(before)


def test_beside_runs_beside_the_block_and_gives_its_result():
    main = threading.get_ident()
    with beside(lambda stopped: (threading.get_ident(), stopped())) as future:
        pass
    ran_in, stopped = future.result()
    assert ran_in != main and stopped is False


@pytest.mark.parametrize("raised", [KeyboardInterrupt, RuntimeError])
def test_beside_stops_its_work_when_the_block_raises(raised):
    """The block's error stops the work at its next step, and the exit waits for it."""
    steps = []

    def work(stopped):
        while not stopped():
            steps.append(time.perf_counter())
            time.sleep(0.01)
            if len(steps) > 1000:  # 10 s: never stopped
                return "ran to its end"
        raise CancelledError

    before = set(threading.enumerate())
    started = time.perf_counter()
    with pytest.raises(raised), beside(work) as future:
        time.sleep(0.2)
        raise raised
    assert time.perf_counter() - started < 2.0
    assert future.done() and isinstance(future.exception(), CancelledError)
    assert 5 < len(steps) < 100
    assert _no_thread_left(before)
