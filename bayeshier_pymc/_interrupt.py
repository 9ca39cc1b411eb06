"""NUTS that stops on Ctrl-C: numpyro in short compiled calls, not one per run; nutpie logged.

nutpie (the default NUTS backend) samples from Rust threads and stops on Ctrl-C by itself;
:func:`nutpie_start_logged` only logs when its run starts. numpyro needs more.

Without a progress bar numpyro runs a whole chain (tuning and sampling) as one compiled XLA
call, and Python sees Ctrl-C only once that call returns, minutes later. With a progress bar
it steps the chains from a Python loop, one compiled call per step, so that Ctrl-C stops it
between two steps, but that loop's own Python time was large: 6.6 s of the demo's 51 s of NUTS
(cProfile, loaded 2-core machine; 0.2 s in blocks). :func:`numpyro_steps_from_python` makes
numpyro step its chains in blocks of steps instead, each block one compiled call of about
:data:`BLOCK_SECONDS` (the block grows or shrinks with the time a step takes), and shows
numpyro's bar only if asked. Each step is the same compiled function as in numpyro's own loop:
the draws for a seed do not change (``tests/test_interrupts.py``).

JAX collects its buffers from a garbage-collector callback, and a KeyboardInterrupt raised
while Python runs such a callback is printed ("Exception ignored in ...") and dropped: a
Ctrl-C while the model was built was lost that way and the run went on. Within a function
decorated with :func:`stops_on_ctrl_c`, a KeyboardInterrupt dropped so is raised again.

It covers numpyro's vectorised chains (``chain_method="vectorized"``, what
:meth:`~bayeshier_pymc.shrinkage.ShrinkageModel.sample` asks of numpyro); parallel chains report
progress from inside the compiled loop and stay one call.
"""

from __future__ import annotations

import _thread
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from bayeshier_pymc._shared_patch import SharedPatch

__all__ = [
    "caught_interrupts_raised",
    "numpyro_steps_from_python",
    "nutpie_start_logged",
    "stops_on_ctrl_c",
]

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


BLOCK_SECONDS = 0.2
"""Aimed length of one compiled block of NUTS steps: Ctrl-C waits for the block under way."""


@contextmanager
def numpyro_steps_from_python(nuts_sampler: str, progressbar: bool) -> Iterator[None]:
    """Within the block, numpyro steps its chains in short compiled blocks, with a bar if asked.

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

    collect = numpyro_mcmc.fori_collect

    def collect_in_blocks(
        lower: int, upper: int, body_fun: Callable, init_val: Any, **options: Any
    ) -> Any:
        if options.get("num_chains", 1) > 1 or upper == 0:
            # parallel chains report from the compiled loop; upper == 0 only compiles
            return collect(lower, upper, body_fun, init_val, **options)
        return _collect_in_blocks(lower, upper, body_fun, init_val, progressbar, **options)

    numpyro_mcmc.fori_collect = collect_in_blocks
    try:
        yield
    finally:
        numpyro_mcmc.fori_collect = collect


@contextmanager
def nutpie_start_logged(nuts_sampler: str) -> Iterator[None]:
    """Within the block, the start of nutpie's run is logged at DEBUG level.

    nutpie tunes and samples in one call, from Rust threads that stop on Ctrl-C within a
    fraction of a second (it returns the draws made so far, and :func:`caught_interrupts_raised`
    raises the KeyboardInterrupt again); the one phase it has is logged as it starts, after
    the compilation: "NUTS sampling (nutpie: tuning, then the kept draws)".

    Parameters
    ----------
    nuts_sampler
        The NUTS backend about to run; anything but ``"nutpie"`` is left as it is.
    """
    if nuts_sampler != "nutpie":
        yield
        return
    with _LOGGED_START:
        yield


def _logging_the_start(sample: Callable[..., Any]) -> Callable[..., Any]:
    """The replacement of ``nutpie.sample``: it logs the start of the run, then samples."""

    @functools.wraps(sample)
    def logged(*args: Any, **options: Any) -> Any:
        logger.debug("NUTS sampling (nutpie: tuning, then the kept draws)")
        return sample(*args, **options)

    return logged


_LOGGED_START = SharedPatch("nutpie", "sample", _logging_the_start)


def _collect_in_blocks(
    lower: int,
    upper: int,
    body_fun: Callable,
    init_val: Any,
    progressbar: bool,
    *,
    transform: Callable = lambda value: value,
    return_last_val: bool = False,
    collection_size: int | None = None,
    thinning: int = 1,
    progbar_desc: Callable[[int], str] = lambda step: "",
    diagnostics_fn: Callable[[Any], str] | None = None,
    **ignored: Any,
) -> Any:
    """:func:`numpyro.util.fori_collect` on one (vectorised) chain, run in blocks of steps.

    Steps ``0 … upper - 1`` apply ``body_fun``; from step ``lower`` on, every ``thinning``-th
    state goes through ``transform`` into the collection, as numpyro's loop does. A block is
    one compiled call whose bounds are arguments (one compilation for every block size); a
    block never spans the start of sampling, so that the phases are logged as they start.
    ``ignored`` are numpyro's options of its own bar (its rate, the number of chains).
    """
    import jax
    import jax.numpy as jnp
    import tqdm

    size = (upper - lower) // thinning if collection_size is None else collection_size
    first_kept = lower + (upper - lower) % thinning

    def step(index: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
        state, collection = carry
        state = body_fun(state)
        slot = (index - first_kept) // thinning
        collection = jax.tree.map(
            lambda stored, new: jax.lax.cond(
                slot >= 0, lambda: stored.at[slot].set(new), lambda: stored
            ),
            collection,
            transform(state),
        )
        return state, collection

    @functools.partial(jax.jit, donate_argnums=3)
    def block(start: Any, stop: Any, state: Any, collection: Any) -> tuple[Any, Any]:
        return jax.lax.fori_loop(start, stop, step, (state, collection))

    collection = jax.tree.map(
        lambda value: jnp.zeros((size, *jnp.shape(value)), dtype=jnp.result_type(value)),
        transform(init_val),
    )
    state, done, steps = init_val, 0, 1
    with tqdm.trange(upper, disable=not progressbar) as bar:
        while done < upper:
            stop = min(done + steps, upper)
            if done < lower:
                stop = min(stop, lower)
            if done == 0 and lower > 0:
                logger.debug("NUTS tuning")
            if done == lower:
                logger.debug("NUTS sampling")
            began = time.perf_counter()
            state, collection = jax.block_until_ready(
                block(jnp.int32(done), jnp.int32(stop), state, collection)
            )
            elapsed = time.perf_counter() - began
            bar.update(stop - done)
            bar.set_description(progbar_desc(stop - 1), refresh=False)
            if diagnostics_fn is not None:
                bar.set_postfix_str(diagnostics_fn(state), refresh=False)
            steps = _next_block(stop - done, elapsed)
            done = stop
    return (collection, state) if return_last_val else collection


def _next_block(steps: int, elapsed: float) -> int:
    """Steps in the next block: :data:`BLOCK_SECONDS` at the last block's pace.

    A block grows at most twofold, so that the first block (which compiles) and a phase of
    slower steps ahead keep the blocks short.
    """
    return max(1, min(2 * steps, int(steps * BLOCK_SECONDS / max(elapsed, 1e-9))))


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
