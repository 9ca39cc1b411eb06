"""The exact draws of θ0, the group means and θ given τ (and λ) after NUTS.

:func:`~bayeshier_pymc.sampling.draw_given_scales` runs the Gibbs engine's compiled passes in
blocks of draws; it must give the reference algebra's draws
(:func:`~bayeshier_pymc.gaussian_tree.upward_pass`, :func:`~bayeshier_pymc.gaussian_tree.draw_tree`)
for the same generator, and the exact posterior given τ and λ (dense Gaussian conditioning).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import CancelledError

import numpy as np
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc import sampling
from bayeshier_pymc.gaussian_tree import draw_tree, upward_pass
from bayeshier_pymc.gibbs.layout import TreeData
from bayeshier_pymc.model import group_mean_name
from bayeshier_pymc.problem import ShrinkageProblem

LEVELS = ("subclass", "superclass")


@pytest.fixture(scope="module")
def study():
    """Stage-1 estimates of a small simulation with two annotation levels (tree noise)."""
    simulated = bh.simulate(30, 12, 2, n_superclasses=2, random_seed=4)
    fit = bh.mlm(simulated.Y, simulated.X, x_intercept=False)
    return fit, bh.Hierarchy.from_frame(simulated.annotations, list(LEVELS))


def _problem(study, depth: int, noise: str, group_prior: str) -> ShrinkageProblem:
    fit, tree = study
    priors = {"group_prior": group_prior}
    return bh.ShrinkageModel(fit, tree, depth=depth, noise=noise, priors=priors).problem


def _scales(problem: ShrinkageProblem, n_chains: int, n_draws: int, rng: np.random.Generator):
    """Random τ (chain, draw, covariate, level) and, under a heavy-tailed prior, λ per level."""
    lead = (n_chains, n_draws, problem.b.shape[0])
    tau = rng.uniform(0.1, 0.6, (*lead, len(problem.tree.levels) + 1))
    if not problem.priors.heavy_tailed:
        return tau, None
    return tau, [rng.uniform(0.2, 3.0, (*lead, n)) for n in problem.tree.n_groups]


def _reference(problem, tau, local_scales, rng):
    """θ0, the group means and θ of every chain by the NumPy reference algebra."""
    priors, index, noise = problem.priors, problem.index, problem.noise
    chains = []
    for chain, chain_tau in enumerate(tau):
        local = None if local_scales is None else tuple(s[chain] ** 2 for s in local_scales)
        scales = problem.algebra_scales(chain_tau)
        messages = upward_pass(
            problem.algebra_b,
            problem.var_b,
            scales,
            index,
            priors.mu0,
            priors.s0,
            noise=noise,
            local=local,
        )
        chains.append(
            draw_tree(messages, scales, index, priors.mu0, priors.s0, rng, noise=noise, local=local)
        )
    return chains


@pytest.mark.parametrize("group_prior", ["normal", "horseshoe"])
@pytest.mark.parametrize("noise", ["independent", "auto"])
@pytest.mark.parametrize("depth", [1, 2])
def test_draws_are_the_reference_algebras_for_the_same_generator(
    study, monkeypatch, depth, noise, group_prior
):
    """Same normals in the same order: the reference's draws up to rounding, in any blocks."""
    problem = _problem(study, depth, noise, group_prior)
    assert problem.correlated == (noise == "auto")
    tau, local_scales = _scales(problem, 2, 7, np.random.default_rng(1))
    # blocks of 3, 3 and 1 draws
    monkeypatch.setattr(sampling, "DRAW_BLOCK_CELLS", 3 * problem.b.size)
    drawn = sampling.draw_given_scales(problem, tau, np.random.default_rng(2), local_scales)
    expected = _reference(problem, tau, local_scales, np.random.default_rng(2))
    np.testing.assert_allclose(drawn["mu"], [theta0 for theta0, _, _ in expected], rtol=1e-10)
    np.testing.assert_allclose(drawn["theta"], [theta for _, _, theta in expected], rtol=1e-10)
    for index, level in enumerate(problem.tree.levels):
        np.testing.assert_allclose(
            drawn[group_mean_name(level)], [groups[index] for _, groups, _ in expected], rtol=1e-10
        )


def _dense_posterior(problem, covariate, tau, local):
    """Mean and covariance of (θ0, groups of levels D..1 of the noise tree, θ) given τ and λ."""
    index, priors = problem.index, problem.priors
    scales = problem.algebra_scales(tau)
    top = index.depth + 1
    sizes = [index.n_units[level] for level in range(top, -1, -1)]
    offsets = dict(zip(range(top, -1, -1), np.cumsum([0, *sizes[:-1]]), strict=True))
    n = sum(sizes)
    variances = np.empty(n)
    ancestry = np.eye(n)
    variances[0] = priors.s0[covariate] ** 2
    for level in range(top - 1, -1, -1):
        units = offsets[level] + np.arange(index.n_units[level])
        variance = np.full(units.size, scales[level] ** 2)
        if local is not None and 1 <= level <= len(local):
            variance = variance * local[level - 1]
        variances[units] = variance
        parents = offsets[level + 1] + index.parent_of(level)
        ancestry[units] += ancestry[parents]
    prior = (ancestry * variances) @ ancestry.T
    theta = offsets[0] + np.arange(index.n_features)
    noise = np.diag(problem.var_b[covariate])
    if problem.noise is not None:
        noise = noise + problem.noise.top[covariate]
        member = np.arange(index.n_features)
        for level in range(1, top):
            member = index.parent_of(level - 1)[member]
            shared = problem.noise.groups[level - 1][covariate][member]
            noise = noise + (member[:, None] == member[None, :]) * shared[:, None]
    gain = prior[:, theta] @ np.linalg.inv(prior[np.ix_(theta, theta)] + noise)
    mu0 = priors.mu0[covariate]
    mean = mu0 + gain @ (problem.algebra_b[covariate] - mu0)
    return mean, prior - gain @ prior[theta], offsets


@pytest.mark.parametrize("depth", [1, 2])
def test_heavy_tailed_draws_under_tree_noise_are_the_dense_posterior(study, monkeypatch, depth):
    """θ0, every group mean and θ given fixed τ and λ: means and variances, MCSE tolerances."""
    problem = _problem(study, depth, "auto", "horseshoe")
    assert problem.correlated
    n_draws = 20_000
    tau, local_scales = _scales(problem, 1, 1, np.random.default_rng(3))
    tau = np.broadcast_to(tau, (1, n_draws, *tau.shape[2:]))
    local_scales = [np.broadcast_to(s, (1, n_draws, *s.shape[2:])) for s in local_scales]
    monkeypatch.setattr(sampling, "DRAW_BLOCK_CELLS", 1000 * problem.b.size)
    drawn = sampling.draw_given_scales(problem, tau, np.random.default_rng(4), local_scales)
    z = []
    for covariate in range(problem.b.shape[0]):
        local = [s[0, 0, covariate] ** 2 for s in local_scales]
        mean, cov, offsets = _dense_posterior(problem, covariate, tau[0, 0, covariate], local)
        parts = [
            (offsets[problem.index.depth + 1], drawn["mu"][0, :, covariate, None]),
            (offsets[0], drawn["theta"][0, :, covariate]),
        ]
        parts += [
            (offsets[level], drawn[group_mean_name(name)][0, :, covariate])
            for level, name in enumerate(problem.tree.levels, start=1)
        ]
        for start, values in parts:
            block = slice(start, start + values.shape[1])
            variance = np.diag(cov)[block]
            z.append((values.mean(axis=0) - mean[block]) / np.sqrt(variance / n_draws))
            z.append((values.var(axis=0) / variance - 1.0) / np.sqrt(2.0 / n_draws))
    z = np.concatenate(z)
    # about 150 z-scores: a Bonferroni limit at a family-wise false alarm rate of 1e-3
    assert np.abs(z).max() < 4.8, np.abs(z).max()


def _swapped(scales: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(scales, 2, 3))


@pytest.mark.parametrize(
    ("case", "bad_tau", "bad_scales", "message"),
    [
        ("tau without a level", lambda t: t[..., :2], None, "tau must be"),
        ("tau without its chain axis", lambda t: t[0], None, "tau must be"),
        (
            "tau with a covariate too many",
            lambda t: np.concatenate([t, t[:, :, :1]], 2),
            None,
            "tau must be",
        ),
        (
            "an extra group column",
            None,
            lambda s: np.concatenate([s, s[..., :1]], -1),
            "level 'subclass'",
        ),
        ("covariate and group axes swapped", None, _swapped, "level 'subclass'"),
        ("fewer chains than tau", None, lambda s: s[:1], "level 'subclass'"),
        ("fewer draws than tau", None, lambda s: s[:, :3], "level 'subclass'"),
    ],
)
def test_scales_of_the_wrong_shape_are_refused(study, case, bad_tau, bad_scales, message):
    """A ValueError naming the level and both shapes, not wrong θ or an IndexError."""
    problem = _problem(study, 2, "independent", "horseshoe")
    tau, local_scales = _scales(problem, 2, 5, np.random.default_rng(1))
    assert problem.tree.n_groups[0] != problem.b.shape[0]  # swapped axes change the shape
    if bad_tau is not None:
        tau = bad_tau(tau)
    if bad_scales is not None:
        local_scales = [bad_scales(local_scales[0]), local_scales[1]]
    with pytest.raises(ValueError, match=message) as raised:
        sampling.draw_given_scales(problem, tau, np.random.default_rng(0), local_scales)
    assert str(np.shape(tau if bad_tau is not None else local_scales[0])) in str(raised.value)


def test_normals_drawn_ahead_must_match_the_scale_draws(study):
    """Normals drawn for other scale draws are refused with a clear error."""
    problem = _problem(study, 1, "auto", "normal")
    tau, _ = _scales(problem, 2, 5, np.random.default_rng(5))
    normals = sampling._draw_normals(problem, (2, 4, problem.b.shape[0]), np.random.default_rng(6))
    with pytest.raises(ValueError, match=r"normals drawn for scale draws of shape \(2, 4, 2\)"):
        sampling._draw_given_normals(problem, tau, normals, None)


def test_layout_gathers_by_rows_give_the_same_values(study):
    """rows_to_sorted is to_sorted laid out by rows; from_sorted inverts it, into ``out`` too."""
    problem = _problem(study, 2, "auto", "normal")
    rng = np.random.default_rng(7)
    data = TreeData.from_problem(problem, copies=3)
    # every level in an order of its own (the simulation lists θ in the tree's order)
    orders = tuple(rng.permutation(n) for n in data.n_units)
    positions = tuple(np.argsort(order) for order in orders)
    data = dataclasses.replace(data, orders=orders, positions=positions)
    for level, n_units in enumerate(data.n_units[:-1]):
        values = rng.standard_normal((data.n_rows, n_units))
        in_order = data.rows_to_sorted(values, level)
        assert in_order.flags.c_contiguous
        np.testing.assert_array_equal(in_order, data.to_sorted(values, level))
        np.testing.assert_array_equal(in_order, values[:, orders[level]])
        np.testing.assert_array_equal(data.from_sorted(in_order, level), values)
        out = np.empty_like(values)
        assert data.from_sorted(in_order, level, out=out) is out
        np.testing.assert_array_equal(out, values)


def test_normals_drawn_in_blocks_are_one_calls_and_can_be_given_up(study, monkeypatch):
    """θ's normals drawn a block of draws at a time are the stream of one call per chain;
    once ``stopped()`` is True the drawing gives up at the next block."""
    problem = _problem(study, 2, "auto", "normal")
    lead = (2, 7, problem.b.shape[0])
    whole = sampling._draw_normals(problem, lead, np.random.default_rng(3))
    monkeypatch.setattr(sampling, "NORMAL_BLOCK_CELLS", 2 * problem.b.size)  # blocks of 2
    blocks = sampling._draw_normals(problem, lead, np.random.default_rng(3))
    np.testing.assert_array_equal(blocks.theta, whole.theta)
    for chain_blocks, chain_whole in zip(blocks.by_chain, whole.by_chain, strict=True):
        for level_blocks, level_whole in zip(chain_blocks, chain_whole, strict=True):
            np.testing.assert_array_equal(level_blocks, level_whole)
    asked = []

    def stopped() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(CancelledError):
        sampling._draw_normals(problem, lead, np.random.default_rng(3), stopped)
    assert len(asked) == 3  # two blocks drawn, given up before the third
    empty = sampling._draw_normals(problem, (2, 0, problem.b.shape[0]), np.random.default_rng(3))
    assert empty.theta.shape == (2, 0, *problem.b.shape)
