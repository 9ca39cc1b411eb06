"""The package's thread helpers: the same results as without threads."""

from __future__ import annotations

import threading

import pytest

from bayeshier_pymc._threads import ahead


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
