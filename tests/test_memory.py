"""The stores of posterior draws: zeroed anonymous memory, committed at once or a part at a time."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from bayeshier_pymc import _memory
from bayeshier_pymc._memory import commit, store_array


@pytest.mark.parametrize("commit_now", [False, True])
def test_store_arrays_are_zeroed_writable_and_contiguous(commit_now):
    array = store_array((3, 4, 5), np.float32, commit=commit_now)
    assert array.dtype == np.float32 and array.shape == (3, 4, 5)
    assert array.flags.c_contiguous and array.flags.writeable
    assert not array.any()
    array[1, 2] = 7.0
    assert array.sum() == 35.0
    assert store_array((0, 4), commit=commit_now).shape == (0, 4)


def _resident_mb() -> float:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE / 2**20


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or _memory.MADV_POPULATE_WRITE is None,
    reason="commits in one call on Linux only",
)
def test_commit_commits_the_part_asked_for_and_only_it():
    store = store_array((4, 64, 256, 64))  # 32 MiB, nothing committed
    before = _resident_mb()
    commit(store[1, 8:40])  # 4 MiB
    grown = _resident_mb() - before
    assert 3.9 < grown < 4.5, grown
    assert not store[1, 8:40].any()  # committed, still zeros
    commit(store[1, 8:40].reshape(-1)[5:7])  # inside the committed part: nothing more
    assert _resident_mb() - before < 4.5


def test_commit_refuses_strided_parts_and_leaves_other_arrays_alone():
    with pytest.raises(ValueError, match="C-contiguous"):
        commit(store_array((4, 8))[:, 0])
    commit(np.zeros((100, 100)))  # not a store: committed as written
    commit(store_array((4, 8))[:0])
