"""Posterior summaries on hand-built InferenceData with known answers."""

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshier_pymc as bh
from bayeshier_pymc.results import display_table, format_rate, lfsr, qvalue


def _fake_idata():
    """Two chains × 400 draws of known distributions, in the package's layout."""
    rng = np.random.default_rng(0)
    shape = (2, 400)
    theta = np.stack(
        [rng.normal(1.0, 0.5, shape), rng.normal(-0.1, 1.0, shape), rng.normal(0, 1e-9, shape)],
        axis=-1,
    )[:, :, None, :]
    tau = np.stack([np.full(shape, 1.0), np.full(shape, 2.0)], axis=-1)[:, :, None, :]
    coords = {"covariate": ["k"], "feature": ["a", "b", "c"], "level": ["feature", "sub"]}
    posterior = xr.Dataset(
        {
            "theta": (("chain", "draw", "covariate", "feature"), theta),
            "tau": (("chain", "draw", "covariate", "level"), tau),
            "mu": (("chain", "draw", "covariate"), rng.normal(size=(*shape, 1))),
            "sub_mean": (
                ("chain", "draw", "covariate", "sub"),
                rng.normal(2.0, 0.1, (*shape, 1, 2)),
            ),
        },
        coords={**coords, "sub": ["s1", "s2"]},
    )
    idata = az.InferenceData(
        posterior=posterior,
        observed_data=xr.Dataset(
            {"b": (("covariate", "feature"), [[1.1, 0.2, 0.0]])}, coords=coords
        ),
        constant_data=xr.Dataset(
            {
                "se": (("covariate", "feature"), [[0.5, 1.0, 1.0]]),
                "sub_index": (("feature",), [0, 0, 1]),
            },
            coords=coords,
        ),
    )
    idata.attrs.update(levels=["sub"], depth="1", priors="{}")
    return idata


def test_lfsr_on_known_draws():
    draws = xr.DataArray(
        np.array([[-1.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]), dims=("chain", "draw")
    )
    # P(x ≥ 0) = 7/8, P(x ≤ 0) = 2/8 (the zero counts on both sides)
    assert float(lfsr(draws)) == pytest.approx(2 / 8)


def test_coefficient_summary_and_table():
    idata = _fake_idata()
    summary = bh.coefficient_summary(idata, hdi_prob=0.9)
    assert summary["mean"].dims == ("covariate", "feature")
    assert float(summary["mean"].sel(covariate="k", feature="a")) == pytest.approx(
        1.0, abs=4 * 0.5 / np.sqrt(800)
    )
    # N(1, 0.5²): P(θ ≤ 0) = Φ(−2) ≈ 0.0228, sampling sd ≈ 0.0053 at 800 draws
    assert float(summary["lfsr"].sel(covariate="k", feature="a")) == pytest.approx(
        0.0228, abs=0.016
    )
    assert float(summary["lfsr"].sel(covariate="k", feature="c")) == pytest.approx(0.5, abs=0.06)
    width = summary["hdi_upper"] - summary["hdi_lower"]
    assert float(width.sel(covariate="k", feature="a")) == pytest.approx(2 * 1.645 * 0.5, rel=0.1)
    table = bh.coefficient_table(idata)
    assert list(table.columns) == [
        "covariate",
        "feature",
        "estimate",
        "se",
        "mean",
        "sd",
        "hdi_lower",
        "hdi_upper",
        "prob_positive",
        "prob_negative",
        "lfsr",
        "qvalue",
        "called",
    ]
    assert table.loc[table.feature == "a", "estimate"].item() == 1.1
    matrix = bh.coefficient_matrix(idata)
    assert matrix.dims == ("covariate", "feature") and matrix.name == "coef"


def test_qvalue_is_the_running_mean_of_sorted_lfsr():
    """ashr's definition, per covariate: mean lfsr of every effect at most as uncertain."""
    rates = xr.DataArray(
        [[0.3, 0.01, 0.2, 0.05], [0.0, 0.4, 0.4, 0.1]], dims=("covariate", "feature")
    )
    expected = [
        [(0.01 + 0.05 + 0.2 + 0.3) / 4, 0.01, (0.01 + 0.05 + 0.2) / 3, (0.01 + 0.05) / 2],
        [0.0, (0.0 + 0.1 + 0.4 + 0.4) / 4, (0.0 + 0.1 + 0.4 + 0.4) / 4, 0.05],
    ]
    got = qvalue(rates)
    # tied rates share the mean over every effect at most as uncertain, whatever their order
    np.testing.assert_allclose(got, expected)
    assert got.dims == ("covariate", "feature")


def test_sign_probabilities_calls_and_default_interval_level():
    idata = _fake_idata()
    summary = bh.coefficient_summary(idata)
    # the interval level follows ArviZ's rcParams
    assert summary.attrs["hdi_prob"] == az.rcParams["stats.ci_prob"]
    with az.rc_context({"stats.ci_prob": 0.5}):
        narrow = bh.coefficient_summary(idata)
    assert narrow.attrs["hdi_prob"] == 0.5
    assert bool(
        (
            (narrow["hdi_upper"] - narrow["hdi_lower"])
            < (summary["hdi_upper"] - summary["hdi_lower"])
        ).all()
    )
    theta = idata.posterior["theta"]
    np.testing.assert_allclose(summary["prob_positive"], (theta > 0).mean(("chain", "draw")))
    np.testing.assert_allclose(
        summary["lfsr"],
        np.minimum(1 - summary["prob_negative"], 1 - summary["prob_positive"]),
    )
    strict = bh.coefficient_table(idata, alpha=0.001)
    loose = bh.coefficient_table(idata, alpha=0.2)
    np.testing.assert_array_equal(loose["called"], loose["qvalue"] <= 0.2)
    assert strict["called"].sum() <= loose["called"].sum()
    assert loose.attrs["alpha"] == 0.2
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        bh.coefficient_table(idata, alpha=5)


def test_scale_summary_shares():
    scales = bh.scale_summary(_fake_idata())
    assert scales["level"].tolist() == ["feature", "sub"]
    np.testing.assert_allclose(scales["variance_share"], [1 / 5, 4 / 5])
    np.testing.assert_allclose(scales["mean"], [1.0, 2.0])


def test_group_effects_counts_features():
    effects = bh.group_effects(_fake_idata())
    assert effects["sub"].tolist() == ["s1", "s2"]
    assert effects["n_features"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="unknown level 'super'"):
        bh.group_effects(_fake_idata(), "super")


def test_errors_for_fits_without_pooling_or_levels():
    idata = _fake_idata()
    del idata.posterior["tau"]
    idata.attrs["depth"] = "none"
    with pytest.raises(ValueError, match="no scales"):
        bh.scale_summary(idata)
    idata.attrs["levels"] = []
    with pytest.raises(ValueError, match="no annotation levels"):
        bh.group_effects(idata)
    with pytest.raises(ValueError, match=r"hdi_prob must lie in \(0, 1\)"):
        bh.coefficient_summary(idata, hdi_prob=95)


def test_coefficient_matrix_refits_the_unshrunk_intercept():
    study = bh.simulate(50, 30, 2, random_seed=4)
    y = study.Y + 3.0  # a non-zero intercept
    x = study.X + 1.5  # covariates that are not centred
    fit = bh.mlm(y, x)
    model = bh.ShrinkageModel(
        fit, bh.Hierarchy.from_frame(study.annotations, ["subclass"]), covariates=["x0", "x1"]
    )
    rng = np.random.default_rng(0)
    tau = np.abs(rng.normal(0.1, 0.01, size=(2, 50, 2, 2)))
    posterior = model.draw_given_scales(tau, rng)
    idata = az.InferenceData(
        posterior=xr.Dataset(
            {"theta": (("chain", "draw", "covariate", "feature"), posterior["theta"])},
            coords={"covariate": ["x0", "x1"], "feature": fit.coef.feature.values},
        )
    )
    full = bh.coefficient_matrix(idata, fit=fit)
    slopes = bh.coefficient_matrix(idata)
    assert full.covariate.values.tolist() == ["(Intercept)", "x0", "x1"]
    np.testing.assert_array_equal(full.sel(covariate=["x0", "x1"]), slopes)
    expected_intercept = y.mean().to_numpy() - x.mean().to_numpy() @ slopes.to_numpy()
    np.testing.assert_allclose(full.sel(covariate="(Intercept)"), expected_intercept, rtol=1e-10)
    predicted = fit.predict(x, coef=full)
    assert predicted.shape == (50, 30)
    # the residuals of the refitted prediction average to zero for every feature
    np.testing.assert_allclose((y.to_numpy() - predicted.to_numpy()).mean(axis=0), 0, atol=1e-10)


def test_rates_below_one_over_s_are_shown_as_such_never_zero():
    idata = _fake_idata()
    idata.posterior["theta"][..., 0] = np.abs(idata.posterior["theta"][..., 0])  # all draws > 0
    table = bh.coefficient_table(idata, alpha=0.3)
    assert table.attrs["n_draws"] == 800
    assert table.loc[0, "lfsr"] == 0.0 and table.loc[0, "qvalue"] == 0.0  # numbers stay numbers
    shown = display_table(table)
    assert shown.loc[0, "lfsr"] == shown.loc[0, "qvalue"] == "<1.3e-03"  # 1/800 = 0.00125
    assert shown.loc[1, "lfsr"] == f"{table.loc[1, 'lfsr']:.2g}" != "0"
    assert not shown["lfsr"].isin(["0", "0.0"]).any()
    assert shown.loc[0, "feature"] == "a" and shown.loc[0, "called"] == table.loc[0, "called"]
    # a subset keeps the number of draws; the group effects carry it too
    top = display_table(table.sort_values("lfsr").head(1)[["feature", "lfsr"]])
    assert top["lfsr"].tolist() == ["<1.3e-03"]
    assert bh.group_effects(idata).attrs["n_draws"] == 800
    assert format_rate(0.0, 4000) == "<2.5e-04" and format_rate(0.031, 4000) == "0.031"
    assert format_rate(1 / 4000, 4000) == "0.00025"  # one draw of the other sign is resolved
    with pytest.raises(ValueError, match="n_draws"):
        format_rate(0.1, 0)


def test_large_numbers_keep_the_digits_that_tell_them_apart():
    frame = pd.DataFrame({"elpd_loo": [1823.44, 1823.21, -245.37], "dse": [0.0, 0.43, 12.0]})
    shown = display_table(frame)
    assert shown["elpd_loo"].tolist() == ["1823.4", "1823.2", "-245.4"]
    assert shown["dse"].tolist() == ["0", "0.43", "12"]


def test_scale_summary_shares_weigh_a_level_by_its_groups_local_variances():
    """Heavy-tailed group prior: the sub level's variance is τ² × mean λ² = 4 × (1 + 3) / 2."""
    idata = _fake_idata()
    local_scale = np.broadcast_to(np.sqrt([1.0, 3.0]), (2, 400, 1, 2))
    idata.posterior["sub_local_scale"] = (("chain", "draw", "covariate", "sub"), local_scale)
    scales = bh.scale_summary(idata)
    np.testing.assert_allclose(scales["variance_share"], [1 / 9, 8 / 9])
    np.testing.assert_allclose(scales["mean"], [1.0, 2.0])


@pytest.mark.filterwarnings("ignore::bayeshier_pymc.convergence.ConvergenceWarning")
def test_variance_shares_of_a_horseshoe_fit_are_the_hand_computation():
    """τ_L² mean_g λ_g² over its sum, per draw, then averaged; the normal prior's τ² / Σ τ²."""
    study = bh.simulate(30, 40, 2, proportions=np.ones(6), n_superclasses=2, random_seed=4)
    tree = bh.Hierarchy.from_frame(study.annotations, study.levels)
    options = {"draws": 30, "tune": 30, "chains": 2, "random_seed": 1, "progressbar": False}
    for group_prior in ("horseshoe", "normal"):
        model = bh.ShrinkageModel(
            bh.mlm(study.Y, study.X), tree, priors={"group_prior": group_prior}
        )
        idata = model.sample("gibbs", **options)
        posterior = idata.posterior
        tau = posterior["tau"].transpose("chain", "draw", "covariate", "level").to_numpy()
        variances = tau**2
        if group_prior == "horseshoe":
            for column, level in enumerate(tree.levels, start=1):
                local = posterior[f"{level}_local_scale"]
                local = local.transpose("chain", "draw", "covariate", level).to_numpy()
                variances[..., column] *= (local**2).mean(axis=-1)
        hand = (variances / variances.sum(axis=-1, keepdims=True)).mean(axis=(0, 1))
        table = bh.scale_summary(idata).set_index(["covariate", "level"])["variance_share"]
        shares = table.unstack("level")[list(posterior["tau"].indexes["level"])].to_numpy()
        np.testing.assert_allclose(shares, hand, rtol=1e-12)
        assert group_prior == "normal" or not np.allclose(
            shares, ((tau**2) / (tau**2).sum(axis=-1, keepdims=True)).mean(axis=(0, 1))
        )
