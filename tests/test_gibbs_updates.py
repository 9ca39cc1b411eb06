"""Each Gibbs update against its exact conditional, computed independently (KS tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from bayeshier_pymc.gaussian_tree import TreeIndex, kernels, upward_pass
from bayeshier_pymc.gibbs import layout, scale_kernels, sweeps
from bayeshier_pymc.hierarchy import Hierarchy

KS_LEVEL = 1e-3
"""p-value below which a KS test rejects (fixed seeds; each test makes only a few tests)."""
N_ROWS = 4000


def _hierarchy(depth: int) -> Hierarchy:
    """Nine features; the subclasses interleave across superclasses (so sorting matters)."""
    annotations = pd.DataFrame(
        {
            "sub": ["c", "a", "b", "a", "d", "c", "b", "e", "d"],
            "super": ["Y", "Y", "X", "Y", "X", "Y", "X", "Z", "X"],
        },
        index=[f"f{j}" for j in range(9)],
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"]).truncate(depth)


def _data(depth: int, rows: int, seed: int = 0) -> tuple[layout.TreeData, np.ndarray, np.ndarray]:
    """Identical rows of one data set (so rows are independent replicates of one update)."""
    rng = np.random.default_rng(seed)
    b, se = rng.normal(0.0, 1.0, size=9), rng.uniform(0.3, 0.8, size=9)
    tree = TreeIndex.from_hierarchy(_hierarchy(depth))
    scales = np.array([0.8, 1.2, 0.5][: depth + 1])
    data = layout.TreeData.build(
        np.tile(b, (rows, 1)), np.tile(se**2, (rows, 1)), tree, scales, 0.2, 1.5
    )
    return data, b, se


def _fixed_state(data: layout.TreeData, seed: int = 1) -> layout.TreeState:
    """One random state, copied to every row."""
    rng = np.random.default_rng(seed)
    tau = np.tile(rng.uniform(0.4, 1.0, size=data.depth + 1), (data.n_rows, 1))
    units = [np.tile(rng.normal(size=n), (data.n_rows, 1)) for n in data.n_units]
    return layout.TreeState(tau, units)


def _ks(draws: np.ndarray, cdf) -> float:
    return stats.kstest(draws, cdf).pvalue


# ----------------------------------------------------------------------------- structure
def test_tree_data_sorts_every_level_by_parent():
    tree = TreeIndex.from_hierarchy(_hierarchy(2))
    data = layout.TreeData.build(np.zeros((2, 9)), np.ones((2, 9)), tree, np.ones(3), 0.0, 1.0)
    values = np.random.default_rng(0).normal(size=(2, 9))
    for level in range(3):
        assert np.all(np.diff(data.parent_index[level]) >= 0)
        units = np.random.default_rng(level).normal(size=(2, data.n_units[level]))
        np.testing.assert_array_equal(data.from_sorted(data.to_sorted(units, level), level), units)
    # group sums in the caller's order equal the sorted segment sums
    expected = np.zeros((2, tree.n_groups[0]))
    np.add.at(expected, (slice(None), tree.parents[0]), values)
    got = data.from_sorted(data.sum_into_parents(data.to_sorted(values), 0), 1)
    np.testing.assert_allclose(got, expected)
    # every unit keeps its parent: sorted parent index mapped back = the caller's parent
    for level in range(2):
        parent_of_sorted = data.orders[level + 1][data.parent_index[level]]
        np.testing.assert_array_equal(parent_of_sorted, tree.parents[level][data.orders[level]])


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_log_marginal_and_messages_match_upward_pass(depth):
    rng = np.random.default_rng(2)
    tree = TreeIndex.from_hierarchy(_hierarchy(depth))
    b, var_b = rng.normal(size=(3, 9)), rng.uniform(0.1, 1.0, size=(3, 9))
    data = layout.TreeData.build(b, var_b, tree, np.ones(depth + 1), 0.3, 1.7)
    differences = []
    for _ in range(5):
        tau = rng.uniform(0.05, 2.0, size=(3, depth + 1))
        reference = upward_pass(b, var_b, tau, tree, 0.3, 1.7)
        evaluation = scale_kernels.evaluate(data, tau)
        differences.append(evaluation.log_marginal - reference.log_marginal)
        messages = evaluation.messages
        for level in range(1, depth + 1):
            np.testing.assert_allclose(
                data.from_sorted(messages[level][0], level), reference.y[level]
            )
            np.testing.assert_allclose(
                data.from_sorted(messages[level][1], level), reference.v[level]
            )
        np.testing.assert_allclose(messages[-1][0][:, 0], reference.y[-1])
    assert np.ptp(np.array(differences), axis=0).max() < 1e-10


@pytest.mark.parametrize("tau", [1e-9, 0.3, 4.0, 1e9])
@pytest.mark.parametrize("se_scale", [1e-40, 1.0, 1e40])
def test_feature_level_term_matches_direct_formula(tau, se_scale):
    """From scales far below to far above the standard errors, where the products of the
    variances that share one logarithm leave the range of floats."""
    rng = np.random.default_rng(3)
    tree = TreeIndex.from_hierarchy(_hierarchy(1))
    b = rng.normal(size=(4, 9)) * se_scale
    var_b = (rng.uniform(0.3, 1.0, (4, 9)) * se_scale) ** 2
    data = layout.TreeData.build(b, var_b, tree, np.ones(2), 0.0, 1.0)
    scales = np.column_stack([tau * rng.uniform(0.5, 1.0, 4), np.ones(4)])
    evaluation = scale_kernels.evaluate(data, scales)
    y, v = data.b, data.var_b
    total = v + scales[:, :1] ** 2
    index = data.parent_index[0]
    precision = np.stack([(1 / total)[:, index == h].sum(axis=1) for h in range(5)], axis=1)
    mean = np.stack([(y / total)[:, index == h].sum(axis=1) for h in range(5)], axis=1) / precision
    resid = y - mean[:, index]
    expected = -0.5 * ((np.log(total) + resid**2 / total).sum(1) + np.log(precision).sum(1))
    np.testing.assert_allclose(evaluation.terms[0], expected, rtol=1e-12)
    parent_y, parent_v = evaluation.messages[1]
    np.testing.assert_allclose(parent_y, mean, rtol=1e-10, atol=1e-12 * se_scale)
    np.testing.assert_allclose(parent_v, 1 / precision, rtol=1e-12)


def test_lane_sum_log_survives_products_out_of_range():
    values = np.exp(np.random.default_rng(5).uniform(-600.0, 600.0, size=(1000, 3)))
    for n in (1000, 7):
        total = np.ones(3)
        kernels.sum_log(values[:n], total)
        np.testing.assert_allclose(total, 1.0 + np.log(values[:n]).sum(axis=0), rtol=1e-12)


# ----------------------------------------------------------------------------- primitives
def test_inverse_gamma_draws_follow_scipy():
    rng = np.random.default_rng(4)
    draws = sweeps.draw_inverse_gamma(2.5, np.full(20_000, 3.0), rng)
    assert _ks(draws, stats.invgamma(2.5, scale=3.0).cdf) > KS_LEVEL


def test_mixing_and_scale_without_data_give_the_half_cauchy_prior():
    """λ | τ and τ² | λ alternated with no units leave HalfCauchy(A) invariant and mix."""
    rng = np.random.default_rng(5)
    tau = np.full(N_ROWS, 3.0)
    for _ in range(30):
        mixing = sweeps.draw_mixing(tau, 0.7, rng)
        tau = sweeps.draw_scale(np.zeros(N_ROWS), 0, mixing, rng)
    assert _ks(tau, stats.halfcauchy(scale=0.7).cdf) > KS_LEVEL


def _grid_cdf(log_density, grid):
    density = np.exp(log_density - log_density.max())
    cdf = integrate.cumulative_trapezoid(density, grid, initial=0.0)
    return lambda x: np.interp(x, grid, cdf / cdf[-1])


@pytest.mark.parametrize("level", [0, 1])
def test_conjugate_scale_update_has_the_model_conditional(level):
    """τ | units ∝ HalfCauchy(τ; A) Π N(unit; parent, τ²), integrated on a grid, vs the sweep."""
    data, _, _ = _data(1, N_ROWS)
    state = _fixed_state(data)
    parent = state.units[level + 1][0, data.parent_index[level]]
    deviations = state.units[level][0] - parent
    grid = np.linspace(1e-3, 6.0, 20_001)
    log_density = -np.log1p((grid / data.tau_scale[0, level]) ** 2) + stats.norm.logpdf(
        deviations[:, None], 0.0, grid
    ).sum(axis=0)
    rng = np.random.default_rng(6)
    for _ in range(30):
        sweeps.update_scale_conjugate(data, state, level, rng)
    assert _ks(state.tau[:, level], _grid_cdf(log_density, grid)) > KS_LEVEL


def _exact_unit_conditional(data, state, level, b, se):
    """Mean and sd of one unit given its parent and children, by precision algebra."""
    if level <= data.depth:
        prior_mean = state.units[level + 1][0, data.parent_index[level]]
        prior_precision = np.full(data.n_units[level], 1.0 / state.tau[0, level] ** 2)
    else:
        prior_mean, prior_precision = data.mu0[:1], np.array([1.0 / data.s0[0] ** 2])
    if level == 0:
        child_sum = data.to_sorted(b / se**2)
        child_precision = data.to_sorted(1.0 / se**2)
    else:
        index = data.parent_index[level - 1]
        precision = 1.0 / state.tau[0, level - 1] ** 2
        child_sum = np.bincount(index, state.units[level - 1][0]) * precision
        child_precision = np.bincount(index) * precision
    posterior_precision = prior_precision + child_precision
    mean = (prior_mean * prior_precision + child_sum) / posterior_precision
    return mean, 1.0 / np.sqrt(posterior_precision)


@pytest.mark.parametrize(("depth", "level"), [(0, 0), (0, 1), (2, 0), (2, 1), (2, 2), (2, 3)])
def test_unit_update_has_the_exact_conditional(depth, level):
    data, b, se = _data(depth, N_ROWS)
    state = _fixed_state(data)
    mean, sd = _exact_unit_conditional(data, state, level, b, se)
    sweeps.update_units(data, state, level, np.random.default_rng(7))
    draws = state.units[level]
    for unit in (0, data.n_units[level] - 1):
        cdf = stats.norm(mean[unit], sd[unit]).cdf
        assert _ks(draws[:, unit], cdf) > KS_LEVEL / 2


def _dense_unit_posteriors(hierarchy, b, se, tau, mu0, s0):
    """Mean and sd of every unit (θ, each level's groups, θ0) given b and τ, by dense algebra.

    Each unit is θ0 plus the independent deviations on its path up the tree.
    """
    sizes = [hierarchy.n_features, *hierarchy.n_groups, 1]
    offsets = np.cumsum([0, *sizes])
    prior_var = np.concatenate(
        [np.full(n, tau[level] ** 2) for level, n in enumerate(sizes[:-1])] + [[s0**2]]
    )
    prior_mean = np.zeros(offsets[-1])
    prior_mean[-1] = mu0

    def path(level):
        rows = np.arange(sizes[level])
        matrix, codes = np.zeros((rows.size, offsets[-1])), rows
        for upper in range(level, len(sizes)):
            matrix[rows, offsets[upper] + codes] = 1.0
            parents = hierarchy.parents[upper] if upper < hierarchy.depth else None
            codes = parents[codes] if parents is not None else np.zeros_like(codes)
        return matrix

    features = path(0)
    cov_b = features @ np.diag(prior_var) @ features.T + np.diag(se**2)
    resid = np.linalg.solve(cov_b, b - features @ prior_mean)
    result = []
    for level in range(len(sizes)):
        cross = path(level) @ np.diag(prior_var) @ features.T
        mean = path(level) @ prior_mean + cross @ resid
        var = np.diag(path(level) @ np.diag(prior_var) @ path(level).T) - np.einsum(
            "ij,ji->i", cross, np.linalg.solve(cov_b, cross.T)
        )
        result.append((mean, np.sqrt(var)))
    return result


@pytest.mark.parametrize("depth", [0, 2])
def test_units_given_scales_are_exact(depth):
    data, b, se = _data(depth, N_ROWS)
    tau = np.array([0.6, 0.9, 0.4][: depth + 1])
    exact = _dense_unit_posteriors(_hierarchy(depth), b, se, tau, data.mu0[0], data.s0[0])
    units = [np.zeros((N_ROWS, n)) for n in data.n_units]
    state = layout.TreeState(np.tile(tau, (N_ROWS, 1)), units)
    messages = list(scale_kernels.evaluate(data, state.tau).messages)
    sweeps.draw_units_given_scales(data, state, messages, np.random.default_rng(8))
    for level, (mean, sd) in enumerate(exact):
        draws = state.units[level] if level > depth else data.from_sorted(state.units[level], level)
        for unit in {0, len(mean) - 1}:
            cdf = stats.norm(mean[unit], sd[unit]).cdf
            assert _ks(draws[:, unit], cdf) > KS_LEVEL / 8


@pytest.mark.parametrize("method", ["slice", "independence"])
@pytest.mark.parametrize(("depth", "level"), [(0, 0), (2, 0), (2, 1), (2, 2)])
def test_collapsed_scale_update_has_the_exact_conditional(depth, level, method):
    """p(τ_l | b, other τ) ∝ p(b | τ) HalfCauchy(τ_l), from upward_pass on a grid of log τ_l."""
    data, b, se = _data(depth, N_ROWS)
    tree = TreeIndex.from_hierarchy(_hierarchy(depth))
    tau = np.array([0.6, 0.9, 0.4][: depth + 1])
    grid = np.linspace(-9.0, 5.0, 8001)
    grid_tau = np.tile(tau, (grid.size, 1))
    grid_tau[:, level] = np.exp(grid)
    log_target = (
        upward_pass(b, se**2, grid_tau, tree, data.mu0[0], data.s0[0]).log_marginal
        + stats.halfcauchy.logpdf(np.exp(grid), scale=data.tau_scale[0, level])
        + grid
    )
    shape = (N_ROWS, depth + 1)
    kernel = scale_kernels.ScaleKernel()
    if method != "slice":  # a deliberately imperfect, frozen proposal
        frozen = scale_kernels.ScaleProposal(np.full(shape, -0.5), np.full(shape, 1.2))
        kernel = scale_kernels.ScaleKernel(
            state=scale_kernels.ScaleTuning(tuning=False, frozen=frozen)
        )
    state = layout.TreeState(np.tile(tau, (N_ROWS, 1)), [])
    rng = np.random.default_rng(9)
    for _ in range(25):
        scale_kernels.update_scales(data, state, kernel, rng, levels=[level])
    assert kernel.uses_slice == (method == "slice")
    assert _ks(np.log(state.tau[:, level]), _grid_cdf(log_target, grid)) > KS_LEVEL
    np.testing.assert_array_equal(
        np.delete(state.tau, level, axis=1), np.delete(np.tile(tau, (N_ROWS, 1)), level, axis=1)
    )


@pytest.mark.parametrize("tune", [8, 400])
def test_collapsed_sweep_messages_follow_the_new_scales(tune):
    """Slice sweeps (short tuning) and compiled MH sweeps both return the new τ's messages;
    the MH kernel's kept evaluation follows τ even when τ is changed between updates."""
    data, _, _ = _data(2, 6)
    rng = np.random.default_rng(10)
    state = sweeps.initial_state(data, rng)
    kernel = scale_kernels.ScaleKernel.for_tuning(tune=tune)
    for _ in range(12):
        messages, acceptance = scale_kernels.update_scales(data, state, kernel, rng)
        kernel.observe(np.log(state.tau))
    kernel.stop_tuning()
    messages, acceptance = scale_kernels.update_scales(data, state, kernel, rng)
    assert kernel.uses_slice == (tune == 400)  # 12 sweeps fit a proposal only when tune = 8
    assert acceptance.shape == (6,)
    assert np.isnan(acceptance).all() == kernel.uses_slice
    if not kernel.uses_slice:  # τ changed behind the kernel's back: its evaluation is redone
        state.tau *= 1.5
        messages, acceptance = scale_kernels.update_scales(data, state, kernel, rng)
        expected = scale_kernels.evaluate(data, state.tau).terms
        np.testing.assert_allclose(kernel.cache.terms, expected)
    fresh = scale_kernels.evaluate(data, state.tau)
    for got, expected in zip(messages, fresh.messages, strict=True):
        np.testing.assert_allclose(got[0], expected[0])
        np.testing.assert_allclose(got[1], expected[1])


@pytest.mark.parametrize("lowest", [None, 1, 0])
def test_collapsed_sweep_draws_only_the_units_asked_for(lowest):
    data, _, _ = _data(2, 4)
    rng = np.random.default_rng(12)
    state = sweeps.initial_state(data, rng)
    before = [units.copy() for units in state.units]
    sweeps.collapsed_sweep(
        data, state, scale_kernels.ScaleKernel.for_tuning(10), rng, draw_units_from=lowest
    )
    for level, (old, new) in enumerate(zip(before, state.units, strict=True)):
        drawn = lowest is not None and level >= lowest
        assert np.array_equal(old, new) != drawn, level


def test_initial_states_differ_between_rows():
    data, _, _ = _data(1, 4)
    state = sweeps.initial_state(data, np.random.default_rng(11))
    assert len(np.unique(state.tau[:, 0])) == 4
    assert np.all((state.tau <= data.tau_scale) & (state.tau >= data.tau_scale / 20))
    assert len(np.unique(state.units[0][:, 0])) == 4


def test_kernel_rejects_zero_steps():
    with pytest.raises(ValueError, match="scale_steps"):
        scale_kernels.ScaleKernel(steps=0)
