"""Compilation settings shared by the package's numba kernels.

Every kernel is cached on disk and releases the GIL (so that samplers can run kernels in
threads). ``error_model="numpy"`` drops the zero-division check that numba's default
("python") puts on every division, which alone stops LLVM from vectorising a loop; the kernels
divide only by variances and precisions, which are positive.
"""

from __future__ import annotations

import numba

__all__ = ["VECTOR_MATH", "compiled_kernel", "inline_kernel", "vector_kernel"]

VECTOR_MATH = {"reassoc", "contract", "arcp", "nsz"}
"""The fastmath flags of :data:`vector_kernel`: reorder sums (so that reductions vectorise),
fuse multiply-adds, multiply by reciprocals and ignore the sign of zero. Not assumed: that
values are finite (``nnan``, ``ninf``); not used: approximate functions (``afn``)."""

compiled_kernel = numba.njit(cache=True, nogil=True, error_model="numpy")
"""Decorator of a compiled kernel."""

vector_kernel = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR_MATH)
"""Decorator of a compiled kernel whose loops should vectorise, sums included (the order of
summation may change, so results may differ from :data:`compiled_kernel`'s in the last bits)."""

inline_kernel = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
"""Decorator of a small compiled formula that numba inlines into each compiled caller, where it
takes the caller's settings (a :data:`vector_kernel` caller vectorises it with its loop)."""
