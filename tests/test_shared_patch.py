"""nutpie's functions replaced while any block, in any thread, needs them, then restored."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from bayeshier_pymc._interrupt import nutpie_start_logged
from bayeshier_pymc._nutpie_cache import cached_nutpie_compilation

nutpie = pytest.importorskip("nutpie")

BLOCKS: dict[str, tuple[Callable[[], AbstractContextManager], str]] = {
    "compilation cache": (cached_nutpie_compilation, "compile_pymc_model"),
    "logged start": (lambda: nutpie_start_logged("nutpie"), "sample"),
}


@pytest.mark.parametrize("block", BLOCKS)
def test_overlapping_blocks_in_two_threads_leave_nutpie_as_it_was(block):
    """B enters while A is inside and stays after A left: still patched, then restored."""
    enter, name = BLOCKS[block]
    own = getattr(nutpie, name)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    patched_in_b_after_a = []

    def first() -> None:
        with enter():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with enter():
            b_in.set()
            a_out.wait(10)
            patched_in_b_after_a.append(getattr(nutpie, name) is not own)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert patched_in_b_after_a == [True]
    assert getattr(nutpie, name) is own


@pytest.mark.parametrize("block", BLOCKS)
def test_an_error_in_nested_blocks_restores_nutpie(block):
    enter, name = BLOCKS[block]
    own = getattr(nutpie, name)
    with pytest.raises(KeyboardInterrupt), enter(), enter():
        assert getattr(nutpie, name) is not own
        raise KeyboardInterrupt
    assert getattr(nutpie, name) is own
