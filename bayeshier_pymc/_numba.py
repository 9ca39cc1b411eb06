"""Compilation settings shared by the package's numba kernels.

Every kernel is cached on disk and releases the GIL (so that samplers can run kernels in
threads). ``error_model="numpy"`` drops the zero-division check that numba's default
("python") puts on every division, which alone stops LLVM from vectorising a loop. A division
by zero then gives IEEE infinity (or NaN) instead of raising. The kernels divide by variances
and precisions, positive but for one case on purpose: a point mass, a variance of zero (θ0
fixed at mu0 without pooling: the argument s0 = 0 of
:func:`~bayeshier_pymc.gaussian_tree.kernels.leave_one_out_moments`), whose infinite
precision 1 / 0 the kernel uses as such (its inverse is 0) and whose other quotients it
discards.
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
