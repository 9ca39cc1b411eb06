"""NUTS through numpyro that stops on Ctrl-C: one compiled call per step, not per run.

Without a progress bar numpyro runs a whole chain (tuning and sampling) as one compiled XLA
call, and Python sees Ctrl-C only once that call returns, minutes later. With a progress bar
it steps the chains from a Python loop, one compiled call per step, so that Ctrl-C stops it
between two steps. :func:`numpyro_steps_from_python` makes numpyro take that loop always
(also where it turns its bar off itself, under CI or pytest-xdist), and shows the bar only if
asked. The steps are the same compiled function either way: the draws for a seed do not
change (``tests/test_interrupts.py``).

JAX collects its buffers from a garbage-collector callback, and a KeyboardInterrupt raised
while Python runs such a callback is printed ("Exception ignored in ...") and dropped: a
Ctrl-C while the model was built was lost that way and the run went on. Within a function
decorated with :func:`stops_on_ctrl_c`, a KeyboardInterrupt dropped so is raised again.

It covers numpyro's vectorised chains (``chain_method="vectorized"``, the default of
:meth:`~bayeshier_pymc.shrinkage.ShrinkageModel.sample`); parallel chains report progress from
inside the compiled loop and stay one call.
"""

from __future__ import annotations

import _thread
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar

__all__ = ["caught_interrupts_raised", "numpyro_steps_from_python", "stops_on_ctrl_c"]

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def numpyro_steps_from_python(nuts_sampler: str, progressbar: bool) -> Iterator[None]:
    """Within the block, numpyro steps its chains from Python, showing a bar if asked.

    Parameters
    ----------
    nuts_sampler
        The NUTS backend about to run; anything but ``"numpyro"`` is left as it is.
    progressbar
        Show numpyro's progress bar.

    Notes
    -----
    Each phase is logged at DEBUG level on ``bayeshier_pymc._interrupt`` as it starts
    ("NUTS tuning", "NUTS sampling").
    """
    if nuts_sampler != "numpyro":
        yield
        return
    import numpyro.infer.mcmc as numpyro_mcmc
    import numpyro.util as numpyro_util
    import tqdm

    collect = numpyro_mcmc.fori_collect

    def collect_stepwise(lower: int, upper: int, *args: Any, **kwargs: Any) -> Any:
        def steps(total: int, **options: Any) -> _Steps:
            bar = tqdm.trange(total, disable=not progressbar, **options)
            return _Steps(bar, lower)

        numpyro_util.tqdm = SimpleNamespace(trange=steps)
        try:
            return collect(lower, upper, *args, **{**kwargs, "progbar": True})
        finally:
            numpyro_util.tqdm = tqdm

    numpyro_mcmc.fori_collect = collect_stepwise
    try:
        yield
    finally:
        numpyro_mcmc.fori_collect = collect


@contextmanager
def caught_interrupts_raised() -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` after a block that caught a Ctrl-C and returned.

    PyMC's own sampler (NUTS or a custom step) catches the KeyboardInterrupt of Ctrl-C, stops
    and returns the draws made so far, as if the run had ended: the fit would then go on with
    a truncated run. Around :func:`pymc.sample`, a Ctrl-C received in the block is raised
    again once it returns. Only in the main thread, and only while Python's default Ctrl-C
    handler is in place (otherwise the block runs unchanged).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received = threading.Event()

    def remember(signum: int, frame: Any) -> None:
        received.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received.is_set():
        logger.debug("a Ctrl-C caught inside the sampler is raised again")
        raise KeyboardInterrupt


def stops_on_ctrl_c(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` with a KeyboardInterrupt that Python drops raised again.

    Parameters
    ----------
    function
        The function to wrap.

    Returns
    -------
    callable
        The wrapped function.
    """

    @functools.wraps(function)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with _raise_dropped_interrupts():
            return function(*args, **kwargs)

    return wrapped


RAISE_AGAIN_AFTER = 0.01
"""Seconds after which a dropped KeyboardInterrupt is raised again."""


@contextmanager
def _raise_dropped_interrupts() -> Iterator[None]:
    """A KeyboardInterrupt that Python drops within the block is raised again.

    Python drops an exception raised in a garbage-collector callback or a finaliser, handing
    it to :func:`sys.unraisablehook`; for a KeyboardInterrupt the hook here asks for it again
    (:func:`_thread.interrupt_main`) from a short-lived thread, a moment later: asked from
    the hook itself, it would be raised within the hook, and dropped again.
    """
    previous = sys.unraisablehook

    def raise_again(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            timer = threading.Timer(RAISE_AGAIN_AFTER, _thread.interrupt_main)
            timer.daemon = True
            timer.start()
        else:
            previous(unraisable)

    sys.unraisablehook = raise_again
    try:
        yield
    finally:
        sys.unraisablehook = previous


class _Steps:
    """numpyro's progress bar: counts the steps, logs each phase as it starts."""

    def __init__(self, bar: Any, first_kept: int) -> None:
        self._bar = bar
        self._first_kept = first_kept
        self.set_description: Callable[..., None] = bar.set_description
        self.set_postfix_str: Callable[..., None] = bar.set_postfix_str

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()

    def __iter__(self) -> Iterator[int]:
        for step in self._bar:
            if step == 0 and self._first_kept > 0:
                logger.debug("NUTS tuning")
            if step == self._first_kept:
                logger.debug("NUTS sampling")
            yield step
