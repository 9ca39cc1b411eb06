"""log p(b | τ) and its gradient in τ as one PyTensor Op: the collapsed PyMC model's density.

:func:`log_marginal` gives the log marginal likelihood of every row (covariate) of the
collapsed model (:func:`bayeshier_pymc.gaussian_tree.upward_pass` integrated over θ0, the
group means and θ) as the first output of a :class:`LogMarginalOp`, whose second output is
its gradient in τ; the Op's gradient is that second output, so a compiled log density and
gradient evaluate the Op once. One source per formula, for each backend:

numba (nutpie's numba backend, PyMC's numba mode) and Python/C (PyMC's own NUTS)
    The compiled kernel :func:`~bayeshier_pymc.gaussian_tree.kernels.log_marginal_and_gradient`:
    the upward pass of :mod:`.kernels` (:func:`~.kernels.upward_pass_from`), then one pass
    down for the gradient (:func:`~.kernels.level_variance_gradient`, Fisher's identity), in
    O(p·m). The numba backend calls it directly (:func:`_numba_log_marginal`), the others
    through :meth:`LogMarginalOp.perform`.
JAX (nutpie's JAX backend, numpyro, a GPU)
    The Op is an ``OpFromGraph`` whose inner graph is the upward pass on PyTensor tensors
    (:mod:`.pytensor_ops`) and its gradient by PyTensor's automatic differentiation; PyTensor
    turns that graph into JAX.

Both are tested against the NumPy reference in ``tests/test_log_marginal_op.py``.

Under a heavy-tailed group prior every group has its own prior variance τ_l² λ_g²:
:func:`log_marginal_with_local_scales` builds a :class:`LocalScaleLogMarginalOp`, whose third
input is λ and third output the gradient in λ, with the same two sources (the kernel
:func:`~bayeshier_pymc.gaussian_tree.kernels.log_marginal_and_local_gradient`; for JAX the
upward pass with the groups' variances as node variances). The normal prior's Op is unchanged
and takes no λ. Tested against the dense normal and finite differences in
``tests/test_local_scale_models.py``.
"""

from __future__ import annotations

import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.builders import OpFromGraph
from pytensor.gradient import DisconnectedType, grad_not_implemented
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key

from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex, kernels, upward_pass
from bayeshier_pymc.gaussian_tree.kernels import (
    LaneProblem,
    lane_problem,
    log_marginal_and_gradient,
    log_marginal_and_local_gradient,
    sort_tree,
)
from bayeshier_pymc.gaussian_tree.pytensor_ops import PYTENSOR_OPS

__all__ = [
    "LocalScaleLogMarginalOp",
    "LogMarginalOp",
    "log_marginal",
    "log_marginal_with_local_scales",
]


_INPUT_NAMES = ("τ", "b", "λ")
"""The Ops' inputs by position, as their gradient errors name them."""


class LogMarginalOp(OpFromGraph):
    """(τ, b) ↦ (log p(b | τ) per row, its gradient in τ), for one tree, variances and prior.

    Built by :func:`log_marginal`. Inputs: ``tau`` (rows × (D + 1)) and ``b`` (rows × m, the
    tree's order of features); outputs: ``log_marginal`` (rows) and ``gradient`` (rows ×
    (D + 1)). The inner graph serves JAX; :meth:`perform` and the numba backend run the
    compiled kernel on :attr:`lane` (the variances, tree, θ0 prior and shared noise in lane
    layout, features sorted by :attr:`feature_order`). The gradient in ``b`` (data) and
    second derivatives are not implemented.
    """

    feature_order: np.ndarray
    lane: LaneProblem

    def L_op(
        self,
        inputs: list[pt.TensorVariable],
        outputs: list[pt.TensorVariable],
        output_grads: list[pt.TensorVariable],
    ) -> list[Any]:
        """The gradients in τ (and λ): the incoming gradient of each row's log density × them.

        Inputs are ``(tau, b, *more)`` and outputs ``(log_marginal, gradient in tau, *gradients
        in more)``; ``b`` is data (no gradient).
        """
        log_marginal_grad, *gradient_grads = output_grads
        not_b = grad_not_implemented(self, 1, inputs[1], "the log marginal's gradient in b (data)")
        parameters = [(0, inputs[0]), *((i, x) for i, x in enumerate(inputs) if i > 1)]
        if not all(isinstance(g.type, DisconnectedType) for g in gradient_grads):
            second = [
                grad_not_implemented(self, i, x, f"second derivatives in {_INPUT_NAMES[i]}")
                for i, x in parameters
            ]
            return [second[0], not_b, *second[1:]]
        weight = log_marginal_grad[:, None]
        return [weight * outputs[1], not_b, *(weight * g for g in outputs[2:])]

    def perform(self, node: Any, inputs: list[np.ndarray], outputs: list[list[np.ndarray]]) -> None:
        """Run the compiled kernel (PyTensor's Python and C backends)."""
        tau, b = inputs
        log_density, gradient = log_marginal_and_gradient(
            np.ascontiguousarray(tau, dtype=float),
            np.ascontiguousarray(b, dtype=float),
            self.feature_order,
            self.lane,
        )
        outputs[0][0] = log_density
        outputs[1][0] = gradient

    def cache_key(self) -> str:
        """A key of everything the compiled function depends on (PyTensor's numba cache).

        The arrays it holds and the source of the kernels and of this module, so that a
        changed kernel is compiled again rather than read from PyTensor's cache.
        """
        digest = sha256(type(self).__qualname__.encode())
        for module in (kernels, sys.modules[__name__]):
            digest.update(Path(str(module.__file__)).read_bytes())
        for array in (self.feature_order, *self.lane[1:]):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def log_marginal(
    b: pt.TensorVariable,
    tau: pt.TensorVariable,
    var_b: np.ndarray,
    tree: TreeIndex,
    mu0: np.ndarray,
    s0: np.ndarray,
    noise: NodeNoise | None = None,
) -> pt.TensorVariable:
    """Log p(b | τ) of every row, by :class:`LogMarginalOp`: the collapsed model's density.

    Parameters
    ----------
    b
        Estimates, rows × m (missing cells filled, as for
        :func:`~bayeshier_pymc.gaussian_tree.upward_pass`).
    tau
        Scales, rows × (D + 1) (every level of ``tree``).
    var_b
        Variances of the estimates (with ``noise``, their own noise variances), rows × m.
    tree
        The tree.
    mu0, s0
        Mean and sd of θ0's prior, one per row.
    noise
        Shared noise at the groups and the top, rows first; ``None``: independent estimates.

    Returns
    -------
    pytensor.tensor.TensorVariable
        Shape (rows,).
    """
    var_b = _checked_variances(var_b, tree)
    n_rows, n_features = var_b.shape
    mu0 = np.broadcast_to(np.asarray(mu0, dtype=float), (n_rows,))
    s0 = np.broadcast_to(np.asarray(s0, dtype=float), (n_rows,))
    scales_shape = (n_rows, tree.depth + 1)
    tau_in = pt.matrix("tau", shape=scales_shape)
    b_in = pt.matrix("b", shape=(n_rows, n_features))
    graph = upward_pass(b_in, var_b, tau_in, tree, mu0, s0, ops=PYTENSOR_OPS, noise=noise)
    density = graph.log_marginal
    op = LogMarginalOp(
        [tau_in, b_in], [density, pytensor.grad(density.sum(), tau_in)], name="log_marginal"
    )
    _lay_out(op, var_b, tree, mu0, s0, noise)
    tau = pt.specify_shape(pt.as_tensor_variable(tau), scales_shape)
    b = pt.specify_shape(pt.as_tensor_variable(b), (n_rows, n_features))
    return op(tau, b)[0]


def _checked_variances(var_b: np.ndarray, tree: TreeIndex) -> np.ndarray:
    """``var_b`` as a float array, refused unless it is rows × the tree's features."""
    var_b = np.asarray(var_b, dtype=float)
    if var_b.ndim != 2 or var_b.shape[1] != tree.n_features:
        raise ValueError(
            f"var_b must be rows x features with the tree's {tree.n_features} features; "
            f"got shape {var_b.shape}."
        )
    return var_b


def _lay_out(
    op: LogMarginalOp,
    var_b: np.ndarray,
    tree: TreeIndex,
    mu0: np.ndarray,
    s0: np.ndarray,
    noise: NodeNoise | None,
) -> tuple[np.ndarray, ...]:
    """Give ``op`` the compiled kernel's layout: features sorted by parent, lane problem.

    Sets :attr:`LogMarginalOp.feature_order` and :attr:`LogMarginalOp.lane` (the shared
    noise of every group and the top in the sorted order, zero without ``noise``) and
    returns the tree's sort orders (:attr:`SortedTree.orders`).
    """
    n_rows = var_b.shape[0]
    sorted_tree = sort_tree(tree)
    orders = sorted_tree.orders
    if noise is None:
        shared = tuple(np.zeros((n_rows, n)) for n in tree.n_units[1:])
    else:
        shared = (
            *(
                np.broadcast_to(g, (n_rows, n))[:, order]
                for g, n, order in zip(noise.groups, tree.n_units[1:-1], orders[1:], strict=True)
            ),
            np.broadcast_to(np.asarray(noise.top, dtype=float), (n_rows,))[:, None],
        )
    sorted_var_b = var_b[:, orders[0]]
    op.feature_order = orders[0].astype(np.intp)
    # the lane's b is a placeholder of the right shape (var_b stands in): b is the Op's input,
    # passed to the kernel at every call, which uses it in place of lane.b (cache_key skips it)
    op.lane = lane_problem(
        sorted_var_b, sorted_var_b, sorted_tree.starts, tree.n_units, mu0, s0, shared
    )
    return orders


@register_funcify_and_cache_key(LogMarginalOp)
def _numba_log_marginal(op: LogMarginalOp, node: Any = None, **kwargs: Any) -> tuple[Any, str]:
    """The numba backend's function of a :class:`LogMarginalOp`: the compiled kernel itself."""
    feature_order = op.feature_order
    _, var_b, first_child, first_child_offsets, message_offsets, mu0, s0, noise = op.lane

    @numba_basic.numba_njit
    def log_marginal_kernel(tau: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        problem = LaneProblem(
            var_b, var_b, first_child, first_child_offsets, message_offsets, mu0, s0, noise
        )
        return log_marginal_and_gradient(tau, b, feature_order, problem)

    return log_marginal_kernel, op.cache_key()


class LocalScaleLogMarginalOp(LogMarginalOp):
    """(τ, b, λ) ↦ (log p(b | τ, λ) per row, its gradients in τ and λ): heavy-tailed groups.

    Built by :func:`log_marginal_with_local_scales`. As :class:`LogMarginalOp` with a third
    input, ``local_scale`` (rows × G: a local scale λ_g for every group unit of levels 1..D,
    level by level, each in the tree's order), so that a group's prior variance is τ_l² λ_g²,
    and a third output, the gradient in λ. The compiled kernel is
    :func:`~bayeshier_pymc.gaussian_tree.kernels.log_marginal_and_local_gradient`, which
    reads λ at the lane places of :attr:`group_order`.
    """

    group_order: np.ndarray

    def perform(self, node: Any, inputs: list[np.ndarray], outputs: list[list[np.ndarray]]) -> None:
        """Run the compiled kernel (PyTensor's Python and C backends)."""
        tau, b, local_scale = (np.ascontiguousarray(x, dtype=float) for x in inputs)
        results = log_marginal_and_local_gradient(
            tau, b, local_scale, self.feature_order, self.group_order, self.lane
        )
        for output, result in zip(outputs, results, strict=True):
            output[0] = result

    def cache_key(self) -> str:
        """:meth:`LogMarginalOp.cache_key` with :attr:`group_order`."""
        digest = sha256(super().cache_key().encode())
        digest.update(np.ascontiguousarray(self.group_order).tobytes())
        return digest.hexdigest()


def log_marginal_with_local_scales(
    b: pt.TensorVariable,
    tau: pt.TensorVariable,
    local_scales: list[pt.TensorVariable],
    var_b: np.ndarray,
    tree: TreeIndex,
    mu0: np.ndarray,
    s0: np.ndarray,
    noise: NodeNoise | None = None,
) -> pt.TensorVariable:
    """Log p(b | τ, λ) of every row, by :class:`LocalScaleLogMarginalOp`.

    :func:`log_marginal` under a heavy-tailed group prior: each group g of annotation level
    l has the prior variance τ_l² λ_g² around its parent. ``local_scales`` holds λ (rows ×
    groups) for the annotation levels 1..k of ``tree``, finest first; a deeper tree (that of
    shared noise) has no effect variation above level k (τ zero there), where λ is 1. The
    other parameters are :func:`log_marginal`'s.

    Returns
    -------
    pytensor.tensor.TensorVariable
        Shape (rows,).
    """
    var_b = _checked_variances(var_b, tree)
    if not 1 <= len(local_scales) <= tree.depth:
        raise ValueError(
            f"local_scales must hold 1 to {tree.depth} levels of local scales, got "
            f"{len(local_scales)}."
        )
    n_rows, n_features = var_b.shape
    mu0 = np.broadcast_to(np.asarray(mu0, dtype=float), (n_rows,))
    s0 = np.broadcast_to(np.asarray(s0, dtype=float), (n_rows,))
    scales_shape = (n_rows, tree.depth + 1)
    n_groups = sum(tree.n_groups)
    tau_in = pt.matrix("tau", shape=scales_shape)
    b_in = pt.matrix("b", shape=(n_rows, n_features))
    scale_in = pt.matrix("local_scale", shape=(n_rows, n_groups))
    density = _local_scale_graph(b_in, tau_in, scale_in, var_b, tree, mu0, s0, noise)
    op = LocalScaleLogMarginalOp(
        [tau_in, b_in, scale_in],
        [density, *pytensor.grad(density.sum(), [tau_in, scale_in])],
        name="log_marginal_with_local_scales",
    )
    orders = _lay_out(op, var_b, tree, mu0, s0, noise)
    starts = np.cumsum([0, *tree.n_groups])
    op.group_order = np.concatenate(
        [start + order for start, order in zip(starts, orders[1:], strict=False)]
    ).astype(np.intp)
    # static shapes, so that the gradient of the join has concrete sizes (JAX)
    used = [
        pt.specify_shape(pt.as_tensor_variable(scale), (n_rows, n))
        for scale, n in zip(local_scales, tree.n_groups, strict=False)
    ]
    unused = [pt.ones((n_rows, n)) for n in tree.n_groups[len(local_scales) :]]
    local_scale = pt.concatenate([*used, *unused], axis=1)
    tau = pt.specify_shape(pt.as_tensor_variable(tau), scales_shape)
    b = pt.specify_shape(pt.as_tensor_variable(b), (n_rows, n_features))
    local_scale = pt.specify_shape(local_scale, (n_rows, n_groups))
    return op(tau, b, local_scale)[0]


def _local_scale_graph(
    b: pt.TensorVariable,
    tau: pt.TensorVariable,
    local_scale: pt.TensorVariable,
    var_b: np.ndarray,
    tree: TreeIndex,
    mu0: np.ndarray,
    s0: np.ndarray,
    noise: NodeNoise | None,
) -> pt.TensorVariable:
    """The upward pass's graph of log p(b | τ, λ) (JAX): the group variances as node variances.

    Every group's τ_l² λ_g² joins its shared noise (zero without) in a :class:`NodeNoise`
    and the group levels' scales are zero, so that :func:`upward_pass` adds each unit's own.
    """
    n_rows = b.type.shape[0]
    starts = np.cumsum([0, *tree.n_groups])
    node_variances = []
    for level in range(1, tree.depth + 1):
        scale = tau[:, level][:, None] * local_scale[:, starts[level - 1] : starts[level]]
        shared = (
            0.0 if noise is None else np.broadcast_to(noise.groups[level - 1], scale.type.shape)
        )
        node_variances.append(shared + scale * scale)
    top = np.zeros(n_rows) if noise is None else noise.top
    # τ_0 alone, by a constant mask (JAX's gradient of a join needs concrete sizes)
    feature_scale = tau * np.eye(1, tree.depth + 1)
    graph = upward_pass(
        b,
        var_b,
        feature_scale,
        tree,
        mu0,
        s0,
        ops=PYTENSOR_OPS,
        noise=NodeNoise(tuple(node_variances), top),
    )
    return graph.log_marginal


@register_funcify_and_cache_key(LocalScaleLogMarginalOp)
def _numba_log_marginal_with_local_scales(
    op: LocalScaleLogMarginalOp, node: Any = None, **kwargs: Any
) -> tuple[Any, str]:
    """The numba backend's function of a :class:`LocalScaleLogMarginalOp`: its kernel."""
    feature_order, group_order = op.feature_order, op.group_order
    _, var_b, first_child, first_child_offsets, message_offsets, mu0, s0, noise = op.lane

    @numba_basic.numba_njit
    def log_marginal_kernel(
        tau: np.ndarray, b: np.ndarray, local_scale: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        problem = LaneProblem(
            var_b, var_b, first_child, first_child_offsets, message_offsets, mu0, s0, noise
        )
        return log_marginal_and_local_gradient(
            tau, b, local_scale, feature_order, group_order, problem
        )

    return log_marginal_kernel, op.cache_key()
