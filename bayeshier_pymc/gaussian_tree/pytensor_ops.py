"""The tree algebra's array operations on PyTensor tensors: the collapsed PyMC model's graph.

:func:`bayeshier_pymc.gaussian_tree.upward_pass` with ``ops=PYTENSOR_OPS`` builds the graph of
log p(b | τ) that the JAX backends run for the collapsed model (the inner graph of
:class:`~bayeshier_pymc.gaussian_tree.log_marginal_op.LogMarginalOp`) and the full model's
tree-structured noise density; it is tested against the NumPy reference in
``tests/test_tree_kernels.py``.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt

from bayeshier_pymc.gaussian_tree import ArrayOps

__all__ = ["PYTENSOR_OPS"]


def _pytensor_segment_sum(
    values: pt.TensorVariable, index: np.ndarray, n: int
) -> pt.TensorVariable:
    """Sum the last axis of a (covariate, unit) tensor into ``n`` groups."""
    zeros = pt.zeros((n, values.shape[0]), dtype=values.dtype)
    return pt.inc_subtensor(zeros[index], values.T).T


PYTENSOR_OPS = ArrayOps(
    log=pt.log, sum_last=lambda x: x.sum(axis=-1), segment_sum=_pytensor_segment_sum
)
"""PyTensor's :class:`~bayeshier_pymc.gaussian_tree.ArrayOps`."""
