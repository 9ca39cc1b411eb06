"""Simulation-based calibration (Talts et al. 2018) of the Gibbs engine, the PyMC step and NUTS.

Each covariate of one fit is an independent replication: its θ0, τ and units are drawn from the
prior, its estimates from the likelihood, and the rank of every true value among thinned
posterior draws is recorded. With a correct sampler the ranks are uniform; a chi-square test
over rank bins checks that, Bonferroni-corrected over the quantities of a run. The quick
versions run in the default suite; the full versions (more replications, every depth and
sampler) are marked ``slow``. A deliberately wrong update (a dropped 1/2 in the inverse-gamma
rate of τ²) must fail the same test.

With correlated estimates (issue 14) the estimates carry a fixed tree-structured noise on the
full two-level tree whatever the depth fitted, b = θ + shared node noise + own noise, and the
same ranks must be uniform; the model that ignores the shared noise (``noise="independent"``
fitted to the same b, with each estimate's total variance) must fail the same test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel
from bayeshier_pymc.gibbs import sweeps
from bayeshier_pymc.model import group_mean_name, scale_levels
from bayeshier_pymc.noise import NodeVariances, TreeNoise
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.sampling import sample_gibbs

PRIORS = None
"""The package's default priors, scaled to each replication's standard errors."""
BASE_SE = np.linspace(0.1, 0.4, 12)
"""The standard errors of the 12 features, times each replication's unit."""
N_RANKS = 99
"""Posterior draws each true value is ranked among (ranks 0..99)."""
N_BINS = 10
FAMILY_ALPHA = 1e-3
"""Family-wise level of the uniformity tests of one calibration run."""


def _hierarchy(depth: int) -> Hierarchy:
    """12 features in 4 subclasses in 2 superclasses, truncated to ``depth``."""
    sub = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "d", "d", "d"]
    annotations = pd.DataFrame(
        {"sub": sub, "super": ["X" if s in "ab" else "Y" for s in sub]},
        index=[f"f{j}" for j in range(12)],
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"]).truncate(depth)


def simulate_from_prior(
    depth: int, n_reps: int, seed: int
) -> tuple[ShrinkageModel, dict[str, np.ndarray]]:
    """θ0, τ and units from the prior and b ~ N(θ, s²), one replication per covariate.

    Every replication has its own units: its standard errors are :data:`BASE_SE` times a
    log-uniform factor in [0.1, 10], and its priors (:data:`PRIORS`, resolved from its
    standard errors) differ accordingly (``test_priors.py`` checks that each covariate gets
    its own). Returns the model of the simulated estimates and the true values (one per
    replication) of τ at every level, θ0, the first group mean of every level and the first θ.
    """
    rng = np.random.default_rng(seed)
    tree = _hierarchy(depth)
    sizes = [tree.n_features, *tree.n_groups]
    covariates = [f"rep{k}" for k in range(n_reps)]
    unit = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n_reps))
    se = unit[:, None] * BASE_SE
    priors = Priors.resolve(PRIORS, scale_levels(tree), covariates, se)
    theta0 = rng.normal(priors.mu0, priors.s0)
    tau = np.abs(priors.tau_scale * rng.standard_cauchy((n_reps, depth + 1)))
    truth = {"mu": theta0}
    values = theta0[:, None]
    for level in range(depth, -1, -1):
        parents = tree.parents[level] if level < depth else np.zeros(sizes[level], dtype=int)
        values = rng.normal(values[:, parents], tau[:, level : level + 1])
        name = "theta" if level == 0 else group_mean_name(tree.levels[level - 1])
        truth[f"{name}[0]"] = values[:, 0]
        truth[f"tau[{level}]"] = tau[:, level]
    estimates = (
        pd.DataFrame(rng.normal(values, se), index=covariates, columns=tree.features),
        pd.DataFrame(se, index=covariates, columns=tree.features),
    )
    return ShrinkageModel(estimates, tree, priors=PRIORS), truth


def _draws(posterior, name: str) -> np.ndarray:
    """(sample, replication) draws of a quantity named as in :func:`simulate_from_prior`."""
    if name == "mu":
        values = posterior["mu"]
    elif name.startswith("tau["):
        values = posterior["tau"].isel(level=int(name[4:-1]))
    else:
        variable = name.split("[")[0]
        values = posterior[variable].isel({posterior[variable].dims[-1]: 0})
    stacked = values.stack(sample=("chain", "draw")).transpose("sample", "covariate")
    return stacked.to_numpy()


def rank_p_values(idata, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Chi-square p-value of the uniformity of the ranks of each quantity."""
    p_values = {}
    for name, true_values in truth.items():
        draws = _draws(idata.posterior, name)
        thinned = draws[np.linspace(0, draws.shape[0] - 1, N_RANKS).round().astype(int)]
        ranks = (thinned < true_values).sum(axis=0)
        counts = np.bincount(ranks * N_BINS // (N_RANKS + 1), minlength=N_BINS)
        p_values[name] = float(stats.chisquare(counts).pvalue)
    return p_values


def assert_calibrated(p_values: dict[str, float]) -> None:
    threshold = FAMILY_ALPHA / len(p_values)
    failed = {name: p for name, p in p_values.items() if p < threshold}
    assert not failed, f"ranks not uniform (p < {threshold:.1e}): {failed}"


def run_sampler(model: ShrinkageModel, sampler: str, seed: int):
    """Fit with one of 'collapsed', 'conjugate' (engine), 'step' (PyMC step) or 'nuts'."""
    common = {"draws": 500, "tune": 300, "chains": 2, "random_seed": seed, "progressbar": False}
    if sampler in ("collapsed", "conjugate"):
        return sample_gibbs(model.problem, scheme=sampler, **common)
    if sampler == "step":
        return sample_gibbs(model.problem, scheme="conjugate", backend="pymc", cores=1, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.sample("nuts", nuts_sampler="pymc", cores=1, **common)


def calibration(depth: int, sampler: str, n_reps: int, seed: int) -> dict[str, float]:
    model, truth = simulate_from_prior(depth, n_reps, seed)
    return rank_p_values(run_sampler(model, sampler, seed), truth)


SHARED_NOISE = NodeVariances(
    top=0.5**2, groups=(np.full(4, 0.6**2), np.full(2, 0.4**2)), own=np.zeros(12)
)
"""Shared noise variances of the correlated estimates: top, subclasses, superclasses."""


def simulate_correlated(
    depth: int, n_reps: int, seed: int, noise: str = "auto"
) -> tuple[ShrinkageModel, dict[str, np.ndarray]]:
    """As :func:`simulate_from_prior`, plus noise shared at every node of the full tree.

    The estimates' own noise has variance se²; the shared noise (:data:`SHARED_NOISE`, on the
    two-level tree whatever ``depth``) is drawn after everything else. The model is fitted
    with that ``TreeNoise`` (``noise="auto"``), or, for ``noise="independent"``, as
    independent estimates with their total variances (the shared noise ignored).
    """
    model, truth = simulate_from_prior(depth, n_reps, seed)
    problem = model.problem
    unit = problem.se[:, 0] / BASE_SE[0]
    full = _hierarchy(2)
    rng = np.random.default_rng([seed, 14])
    shared = rng.normal(0.0, np.sqrt(SHARED_NOISE.top), (n_reps, 1))
    for level, variances in enumerate(SHARED_NOISE.groups):
        draws = rng.normal(0.0, np.sqrt(variances), (n_reps, variances.size))
        shared = shared + draws[:, full.membership(level)]
    covariates = problem.covariates
    structure = TreeNoise(
        hierarchy=full,
        residual=NodeVariances(SHARED_NOISE.top, SHARED_NOISE.groups, BASE_SE**2),
        covariate_scale=pd.Series(unit**2, index=covariates),
        estimation=pd.DataFrame(),
    )
    b = pd.DataFrame(problem.b + unit[:, None] * shared, index=covariates, columns=full.features)
    shared_variance = np.diag(structure.covariance()) - BASE_SE**2
    total_sd = np.sqrt(problem.se**2 + unit[:, None] ** 2 * shared_variance)
    se = pd.DataFrame(total_sd, index=covariates, columns=full.features)
    chosen = structure if noise == "auto" else "independent"
    tree = full.truncate(depth)
    # the priors the truth was drawn from (resolved from the own standard errors)
    return ShrinkageModel((b, se), tree, priors=model.priors, noise=chosen), truth


def correlated_calibration(
    depth: int, n_reps: int, seed: int, noise: str = "auto", sampler: str = "nuts"
) -> dict[str, float]:
    model, truth = simulate_correlated(depth, n_reps, seed, noise)
    return rank_p_values(run_sampler(model, sampler, seed), truth)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_nuts_is_calibrated_with_correlated_noise_quick(depth):
    assert_calibrated(correlated_calibration(depth, n_reps=100, seed=20 + depth))


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_gibbs_engine_is_calibrated_with_correlated_noise_quick(depth):
    assert_calibrated(
        correlated_calibration(depth, n_reps=150, seed=40 + depth, sampler="collapsed")
    )


def test_engine_calibration_catches_totals_taken_for_effects(monkeypatch):
    """A planted bug: the engine reports the totals (effect plus shared noise) as effects."""
    from bayeshier_pymc.gibbs import engine

    def no_split(data, state, rng):
        units = [np.array(unit, copy=True) for unit in state.units[1:]]
        return units, np.zeros((data.n_rows, data.n_units[1]))

    monkeypatch.setattr(engine, "split_effects", no_split)
    p_values = correlated_calibration(1, n_reps=150, seed=41, sampler="collapsed")
    with pytest.raises(AssertionError, match="not uniform"):
        assert_calibrated(p_values)


def test_correlated_calibration_catches_ignored_shared_noise():
    """The test of the test: the independent-noise model fails on correlated estimates."""
    p_values = correlated_calibration(1, n_reps=100, seed=21, noise="independent")
    with pytest.raises(AssertionError, match="not uniform"):
        assert_calibrated(p_values)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_nuts_is_calibrated_with_correlated_noise_full(depth):
    assert_calibrated(correlated_calibration(depth, n_reps=500, seed=120 + depth))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_gibbs_engine_is_calibrated_with_correlated_noise_full(depth):
    assert_calibrated(
        correlated_calibration(depth, n_reps=600, seed=140 + depth, sampler="collapsed")
    )


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_correlated_calibration_catches_ignored_shared_noise_at_every_depth(depth):
    p_values = correlated_calibration(depth, n_reps=500, seed=120 + depth, noise="independent")
    with pytest.raises(AssertionError, match="not uniform"):
        assert_calibrated(p_values)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_engine_is_calibrated_quick(depth):
    assert_calibrated(calibration(depth, "collapsed", n_reps=200, seed=depth))


@pytest.mark.parametrize("sampler", ["conjugate", "step", "nuts"])
def test_other_samplers_are_calibrated_quick(sampler):
    assert_calibrated(calibration(1, sampler, n_reps=100, seed=7))


def _draw_scale_without_half(sum_sq, n_units, mixing, rng):
    """The planted bug: rate SS + 1/λ instead of SS/2 + 1/λ."""
    return np.sqrt(sweeps.draw_inverse_gamma(0.5 * (n_units + 1), sum_sq + 1.0 / mixing, rng))


def test_calibration_catches_a_dropped_half(monkeypatch):
    """The test of the test: the same check rejects a sweep with a dropped 1/2."""
    monkeypatch.setattr(sweeps, "draw_scale", _draw_scale_without_half)
    p_values = calibration(1, "conjugate", n_reps=100, seed=7)
    assert min(p_values["tau[0]"], p_values["tau[1]"]) < 1e-6, p_values
    with pytest.raises(AssertionError, match="not uniform"):
        assert_calibrated(p_values)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("sampler", ["collapsed", "conjugate", "step", "nuts"])
def test_samplers_are_calibrated_full(depth, sampler):
    assert_calibrated(calibration(depth, sampler, n_reps=500, seed=100 + depth))
