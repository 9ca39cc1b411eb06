"""diagnose(): every check on draws with known defects, every sampler's stat names, real fits."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest

from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm, simulate
from bayeshier_pymc.convergence import relative_efficiency
from bayeshier_pymc.diagnostics import Thresholds, diagnose, loo_elpd

CHAINS, DRAWS = 4, 500


def _idata(posterior, sample_stats=None):
    rng = np.random.default_rng(1)
    log_lik = rng.normal(-1.0, 0.05, size=(CHAINS, DRAWS, 10))
    return az.from_dict(
        posterior=posterior, sample_stats=sample_stats, log_likelihood={"b_marginal": log_lik}
    )


def _nuts_stats(rng, **overrides):
    stats = {
        "diverging": np.zeros((CHAINS, DRAWS), dtype=bool),
        "energy": rng.normal(size=(CHAINS, DRAWS)),
        "tree_depth": np.full((CHAINS, DRAWS), 3),
        "reached_max_treedepth": np.zeros((CHAINS, DRAWS), dtype=bool),
    }
    stats.update(overrides)
    return stats


def _status(diagnosis, check, variable=""):
    rows = diagnosis.table[
        (diagnosis.table.check == check) & (diagnosis.table.variable == variable)
    ]
    assert len(rows) == 1, diagnosis.table
    return rows.status.iloc[0]


@pytest.fixture
def iid(rng):
    return {"tau": rng.normal(size=(CHAINS, DRAWS, 3)), "mu": rng.normal(size=(CHAINS, DRAWS))}


def test_clean_draws_pass_everything(iid, rng):
    diagnosis = diagnose(_idata(iid, _nuts_stats(rng)))
    assert diagnosis.ok
    assert set(diagnosis.table.status) == {"pass"}
    assert set(diagnosis.table.check) == {
        "r_hat", "ess_bulk", "ess_tail", "divergences", "e_bfmi", "tree_depth", "pareto_k"
    }  # fmt: skip
    assert diagnosis.verdict.startswith("OK")
    assert "r̂ ≤ 1.01" in diagnosis.verdict and "≥ 400 here" in diagnosis.verdict
    # iid energy: E-BFMI = E[(ΔE)²] / Var(E) = 2
    bfmi = diagnosis.table.set_index("check").loc["e_bfmi", "value"]
    assert bfmi == pytest.approx(2.0, abs=0.2)


def test_shifted_chains_fail_r_hat(iid, rng):
    iid["tau"][0] += 0.5
    diagnosis = diagnose(_idata(iid, _nuts_stats(rng)))
    assert not diagnosis.ok
    assert _status(diagnosis, "r_hat", "tau") == "fail"
    assert _status(diagnosis, "r_hat", "mu") == "pass"
    assert "NOT OK" in diagnosis.verdict and "r_hat of tau" in diagnosis.verdict
    row = diagnosis.table[(diagnosis.table.check == "r_hat") & (diagnosis.table.variable == "tau")]
    assert "3 of 3 beyond the limit" in row.detail.iloc[0]
    # the limit is a setting
    relaxed = diagnose(_idata(iid, _nuts_stats(rng)), thresholds=Thresholds(r_hat=1.5))
    assert _status(relaxed, "r_hat", "tau") == "pass"


def test_sticky_chains_fail_ess(iid, rng):
    sticky = np.zeros((CHAINS, DRAWS))
    for t in range(1, DRAWS):
        sticky[:, t] = 0.995 * sticky[:, t - 1] + rng.normal(size=CHAINS)
    iid["mu"] = sticky
    diagnosis = diagnose(_idata(iid, _nuts_stats(rng)))
    assert _status(diagnosis, "ess_bulk", "mu") == "fail"
    assert _status(diagnosis, "ess_bulk", "tau") == "pass"
    assert not diagnosis.ok


def test_divergences_fail_and_are_counted(iid, rng):
    diverging = np.zeros((CHAINS, DRAWS), dtype=bool)
    diverging[1, [3, 40, 99]] = True
    diagnosis = diagnose(_idata(iid, _nuts_stats(rng, diverging=diverging)))
    row = diagnosis.table.set_index("check").loc["divergences"]
    assert row.value == 3 and row.status == "fail"
    assert "3 of 2000 draws" in row.detail
    assert not diagnosis.ok


def test_low_bfmi_and_saturated_tree_depth_only_warn(iid, rng):
    walk = np.cumsum(rng.normal(size=(CHAINS, DRAWS)), axis=1)
    saturated = np.zeros((CHAINS, DRAWS), dtype=bool)
    saturated[0, :50] = True
    diagnosis = diagnose(
        _idata(iid, _nuts_stats(rng, energy=walk, reached_max_treedepth=saturated))
    )
    assert _status(diagnosis, "e_bfmi") == "warn"
    assert _status(diagnosis, "tree_depth") == "warn"
    assert diagnosis.table.set_index("check").loc["tree_depth", "value"] == pytest.approx(0.025)
    assert diagnosis.ok
    assert diagnosis.verdict.count("Warning:") == 2


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ({"maxdepth_reached": True, "depth": 10}, 1.0),  # nutpie
        ({"tree_depth": 10}, 1.0),  # numpyro: only depths, compared with max_treedepth
        ({"tree_depth": 9}, 0.0),
    ],
)
def test_tree_depth_names_of_every_backend(iid, rng, stats, expected):
    sample_stats = {
        "diverging": np.zeros((CHAINS, DRAWS), dtype=bool),
        **{name: np.full((CHAINS, DRAWS), value) for name, value in stats.items()},
    }
    diagnosis = diagnose(_idata(iid, sample_stats))
    assert diagnosis.table.set_index("check").loc["tree_depth", "value"] == expected


def test_nutpie_warmup_draws_are_ignored(iid, rng):
    tuning = np.zeros((CHAINS, DRAWS), dtype=bool)
    tuning[:, :100] = True
    diverging = tuning.copy()  # divergences during warm-up do not count
    diagnosis = diagnose(_idata(iid, _nuts_stats(rng, diverging=diverging, tuning=tuning)))
    assert diagnosis.table.set_index("check").loc["divergences", "value"] == 0


def test_gibbs_fit_skips_nuts_checks(iid):
    diagnosis = diagnose(_idata(iid, {"accept": np.ones((CHAINS, DRAWS))}))
    assert {"divergences", "e_bfmi", "tree_depth"} <= set(
        diagnosis.table.loc[diagnosis.table.status == "skipped", "check"]
    )
    assert diagnosis.ok
    assert "Skipped" in diagnosis.verdict
    without_stats = diagnose(_idata(iid), loo=None)
    assert "pareto_k" not in set(without_stats.table.check)
    assert without_stats.ok


def test_bad_input(iid):
    with pytest.raises(ValueError, match="not posterior variables"):
        diagnose(_idata(iid), var_names=["theta"])
    with pytest.raises(ValueError, match="loo must be one of"):
        diagnose(_idata(iid), loo="waic")
    with pytest.raises(ValueError, match="no 'b_group'"):
        diagnose(_idata(iid), loo="group")


def test_constant_log_likelihood_has_exact_loo():
    log_lik = np.broadcast_to(np.arange(5.0), (2, 100, 5))
    idata = az.from_dict(
        posterior={"a": np.zeros((2, 100))}, log_likelihood={"b_marginal": log_lik.copy()}
    )
    elpd = loo_elpd(idata)
    assert np.isnan(elpd["pareto_k"]).all() and not elpd["warning"]
    assert elpd["elpd_loo"] == pytest.approx(10.0)


def test_loo_of_stored_draws_is_arvizs_computed_by_the_compiled_psis():
    """ArviZ's PSIS-LOO on a heavy-tailed log-likelihood (some k̂ large), in float64."""
    rng = np.random.default_rng(5)
    log_lik = -0.5 * rng.standard_t(3, size=(2, 300, 3, 7)) ** 2
    idata = az.from_dict(
        posterior={"a": rng.normal(size=(2, 300))},
        log_likelihood={"b_marginal": log_lik},
        dims={"b_marginal": ["covariate", "feature"]},
        coords={"covariate": ["x", "y", "z"], "feature": list("abcdefg")},
    )
    ours = loo_elpd(idata)
    theirs = az.loo(idata, pointwise=True, reff=relative_efficiency(idata.posterior))
    assert ours["loo_i"].dims == ("covariate", "feature")
    assert list(ours["loo_i"].feature.values) == list("abcdefg")
    np.testing.assert_allclose(ours["loo_i"], theirs["loo_i"], rtol=1e-10)
    np.testing.assert_allclose(ours["pareto_k"], theirs["pareto_k"], rtol=1e-10)
    for name in ("elpd_loo", "p_loo", "se"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-10)
    assert ours["warning"] == theirs["warning"] and ours["n_data_points"] == 21


@pytest.fixture(scope="module")
def noisy_metabolites():
    """τ_w large against s_j: each θ_j is pinned by its own b_j (bad conditional PSIS)."""
    study = simulate(60, 60, 1, tau_w=0.5, random_seed=4)
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, "subclass")
    return ShrinkageModel(fit, tree).sample(
        draws=1000, tune=500, chains=2, random_seed=2, progressbar=False, nuts_sampler="numpyro"
    )


def test_real_fit_passes_and_conditional_loo_warns(noisy_metabolites):
    marginal = diagnose(noisy_metabolites)
    assert marginal.ok, marginal
    assert _status(marginal, "pareto_k") == "pass"
    assert _status(marginal, "tree_depth") == "pass"  # numpyro: tree_depth < 10
    conditional = diagnose(noisy_metabolites, loo="conditional", var_names=["tau"])
    assert _status(conditional, "pareto_k") == "warn"
    assert conditional.ok  # a LOO problem, not a sampling one
    assert "Diagnosis(ok=True)" in repr(conditional) and "<table" in conditional._repr_html_()


def _heavy_tailed_loo(rng):
    """Draws that pass every convergence check, with one held-out point of Pareto k ≫ 1."""
    log_lik = rng.normal(-1.0, 0.05, size=(CHAINS, DRAWS, 10))
    log_lik[:, :, 0] = -5.0 * np.abs(rng.standard_cauchy(size=(CHAINS, DRAWS)))
    posterior = {"tau": rng.normal(size=(CHAINS, DRAWS, 3)), "mu": rng.normal(size=(CHAINS, DRAWS))}
    return az.from_dict(
        posterior=posterior,
        sample_stats=_nuts_stats(rng),
        log_likelihood={"b_marginal": log_lik, "b_conditional": log_lik, "b_group": log_lik},
    )


@pytest.mark.parametrize("loo", ["marginal", "conditional", "group"])
def test_verdict_accounts_for_a_pareto_k_warning_with_advice_that_applies(rng, loo):
    diagnosis = diagnose(_heavy_tailed_loo(rng), loo=loo)
    assert _status(diagnosis, "pareto_k") == "warn" and diagnosis.ok
    first, *rest = diagnosis.verdict.splitlines()
    assert first.startswith("OK with warnings") and "PSIS-LOO" in first
    assert "can be trusted" not in diagnosis.verdict
    (warning,) = [line for line in rest if line.startswith("Warning: pareto_k")]
    if loo == "conditional":
        assert "refit_bad_k" not in warning and "loo='marginal'" in warning
    else:  # refit_bad_k exists only for the group LOO: the advice says so
        assert "compare_depths(..., loo='group', refit_bad_k=True)" in warning


def test_verdict_names_what_each_warning_puts_in_doubt(iid, rng):
    walk = np.cumsum(rng.normal(size=(CHAINS, DRAWS)), axis=1)
    first = diagnose(_idata(iid, _nuts_stats(rng, energy=walk))).verdict.splitlines()[0]
    assert first == "OK with warnings: r̂, ESS and divergences pass; the warnings below put the " \
        "exploration of the tails in doubt."  # fmt: skip


def test_the_verdict_names_only_the_checks_that_ran(iid, rng):
    """A Gibbs fit records no divergences: the verdict does not say they pass."""
    walk = np.cumsum(rng.normal(size=(CHAINS, DRAWS)), axis=1)
    gibbs_stats = {"energy": walk}  # only a warning-level check has a stat here
    first = diagnose(_idata(iid, gibbs_stats)).verdict.splitlines()[0]
    assert first.startswith("OK with warnings: r̂ and ESS pass; "), first


def test_the_pareto_k_advice_offers_no_refits_with_missing_cells(rng):
    """With missing cells (log-likelihood along ``observation``) refit_bad_k is not offered."""
    idata = _heavy_tailed_loo(rng)
    for name in list(idata.log_likelihood.data_vars):
        idata.log_likelihood[name] = idata.log_likelihood[name].rename(
            {idata.log_likelihood[name].dims[-1]: "observation"}
        )
    for loo in ("marginal", "group"):
        verdict = diagnose(idata, loo=loo).verdict
        (warning,) = [line for line in verdict.splitlines() if line.startswith("Warning: pareto_k")]
        assert "refit_bad_k=True" not in warning and "not available" in warning, warning
