"""The tree algebra: the NumPy reference against dense Gaussian computations, and every
compiled version (numba kernels, the PyTensor graph) against the reference to 1e-10."""

from __future__ import annotations

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats

from bayeshier_pymc.gaussian_tree import (
    LOG_2PI,
    NodeNoise,
    TreeIndex,
    group_log_predictive,
    leave_one_out_normal,
    pointwise_marginal,
    posterior_moments,
    posterior_normal,
    upward_pass,
)
from bayeshier_pymc.gaussian_tree.kernels import (
    LEAVE_ONE_OUT_PARENT_TERMS,
    LEAVE_ONE_OUT_WORK,
    ThetaData,
    ThetaStores,
    draw_children,
    held_out_log_density,
    leave_one_out_moments,
    leave_one_out_parent_terms,
    leave_one_out_tree,
    log_normal,
    write_theta_draw,
)
from bayeshier_pymc.gaussian_tree.kernels import pointwise_marginal as compiled_pointwise_marginal
from bayeshier_pymc.gaussian_tree.log_marginal_op import log_marginal
from bayeshier_pymc.gaussian_tree.pytensor_ops import PYTENSOR_OPS
from bayeshier_pymc.gibbs.layout import TreeData
from bayeshier_pymc.gibbs.scale_kernels import evaluate

MU0, S0 = 0.4, 1.3
TREE_SEEDS = range(6)
EXTREME_TAU = [1e-6, 1e-2, 1.0, 1e2, 1e6]


def _random_tree(seed: int, max_features: int = 14) -> TreeIndex:
    """A random tree, depth 0..3, with group sizes from 1 to most of a level (skewed)."""
    rng = np.random.default_rng(seed)
    depth = seed % 4
    n_units = [1]
    parents: list[np.ndarray] = []
    for _ in range(depth + 1):
        n_parents = n_units[0]
        n = int(rng.integers(n_parents, max(n_parents + 1, max_features // 2) + 1))
        n = max_features if len(n_units) == depth + 1 else n
        shares = rng.dirichlet(np.full(n_parents, 0.4))
        index = np.concatenate(
            [np.arange(n_parents), rng.choice(n_parents, n - n_parents, p=shares)]
        )
        parents.insert(0, rng.permutation(index).astype(np.intp))
        n_units.insert(0, n)
    # parents[d] maps level-d units to level-(d + 1) units; the top level hangs from θ0
    return TreeIndex(n_units[0], tuple(parents[:-1]), tuple(n_units[1:-1]))


def _dense(tree: TreeIndex, tau: np.ndarray, var_b: np.ndarray):
    """Prior mean and covariance of (every unit, level 0 first and θ0 last, then b)."""
    sizes = tree.n_units
    n_units = sum(sizes)
    m = tree.n_features
    loadings: list[np.ndarray] = [np.zeros((1, n_units))]
    loadings[0][0, n_units - 1] = 1.0
    variances = np.empty(n_units)
    variances[n_units - 1] = S0**2
    offsets = np.cumsum([0, *sizes])
    for level in range(tree.depth, -1, -1):
        own = np.eye(n_units)[offsets[level] : offsets[level + 1]]
        loadings.insert(0, loadings[0][tree.parent_of(level)] + own)
        variances[offsets[level] : offsets[level + 1]] = tau[level] ** 2
    unit_loadings = np.vstack(loadings)
    cov_units = (unit_loadings * variances) @ unit_loadings.T
    mean = np.full(n_units + m, MU0)
    cov = np.zeros((n_units + m, n_units + m))
    cov[:n_units, :n_units] = cov_units
    cov[n_units:, :n_units] = cov_units[:m]
    cov[:n_units, n_units:] = cov_units[:, :m]
    cov[n_units:, n_units:] = cov_units[:m, :m] + np.diag(var_b)
    return mean, cov, offsets


def _data(tree: TreeIndex, seed: int, scale: float = 1.0):
    rng = np.random.default_rng(100 + seed)
    b = rng.normal(MU0, 2.0, tree.n_features) * scale
    var_b = (rng.uniform(0.2, 1.5, tree.n_features) * scale) ** 2
    tau = rng.uniform(0.2, 1.5, tree.depth + 1) * scale
    return b, var_b, tau


# ------------------------------------------------------------------ reference against dense
@pytest.mark.parametrize("seed", TREE_SEEDS)
def test_reference_matches_dense_gaussian(seed):
    """log p(b | τ), posterior means and variances of every unit against dense conditioning."""
    tree = _random_tree(seed)
    b, var_b, tau = _data(tree, seed)
    mean, cov, offsets = _dense(tree, tau, var_b)
    n = offsets[-1]
    messages = upward_pass(b, var_b, tau, tree, MU0, S0)
    expected = stats.multivariate_normal(mean[n:], cov[n:, n:]).logpdf(b)
    np.testing.assert_allclose(messages.log_marginal, expected, rtol=1e-10)
    gain = np.linalg.solve(cov[n:, n:], cov[n:, :n]).T
    post_mean = mean[:n] + gain @ (b - mean[n:])
    post_var = np.diag(cov[:n, :n] - gain @ cov[n:, :n])
    means, variances = posterior_moments(messages, tau, tree, MU0, S0)
    for level in range(tree.depth + 2):
        units = slice(offsets[level], offsets[level + 1])
        np.testing.assert_allclose(np.atleast_1d(means[level]), post_mean[units], rtol=1e-9)
        np.testing.assert_allclose(np.atleast_1d(variances[level]), post_var[units], rtol=1e-9)


def _sibling_blocks(tree: TreeIndex, level: int, rng: np.random.Generator) -> np.ndarray:
    """A random partition of the level's units in which every block shares one parent."""
    parent = tree.parent_of(level)
    block = parent * tree.n_units[level] + rng.integers(0, 2, parent.size)
    return np.unique(block, return_inverse=True)[1]


@pytest.mark.parametrize("seed", TREE_SEEDS)
def test_group_predictive_matches_dense_conditioning(seed):
    """log p(b_G | b_−G, τ) for single units and sibling blocks at every level."""
    tree = _random_tree(seed)
    b, var_b, tau = _data(tree, seed)
    mean, cov, offsets = _dense(tree, tau, var_b)
    n = offsets[-1]
    rng = np.random.default_rng(seed)
    below = np.arange(tree.n_features)  # each feature's ancestor at the current level
    for level in range(tree.depth + 1):
        singles = np.arange(tree.n_units[level])
        for to_group in (singles, _sibling_blocks(tree, level, rng)):
            got = group_log_predictive(b, var_b, tau, tree, MU0, S0, level, to_group)
            for group in range(int(to_group.max()) + 1):
                held = np.isin(below, np.flatnonzero(to_group == group))
                kept = ~held
                sigma = cov[n:, n:]
                gain = np.linalg.solve(sigma[np.ix_(kept, kept)], sigma[np.ix_(kept, held)]).T
                cond_mean = mean[n:][held] + gain @ (b[kept] - mean[n:][kept])
                cond_cov = sigma[np.ix_(held, held)] - gain @ sigma[np.ix_(kept, held)]
                expected = stats.multivariate_normal(cond_mean, cond_cov).logpdf(b[held])
                np.testing.assert_allclose(got[group], expected, rtol=1e-9)
        if level < tree.depth:
            below = tree.parents[level][below]


def test_pointwise_marginal_integrates_theta_out():
    """log N(b_j; p, s_j² + τ_0²) = log ∫ N(b_j; θ, s_j²) N(θ; p, τ_0²) dθ, against the dense
    joint of one feature with its parent fixed (a depth-0 tree with θ0 known exactly)."""
    tree = TreeIndex(1, (), ())
    rng = np.random.default_rng(3)
    for _ in range(5):
        b, var_b, tau = rng.normal(), rng.uniform(0.1, 2.0), rng.uniform(0.01, 3.0, 1)
        parent = rng.normal()
        # θ0 = parent exactly: s0 → 0 makes the tree's marginal the pointwise one
        expected = upward_pass(np.array([b]), np.array([var_b]), tau, tree, parent, 0.0)
        got = pointwise_marginal(np.array([b]), np.array([var_b]), np.array([parent]), tau)
        np.testing.assert_allclose(got, expected.log_marginal, rtol=1e-12)


# ------------------------------------------------------------------ compiled against reference
@pytest.mark.parametrize("seed", TREE_SEEDS)
@pytest.mark.parametrize("tau_scale", EXTREME_TAU)
def test_compiled_upward_pass_matches_reference(seed, tau_scale):
    tree = _random_tree(seed)
    rng = np.random.default_rng(seed)
    rows = 5
    b = rng.normal(0.0, 2.0, (rows, tree.n_features))
    var_b = rng.uniform(0.1, 2.0, (rows, tree.n_features)) ** 2
    tau = tau_scale * rng.uniform(0.5, 2.0, (rows, tree.depth + 1))
    data = TreeData.build(b, var_b, tree, np.ones(tree.depth + 1), MU0, S0)
    reference = upward_pass(b, var_b, tau, tree, MU0, S0)
    evaluation = evaluate(data, tau)
    constant = -0.5 * LOG_2PI * tree.n_features  # the kernels drop every 2π
    np.testing.assert_allclose(
        evaluation.log_marginal + constant, reference.log_marginal, rtol=1e-10
    )
    for level in range(1, tree.depth + 2):
        y, v = evaluation.messages[level]
        if level <= tree.depth:
            y, v = data.from_sorted(y, level), data.from_sorted(v, level)
        else:
            y, v = y[:, 0], v[:, 0]
        np.testing.assert_allclose(y, reference.y[level], rtol=1e-10, atol=1e-10 * np.abs(b).max())
        np.testing.assert_allclose(v, reference.v[level], rtol=1e-10)
    # from a middle level up, reusing the messages below it
    if tree.depth:
        changed = tau.copy()
        changed[:, -1] *= 3.0
        partial = evaluation.updated_from(data, tree.depth, changed).log_marginal
        np.testing.assert_allclose(partial, evaluate(data, changed).log_marginal, rtol=1e-12)


@pytest.mark.parametrize("seed", TREE_SEEDS)
@pytest.mark.parametrize("tau_scale", EXTREME_TAU)
def test_compiled_downward_draw_matches_reference(seed, tau_scale):
    """One level drawn from its posterior given the parents, with the same noise."""
    tree = _random_tree(seed)
    rng = np.random.default_rng(seed)
    rows, level = 4, 0
    parent_index = tree.parent_of(level)
    parent = rng.normal(0.0, 1e4, (rows, tree.n_units[level + 1]))  # far from y: cancellation
    level_var = (tau_scale * rng.uniform(0.5, 2.0, rows)) ** 2
    y = rng.normal(size=(rows, tree.n_units[level]))
    v = rng.uniform(0.1, 2.0, (rows, tree.n_units[level])) ** 2
    noise = rng.standard_normal(y.shape)
    mean, var = posterior_normal(parent[:, parent_index], level_var[:, None], y, v)
    expected = mean + np.sqrt(var) * noise
    got = draw_children(
        parent, parent_index, level_var, np.empty((rows, 0)), np.empty((rows, 0)), y, v, noise
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("tau_scale", EXTREME_TAU)
def test_compiled_theta_draw_matches_reference(tau_scale):
    """θ given its parents and τ_w, the marginal log-likelihood and the conditional total."""
    rng = np.random.default_rng(7)
    chains, draws, covariates, features, groups = 2, 3, 2, 9, 4
    b = rng.normal(size=(covariates, features))
    var_b = rng.uniform(0.1, 2.0, (covariates, features)) ** 2
    parent_index = np.concatenate([np.arange(groups), rng.integers(0, groups, features - groups)])
    lead = (chains, draws, covariates)
    parent_mean = rng.normal(size=(*lead, groups))
    tau = tau_scale * rng.uniform(0.5, 2.0, (*lead, 1))
    noise = rng.standard_normal((*lead, features))
    stores = ThetaStores(parent_mean, tau, noise.copy(), np.empty_like(noise), np.zeros(lead[:2]))
    data = ThetaData(b, var_b, 1.0 / var_b, parent_index)
    for draw in range(draws):
        write_theta_draw(data, stores, draw)
    parent = parent_mean[..., parent_index]
    tau_sq = tau**2
    mean, var = posterior_normal(parent, tau_sq, b, var_b)
    theta = mean + np.sqrt(var) * noise
    np.testing.assert_allclose(stores.theta, theta, rtol=1e-10, atol=1e-10)
    marginal = pointwise_marginal(b, var_b, parent, tau)
    np.testing.assert_allclose(stores.log_likelihood, marginal, rtol=1e-10)
    flat = (-1, covariates)
    compiled = np.empty((chains * draws, covariates, features))
    compiled_pointwise_marginal(
        b,
        var_b,
        parent_mean.reshape(*flat, groups),
        parent_index,
        tau[..., 0].reshape(flat),
        0,
        chains * draws,
        compiled,
    )
    np.testing.assert_allclose(compiled.reshape(marginal.shape), marginal, rtol=1e-10)
    totals = -0.5 * ((b - stores.theta) ** 2 / var_b).sum(axis=(2, 3))
    np.testing.assert_allclose(stores.totals, totals, rtol=1e-10)


@pytest.mark.parametrize("seed", TREE_SEEDS)
def test_pytensor_graph_matches_reference(seed):
    """The collapsed model's log p(b | τ), built through PYTENSOR_OPS."""
    tree = _random_tree(seed)
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(3, tree.n_features))
    var_b = rng.uniform(0.1, 2.0, (3, tree.n_features)) ** 2
    tau_values = rng.uniform(1e-3, 10.0, (3, tree.depth + 1))
    b_tensor, tau_tensor = pt.dmatrix("b"), pt.dmatrix("tau")
    graph = upward_pass(b_tensor, var_b, tau_tensor, tree, MU0, S0, ops=PYTENSOR_OPS)
    log_marginal = pytensor.function([b_tensor, tau_tensor], graph.log_marginal)(b, tau_values)
    expected = upward_pass(b, var_b, tau_values, tree, MU0, S0).log_marginal
    np.testing.assert_allclose(log_marginal, expected, rtol=1e-10)


@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA", "JAX"])
def test_pytensor_graph_with_noise_and_missing_cell_in_every_backend(mode):
    """The collapsed model's log p(b | τ) and its gradient as each NUTS backend compiles them.

    PyMC's own sampler (C), nutpie on numba and nutpie or numpyro on JAX, with shared noise
    at every node and a missing cell (``fill_missing``'s huge variance): the value matches
    the NumPy reference, the gradient central differences of the reference.
    """
    rows = 3
    for seed in (2, 3):  # depths 2 and 3
        tree = _random_tree(seed)
        rng = np.random.default_rng(seed)
        b = rng.normal(size=(rows, tree.n_features))
        var_b = rng.uniform(0.1, 2.0, (rows, tree.n_features)) ** 2
        b[0, 0], var_b[0, 0] = 0.0, 1e30
        tau = rng.uniform(1e-3, 10.0, (rows, tree.depth + 1))
        noise = NodeNoise(
            tuple(rng.uniform(0.0, 0.8, (rows, n)) for n in tree.n_groups),
            rng.uniform(0.1, 0.5, rows),
        )
        b_tensor = pt.tensor("b", shape=b.shape)
        tau_tensor = pt.tensor("tau", shape=tau.shape)
        graph = upward_pass(b_tensor, var_b, tau_tensor, tree, MU0, S0, PYTENSOR_OPS, noise)
        total = graph.log_marginal.sum()
        function = pytensor.function(
            [b_tensor, tau_tensor],
            [graph.log_marginal, pytensor.grad(total, tau_tensor)],
            mode=mode,
        )
        log_marginal, gradient = function(b, tau)

        def reference(
            tau_values: np.ndarray,
            b: np.ndarray = b,
            var_b: np.ndarray = var_b,
            tree: TreeIndex = tree,
            noise: NodeNoise = noise,
        ) -> np.ndarray:
            return upward_pass(b, var_b, tau_values, tree, MU0, S0, noise=noise).log_marginal

        np.testing.assert_allclose(log_marginal, reference(tau), rtol=1e-12)
        step = 1e-6 * tau
        differences = np.zeros_like(tau)
        for index in np.ndindex(tau.shape):
            shift = np.zeros_like(tau)
            shift[index] = step[index]
            forward, backward = reference(tau + shift).sum(), reference(tau - shift).sum()
            differences[index] = (forward - backward) / (2.0 * step[index])
        np.testing.assert_allclose(gradient, differences, rtol=1e-5, atol=1e-8)


def _central_differences(function, tau: np.ndarray) -> np.ndarray:
    """Central differences of the scalar ``function`` at ``tau``, relative steps 1e-6."""
    step = 1e-6 * tau
    differences = np.zeros_like(tau)
    for index in np.ndindex(tau.shape):
        shift = np.zeros_like(tau)
        shift[index] = step[index]
        differences[index] = (function(tau + shift) - function(tau - shift)) / (2.0 * step[index])
    return differences


@pytest.mark.parametrize("mode", ["FAST_COMPILE", "NUMBA", "JAX"])
@pytest.mark.parametrize("shared_noise", [False, True], ids=["independent", "shared-noise"])
def test_log_marginal_op_matches_reference_in_every_backend(mode, shared_noise):
    """The collapsed model's Op: log p(b | τ) and its gradient in τ, as each backend runs it.

    Python (the kernel through ``perform``, as PyMC's own sampler runs it), numba (nutpie's
    numba backend: the kernel itself, never numba's object mode) and JAX (the Op's graph),
    on trees of depths 0 to 3 (JAX, whose compilation is slow, 3 alone) with three
    covariates, a missing cell (``fill_missing``'s huge variance) and, for ``shared_noise``,
    noise shared at every node: the value matches the NumPy reference, the gradient central
    differences of the reference.
    """
    rows = 3
    for seed in range(4) if mode != "JAX" else (3,):  # seed = depth
        tree = _random_tree(seed)
        rng = np.random.default_rng(seed)
        b = rng.normal(size=(rows, tree.n_features))
        var_b = rng.uniform(0.1, 2.0, (rows, tree.n_features)) ** 2
        b[1, 0], var_b[1, 0] = 0.0, 1e30
        tau = rng.uniform(1e-3, 10.0, (rows, tree.depth + 1))
        mu0, s0 = rng.normal(size=rows), rng.uniform(0.5, 2.0, rows)
        noise = (
            NodeNoise(
                tuple(rng.uniform(0.0, 0.8, (rows, n)) for n in tree.n_groups),
                rng.uniform(0.1, 0.5, rows),
            )
            if shared_noise
            else None
        )
        b_tensor, tau_tensor = pt.dmatrix("b"), pt.dmatrix("tau")
        density = log_marginal(b_tensor, tau_tensor, var_b, tree, mu0, s0, noise)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*object mode.*")
            function = pytensor.function(
                [b_tensor, tau_tensor],
                [density, pytensor.grad(density.sum(), tau_tensor)],
                mode=mode,
            )
        value, gradient = function(b, tau)

        def reference(
            tau_values: np.ndarray,
            b: np.ndarray = b,
            var_b: np.ndarray = var_b,
            tree: TreeIndex = tree,
            mu0: np.ndarray = mu0,
            s0: np.ndarray = s0,
            noise: NodeNoise | None = noise,
        ) -> np.ndarray:
            return upward_pass(b, var_b, tau_values, tree, mu0, s0, noise=noise).log_marginal

        np.testing.assert_allclose(value, reference(tau), rtol=1e-12)
        differences = _central_differences(lambda t, f=reference: f(t).sum(), tau)
        np.testing.assert_allclose(gradient, differences, rtol=1e-5, atol=1e-8)


def test_log_marginal_op_refuses_variances_of_another_shape():
    tree = _random_tree(1)
    var_b = np.ones((2, tree.n_features + 1))
    with pytest.raises(ValueError, match=f"the tree's {tree.n_features} features"):
        log_marginal(pt.dmatrix("b"), pt.dmatrix("tau"), var_b, tree, MU0, S0)


@pytest.mark.parametrize("tau_scale", EXTREME_TAU)
def test_log_marginal_op_gradient_at_extreme_scales(tau_scale):
    """PyTensor's own check of the Op's gradient (on log τ, as NUTS samples it), τ from 1e-6
    to 1e6 times the data's scale, with shared noise at a depth-2 tree's nodes."""
    tree = _random_tree(2)
    rng = np.random.default_rng(7)
    b = rng.normal(size=(2, tree.n_features))
    var_b = rng.uniform(0.1, 2.0, (2, tree.n_features)) ** 2
    noise = NodeNoise(
        tuple(rng.uniform(0.0, 0.8, (2, n)) for n in tree.n_groups), rng.uniform(0.1, 0.5, 2)
    )
    log_tau = np.log(tau_scale * rng.uniform(0.5, 2.0, (2, tree.depth + 1)))

    def density(log_tau_tensor: pt.TensorVariable) -> pt.TensorVariable:
        tau = pt.exp(log_tau_tensor)
        return log_marginal(pt.as_tensor(b), tau, var_b, tree, MU0, S0, noise).sum()

    pytensor.gradient.verify_grad(
        density, [log_tau], rng=rng, mode="FAST_COMPILE", abs_tol=1e-6, rel_tol=1e-6
    )


@pytest.mark.parametrize("seed", TREE_SEEDS)
@pytest.mark.parametrize("tau_scale", EXTREME_TAU)
def test_compiled_leave_one_out_matches_reference(seed, tau_scale):
    """p(b_j | b_−j, τ): with and without shared noise, a missing cell, a level without effects.

    Also without pooling (θ0 fixed: s0 = 0), where independent estimates make θ0's outside
    variance zero (a point mass).
    """
    tree = _random_tree(seed)
    b, var_b, tau = _data(tree, seed)
    tau = tau * tau_scale
    rng = np.random.default_rng(seed)
    b[0], var_b[0] = 0.0, 1e30 * max(1.0, tau_scale**2)  # a missing cell (fill_missing)
    if tree.depth:
        tau[-1] = 0.0  # a level the effects do not use
    shared = NodeNoise(
        tuple(rng.uniform(0.0, 0.8, n) for n in tree.n_groups), np.asarray(rng.uniform(0.1, 0.5))
    )
    work = np.empty((LEAVE_ONE_OUT_WORK, sum(tree.n_units)))
    mean, variance = np.empty(tree.n_features), np.empty(tree.n_features)
    for noise in (None, shared):
        for s0 in (S0, 0.0):
            expected = leave_one_out_normal(b, var_b, tau, tree, MU0, s0, noise)
            compiled = leave_one_out_tree(tree, noise)
            leave_one_out_moments(
                b, var_b, tau, np.empty(0), compiled, MU0, s0, work, mean, variance
            )
            np.testing.assert_allclose(mean, expected[0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(variance, expected[1], rtol=1e-10)
            # split in two (the parents' terms, then any chunk of features): bitwise the same
            terms = np.empty((1, tree.n_units[1], LEAVE_ONE_OUT_PARENT_TERMS))
            leave_one_out_parent_terms(
                b, var_b, tau, np.empty(0), compiled, MU0, s0, work, terms[0]
            )
            chunk = slice(1, tree.n_features)
            log_density = np.empty((1, tree.n_features - 1))
            held_out_log_density(
                b[chunk],
                var_b[chunk],
                compiled.noise[chunk],
                tree.parent_of(0)[chunk].astype(np.intp),
                tau[:1],
                terms,
                log_density,
            )
            np.testing.assert_array_equal(log_density[0], log_normal(b - mean, variance)[chunk])
