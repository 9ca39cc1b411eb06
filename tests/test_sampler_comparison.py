"""compare_samplers: diagnostics against ArviZ, the agreement rule, the plot, and real agreement."""

from __future__ import annotations

import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Hierarchy, ShrinkageModel, simulate
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.plots import plot_sampler_comparison
from bayeshier_pymc.sampler_comparison import SamplerComparison, _summaries, compare_samplers


def _ar1(rng, phi, chains=4, draws=1000, size=1):
    noise = rng.normal(size=(chains, draws, size))
    values = np.empty_like(noise)
    values[:, 0] = noise[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, draws):
        values[:, t] = phi * values[:, t - 1] + noise[:, t]
    return values


def test_diagnostics_match_arviz(rng):
    draws = np.concatenate(
        [_ar1(rng, phi) for phi in (0.0, 0.5, 0.9, -0.3)] + [np.exp(_ar1(rng, 0.6))], axis=-1
    )
    ours = _summaries(draws)
    numba_on = az.Numba.numba_flag
    az.Numba.disable_numba()  # ArviZ's numba path of mcse(method="sd") fails on arrays
    try:
        for k in range(draws.shape[-1]):
            x = draws[..., k]
            reference = {
                "ess_bulk": az.ess(x, method="bulk"),
                "rhat": az.rhat(x),
                "mcse_mean": az.mcse(x, method="mean"),
                "mcse_sd": az.mcse(x, method="sd"),
            }
            for key, value in reference.items():
                np.testing.assert_allclose(ours[key][k], value, rtol=1e-8, err_msg=key)
    finally:
        if numba_on:
            az.Numba.enable_numba()


def _idata(rng, shift=0.0, chains=4, draws=1000, seconds=2.0, sampler="s"):
    coords = {"covariate": ["x0", "x1"], "level": ["feature", "sub"], "feature": list("abcdef")}
    posterior = {
        "tau": np.exp(rng.normal(-1.0, 0.3, (chains, draws, 2, 2))),
        "mu": rng.normal(0.0, 1.0, (chains, draws, 2)),
        "theta": rng.normal(0.0, 1.0, (chains, draws, 2, 6)),
    }
    posterior["mu"][..., 1] += shift
    dims = {"tau": ["covariate", "level"], "mu": ["covariate"], "theta": ["covariate", "feature"]}
    idata = az.from_dict(posterior=posterior, coords=coords, dims=dims)
    idata.attrs.update({"sampling_time": seconds, "sampler": sampler})
    return idata


def test_same_distribution_agrees(rng):
    comparison = compare_samplers(_idata(rng, sampler="A"), _idata(rng, draws=700, sampler="B"))
    assert comparison.ok, comparison.problems
    assert comparison.names == ("A", "B")
    assert len(comparison.table) == 4 + 2 + 12
    assert comparison.table.index[0] == "tau[x0, feature]"
    assert comparison.threshold == pytest.approx(4.0)  # 36 tests: Bonferroni below 4
    assert (comparison.table["rhat_joint"] < 1.01).all()
    np.testing.assert_allclose(
        comparison.table["ess_per_s_a"], comparison.table["ess_bulk_a"] / 2.0
    )
    assert "agree: True" in repr(comparison)
    assert "<pre>" in comparison._repr_html_()


def test_a_shift_of_a_fifth_of_an_sd_is_caught(rng):
    comparison = compare_samplers(_idata(rng), _idata(rng, shift=0.2))
    assert not comparison.ok
    worst = comparison.table["z_mean"].abs().idxmax()
    assert worst == "mu[x1]" and abs(comparison.table.loc[worst, "z_mean"]) > 6
    assert any("mu[x1]" in problem for problem in comparison.problems)


def test_joint_rhat_sees_samplers_apart(rng):
    comparison = compare_samplers(_idata(rng), _idata(rng, shift=0.5))
    assert comparison.table.loc["mu[x1]", "rhat_joint"] > 1.01
    assert comparison.table.drop("mu[x1]")["rhat_joint"].max() < 1.01
    assert any("joint r̂" in problem for problem in comparison.problems)


def test_bonferroni_threshold_grows_with_the_tests(rng):
    small = compare_samplers(_idata(rng), _idata(rng), var_names=["mu"])
    large = compare_samplers(_idata(rng), _idata(rng), alpha=1e-6)
    assert small.threshold == 4.0 and large.threshold > 5.0


def test_selection_of_variables_and_features(rng):
    a, b = _idata(rng), _idata(rng)
    comparison = compare_samplers(a, b, var_names=["theta"], theta_features=3)
    assert list(comparison.table.index) == [
        f"theta[{c}, {f}]" for c in ("x0", "x1") for f in ("a", "c", "f")
    ]
    draws_a, _ = comparison.draws(["theta[x1, c]"])
    np.testing.assert_array_equal(
        draws_a[:, 0], a.posterior["theta"].sel(covariate="x1", feature="c").to_numpy().ravel()
    )
    with pytest.raises(ValueError, match="not in both"):
        compare_samplers(a, b, var_names=["beta"])
    with pytest.raises(ValueError, match="unknown parameters"):
        comparison.draws(["theta[x9, a]"])


def test_overlay_plot(rng):
    comparison = compare_samplers(_idata(rng), _idata(rng))
    axes = plot_sampler_comparison(comparison, max_panels=5)
    assert sum(ax.get_visible() for ax in axes) == 5
    assert len(axes[0].patches) == 2  # one step histogram per sampler
    _, given = plt.subplots(1, 2)
    drawn = plot_sampler_comparison(
        (_idata(rng), _idata(rng)), parameters=["mu[x0]", "mu[x1]"], ax=given
    )
    assert list(drawn) == list(given) and "mu[x1]" in given[1].get_title()
    with pytest.raises(ValueError, match="axes"):
        plot_sampler_comparison(comparison, parameters=["mu[x0]", "mu[x1]"], ax=given[0])
    plt.close("all")


# ------------------------------------------------------------------ agreement with NUTS (slow)
AGREEMENT_ALPHA = 1e-3
"""Family-wise false alarm rate of the agreement tests on whole fits (|z| < 4.96 at 700
parameters), as elsewhere in the suite. At the package's default 0.05 one seed in twenty
fails by chance: on QMDiab seed 1 gave one θ sd at |z| 4.20 against 4.13, while seeds 2–4
put the same sd within one Monte Carlo error of the Gibbs engine's; a sampler that ignores
the shared noise fails at |z| above 100."""


def _agreement(model: ShrinkageModel) -> SamplerComparison:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = model.sample(
            "nuts", draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False
        )
    gibbs = model.sample("gibbs", draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)
    for group in ("posterior", "log_likelihood", "observed_data", "constant_data"):
        for name in nuts[group].data_vars:
            assert gibbs[group][name].dims == nuts[group][name].dims
            for dim in nuts[group][name].dims[
                2 if group in ("posterior", "log_likelihood") else 0 :
            ]:
                assert gibbs[group][dim].to_numpy().tolist() == nuts[group][dim].to_numpy().tolist()
        assert set(gibbs[group].data_vars) == set(nuts[group].data_vars)
    return compare_samplers(nuts, gibbs, theta_features=100, alpha=AGREEMENT_ALPHA)


@pytest.mark.slow
def test_gibbs_agrees_with_nuts_on_the_research_simulation():
    study = simulate(n=60, m=770, p=10, random_seed=1)
    fit = mlm(study.Y, study.X, x_intercept=False)
    comparison = _agreement(
        ShrinkageModel(fit, Hierarchy.from_frame(study.annotations, ["subclass"]))
    )
    assert comparison.ok, comparison.summary()


def qmdiab_model(data_dir) -> ShrinkageModel:
    """QMDiab plasma: the named metabolites, sub-pathway within super-pathway, 4 covariates."""
    from bayeshier_pymc.preprocess import preprocess

    features = pd.read_csv(data_dir / "qmdiab_plasma_features.csv", index_col="featureID")
    named = features[features["SUB_PATHWAY"].fillna("").str.strip() != ""]
    data = pd.read_csv(data_dir / "qmdiab_plasma_data.csv", index_col="sample_id")[named.index]
    samples = pd.read_csv(data_dir / "qmdiab_plasma_samples.csv", index_col="sample_id")
    y = preprocess(data, max_missing=0.2, impute="half_min", log=True)
    x = samples.loc[y.index, ["AGE", "BMI", "GENDER", "T2D"]]
    x = (x - x.mean()) / x.std()
    fit = mlm(y, x)
    tree = Hierarchy.from_frame(named, ["SUB_PATHWAY", "SUPER_PATHWAY"])
    return ShrinkageModel(fit, tree, covariates=["AGE", "BMI", "GENDER", "T2D"])


@pytest.mark.slow
def test_gibbs_agrees_with_nuts_on_qmdiab(shared_data):
    comparison = _agreement(qmdiab_model(shared_data))
    assert comparison.ok, comparison.summary()
