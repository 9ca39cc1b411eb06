"""Summary storage of the Gibbs engine: the same numbers as the stored draws, computed on demand.

A fit with ``storage="summary"`` keeps θ's per-cell summaries instead of its draws; its θ
draws (regenerated), LOO (chunked over features), sign rates and the engine's per-draw totals
must be those of ``storage="full"`` for the same seed, and its normal interval must agree
with the stored draws' HDI within Monte Carlo error. The same holds with correlated estimates
(tree-structured noise, missing cells included), at effect depths 1 and 2.
"""

from __future__ import annotations

import threading
import warnings

import arviz as az
import matplotlib
import numpy as np
import pandas as pd
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc import sampling, streamed
from bayeshier_pymc.depth_comparison import replicate_scores
from bayeshier_pymc.diagnostics import loo_elpd
from bayeshier_pymc.inference_data import THETA_SUMMARY, loo_in_chunks, marginal_chunks
from bayeshier_pymc.plots.forest import plot_forest_by_group
from bayeshier_pymc.plots.shrinkage import plot_shrinkage
from bayeshier_pymc.plots.stage1_comparison import plot_stage1_vs_shrunken
from bayeshier_pymc.plots.volcano import plot_volcano
from bayeshier_pymc.results import theta_moments
from bayeshier_pymc.sampling import sample_gibbs
from bayeshier_pymc.streamed import theta_draws

matplotlib.use("Agg")

SEED = 11


def _model(n_features: int = 240, n_covariates: int = 2, missing: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = [f"f{j}" for j in range(n_features)]
    sub = rng.integers(0, 12, size=n_features)
    annotations = pd.DataFrame(
        {"SUB": [f"s{s}" for s in sub], "SUPER": [f"P{s % 3}" for s in sub]}, index=features
    )
    tree = bh.Hierarchy.from_frame(annotations, ["SUB", "SUPER"])
    b = rng.normal(0.2, 0.4, (n_covariates, n_features))
    se = rng.uniform(0.1, 0.3, (n_covariates, n_features))
    if missing:
        cells = rng.random(b.shape) < 0.05
        b[cells], se[cells] = np.nan, np.nan
    covariates = [f"x{k}" for k in range(n_covariates)]
    estimates = (
        pd.DataFrame(b, index=covariates, columns=features),
        pd.DataFrame(se, index=covariates, columns=features),
    )
    return bh.ShrinkageModel(estimates, tree)


def _pair(model: bh.ShrinkageModel, draws: int = 150, chains: int = 2):
    options = {"draws": draws, "tune": 100, "chains": chains, "random_seed": SEED}
    full = sample_gibbs(model.problem, progressbar=False, storage="full", **options)
    summary = sample_gibbs(model.problem, progressbar=False, storage="summary", **options)
    return full, summary


@pytest.fixture(scope="module")
def pair():
    return _pair(_model())


def test_summary_fit_keeps_no_draws_of_theta(pair):
    full, summary = pair
    assert "theta" not in summary.posterior
    assert "log_likelihood" not in summary.groups()
    assert THETA_SUMMARY in summary.groups()
    assert summary.attrs["storage"] == "summary" and full.attrs["storage"] == "full"
    for name in ("tau", "mu", "SUB_mean", "SUPER_mean"):
        np.testing.assert_array_equal(summary.posterior[name], full.posterior[name])


def test_regenerated_theta_is_the_stored_draws_bitwise(pair):
    full, summary = pair
    chosen = ["f5", "f0", "f200"]
    regenerated = theta_draws(summary, chosen)
    stored = full.posterior["theta"].sel(feature=chosen).transpose(*regenerated.dims)
    assert regenerated.dtype == stored.dtype
    np.testing.assert_array_equal(regenerated.to_numpy(), stored.to_numpy())
    # the per-draw conditional totals come from the same replay
    np.testing.assert_array_equal(
        summary.sample_stats["log_likelihood"], full.sample_stats["log_likelihood"]
    )
    np.testing.assert_array_equal(
        theta_draws(full, chosen), full.posterior["theta"].sel(feature=chosen)
    )
    # every feature: the stream's own θ, not a subset's
    every = theta_draws(summary).transpose(*full.posterior["theta"].dims)
    np.testing.assert_array_equal(every.to_numpy(), full.posterior["theta"].to_numpy())


def test_a_replay_stopped_by_an_error_leaves_no_thread(pair):
    _, summary = pair
    before = threading.active_count()
    stream = streamed._stream(summary)

    def fail(chain: int, draws: slice, theta: np.ndarray) -> None:
        if draws.start > 0:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        stream.replay(fail)
    assert threading.active_count() == before


def test_summaries_are_the_draws_summaries(pair):
    full, summary = pair
    stored, summarised = bh.coefficient_table(full), bh.coefficient_table(summary)
    assert list(stored.columns) == list(summarised.columns)
    theta = full.posterior["theta"].astype(float)
    for column, rtol in (("mean", 1e-9), ("sd", 1e-7)):
        reference = (
            theta.mean(("chain", "draw"))
            if column == "mean"
            else theta.std(("chain", "draw"), ddof=1)
        )
        np.testing.assert_allclose(
            summarised[column], reference.to_numpy().ravel(), rtol=rtol, atol=1e-12
        )
    for column in ("prob_positive", "prob_negative", "lfsr", "qvalue", "called"):
        np.testing.assert_array_equal(summarised[column], stored[column])
    assert summarised.attrs["n_draws"] == stored.attrs["n_draws"]
    assert bh.coefficient_summary(summary).attrs["interval"] == "normal"


FLOAT32_LOO_ATOL = 1e-5
"""ArviZ keeps a float32 log-likelihood (the fits' default type) in float32 through its
exponentials and sums, the compiled PSIS computes in float64: they differ by float32 rounding
(eps 1.2e-7 of log-likelihoods of order 1, accumulated over the draws; 9e-7 seen)."""
FLOAT32_PARETO_K_ATOL = 1e-4
"""k̂ is fitted to the tail's weights above the cutoff, differences of nearby float32 numbers
in ArviZ, so its float32 rounding is larger (4e-6 seen)."""


def _arviz_loo_in_float64(idata, reff: float):
    """``arviz.loo`` on the stored fit's own log-likelihood values, converted to float64."""
    values = idata.log_likelihood["b_marginal"].astype(np.float64)
    return az.loo(az.InferenceData(log_likelihood=values.to_dataset()), reff=reff, pointwise=True)


def test_loo_in_chunks_is_the_stored_loo(pair):
    full, summary = pair
    chunked = loo_in_chunks(summary, reff=0.8, chunk_features=37)
    # the same algorithm on the same values: ArviZ in float64
    reference = _arviz_loo_in_float64(full, reff=0.8)
    np.testing.assert_allclose(chunked["loo_i"], reference["loo_i"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(chunked["pareto_k"], reference["pareto_k"], rtol=1e-10, atol=1e-10)
    for key in ("elpd_loo", "p_loo", "se"):
        np.testing.assert_allclose(chunked[key], reference[key], rtol=1e-10)
    assert chunked["warning"] == reference["warning"]
    assert chunked["good_k"] == reference["good_k"]
    # the stored mode's LOO (ArviZ on the float32 log-likelihood) to float32 rounding
    stored = bh.loo(full, reff=0.8, pointwise=True)
    np.testing.assert_allclose(chunked["loo_i"], stored["loo_i"], rtol=0, atol=FLOAT32_LOO_ATOL)
    np.testing.assert_allclose(
        chunked["pareto_k"], stored["pareto_k"], rtol=0, atol=FLOAT32_PARETO_K_ATOL
    )
    for key in ("elpd_loo", "p_loo", "se"):
        np.testing.assert_allclose(chunked[key], stored[key], rtol=1e-6)
    assert chunked["n_data_points"] == stored["n_data_points"]
    assert chunked["n_samples"] == stored["n_samples"]
    # the package's entry points route a summary fit here, and only a summary fit
    with pytest.raises(ValueError, match="summary storage"):
        loo_in_chunks(full)
    with pytest.raises(ValueError, match="summary storage"):
        next(marginal_chunks(full))
    default = bh.loo(summary)
    assert np.isfinite(default["elpd_loo"])
    np.testing.assert_allclose(loo_elpd(summary)["loo_i"], default["loo_i"], rtol=1e-12)


def test_loo_of_a_summary_fit_takes_the_arviz_arguments_that_apply(pair):
    """``bh.loo`` as on a stored fit: ``reff``, ``pointwise`` and the log scale pass; not others."""
    _, summary = pair
    chunked = loo_in_chunks(summary, reff=0.8)
    for arguments in ({"pointwise": True}, {"pointwise": False}, {"scale": "log"}):
        result = bh.loo(summary, reff=0.8, **arguments)
        np.testing.assert_array_equal(result["loo_i"], chunked["loo_i"])
        assert result["elpd_loo"] == chunked["elpd_loo"]
    with pytest.raises(ValueError, match="var_name"):
        bh.loo(summary, var_name="b_marginal")
    with pytest.raises(ValueError, match="log scale, got scale='deviance'"):
        bh.loo(summary, scale="deviance")
    with pytest.raises(ValueError, match="takes reff, pointwise and scale='log' only"):
        bh.loo(summary, chunk_size=3)


def test_loo_with_missing_cells_is_the_stored_loo():
    full, summary = _pair(_model(n_features=60, missing=True), draws=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k of a tiny fit
        stored = bh.loo(full, reff=0.9, pointwise=True)
        reference = _arviz_loo_in_float64(full, reff=0.9)
        chunked = loo_in_chunks(summary, reff=0.9, chunk_features=7)
    assert chunked["loo_i"].dims == stored["loo_i"].dims == ("observation",)
    np.testing.assert_allclose(chunked["loo_i"], reference["loo_i"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(chunked["pareto_k"], reference["pareto_k"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(chunked["loo_i"], stored["loo_i"], rtol=0, atol=FLOAT32_LOO_ATOL)
    np.testing.assert_array_equal(
        chunked["loo_i"]["feature"].to_numpy(), stored["loo_i"]["feature"].to_numpy()
    )


def test_normal_interval_is_the_hdi_within_monte_carlo_error():
    """mean ± z sd against the HDI of the same 4,000 draws, in units of the sd.

    The Monte Carlo sd of a 3% quantile from S independent draws of a normal is
    sd · √(q(1 − q)) / (φ(z_q) √S) ≈ 0.04 sd at S = 4,000; the HDI's end is noisier (about
    twice), and τ's uncertainty makes θ's posterior a mixture slightly wider in the tails.
    """
    full, summary = _pair(_model(n_features=120, n_covariates=1, seed=3), draws=1000, chains=4)
    stored, summarised = bh.coefficient_table(full), bh.coefficient_table(summary)
    for end in ("hdi_lower", "hdi_upper"):
        error = np.abs(summarised[end] - stored[end]) / stored["sd"]
        assert np.median(error) < 0.06, (end, np.median(error))
        assert error.max() < 0.3, (end, error.max())


def test_plots_draw_a_summary_fit(pair):
    _, summary = pair
    plot_forest_by_group(summary, covariate="x0", top_k=5)
    plot_volcano(summary, covariate="x1")
    plot_shrinkage(summary, covariate="x0")
    plot_stage1_vs_shrunken(summary, covariate="x1")
    moments = theta_moments(summary, "x0")
    assert set(moments.data_vars) == {"mean", "sd", "lfsr"}


def test_auto_storage_switches_above_the_threshold_with_one_warning(monkeypatch):
    model = _model(n_features=30, n_covariates=1)
    options = {"draws": 20, "tune": 20, "chains": 2, "random_seed": 1, "progressbar": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = sample_gibbs(model.problem, **options)
    assert "theta" in small.posterior and small.attrs["storage"] == "full"
    monkeypatch.setattr(sampling, "SUMMARY_THRESHOLD_BYTES", 1000)
    with pytest.warns(UserWarning, match="keeping their summaries only") as caught:
        large = sample_gibbs(model.problem, **options)
    assert len(caught) == 1
    assert THETA_SUMMARY in large.groups() and large.attrs["storage"] == "summary"
    # a run without a seed records the one it drew, from which θ is regenerated
    unseeded = sample_gibbs(model.problem, **{**options, "random_seed": None}, storage="summary")
    assert isinstance(unseeded.attrs["random_seed"], int)
    assert np.isfinite(theta_draws(unseeded, ["f1"]).to_numpy()).all()


@pytest.mark.parametrize(
    ("sampler", "options", "message"),
    [
        ("nuts", {"storage": "summary"}, "Gibbs engine only"),
        ("gibbs", {"storage": "compact"}, "unknown storage"),
        ("gibbs", {"storage": "summary", "scheme": "conjugate"}, "collapsed scheme"),
        ("gibbs", {"storage": "summary", "backend": "pymc"}, "backend='numpy'"),
    ],
)
def test_summary_storage_refuses_what_it_cannot_do(sampler, options, message):
    model = _model(n_features=20, n_covariates=1)
    with pytest.raises(ValueError, match=message):
        model.sample(sampler, draws=10, tune=10, chains=1, progressbar=False, **options)


def test_theta_draws_refuses_unknown_features(pair):
    with pytest.raises(ValueError, match="not features of the fit"):
        theta_draws(pair[1], ["f0", "nope"])


# --- correlated estimates (tree-structured noise) ------------------------------------------
def _noisy_pair(depth: int):
    """Stored and summary fits of a small problem with tree noise and missing cells.

    Nine features in three groups under two supergroups, noise on both levels and at the top;
    one group is missing entirely in the first covariate.
    """
    from tests.test_missing import _problem

    problem = _problem(depth, correlated=True)
    options = {"draws": 80, "tune": 60, "chains": 2, "random_seed": SEED, "progressbar": False}
    full = sample_gibbs(problem, storage="full", **options)
    summary = sample_gibbs(problem, storage="summary", **options)
    return full, summary


@pytest.fixture(scope="module", params=[1, 2], ids=["depth1", "depth2"])
def noisy_pair(request):
    return _noisy_pair(request.param)


def test_noisy_summary_fit_is_the_stored_fit(noisy_pair):
    full, summary = noisy_pair
    assert summary.attrs["noise"] == "tree" and summary.attrs["storage"] == "summary"
    assert "theta" not in summary.posterior and "log_likelihood" not in summary.groups()
    for name in full.posterior.data_vars:
        if name != "theta":
            np.testing.assert_array_equal(summary.posterior[name], full.posterior[name])
    # the per-draw totals log N(b; θ, Σ) come from the replay of the same θ
    np.testing.assert_array_equal(
        summary.sample_stats["log_likelihood"], full.sample_stats["log_likelihood"]
    )
    chosen = ["f4", "f0", "f8", "f3"]  # f3, f4: missing in the first covariate
    regenerated = theta_draws(summary, chosen)
    stored = full.posterior["theta"].sel(feature=chosen).transpose(*regenerated.dims)
    assert regenerated.dtype == stored.dtype
    np.testing.assert_array_equal(regenerated.to_numpy(), stored.to_numpy())


def test_noisy_summaries_are_the_draws_summaries(noisy_pair):
    full, summary = noisy_pair
    stored, summarised = bh.coefficient_table(full), bh.coefficient_table(summary)
    theta = full.posterior["theta"].astype(float)
    np.testing.assert_allclose(
        summarised["mean"], theta.mean(("chain", "draw")).to_numpy().ravel(), rtol=1e-9
    )
    np.testing.assert_allclose(
        summarised["sd"], theta.std(("chain", "draw"), ddof=1).to_numpy().ravel(), rtol=1e-7
    )
    for column in ("prob_positive", "prob_negative", "lfsr", "qvalue", "called"):
        np.testing.assert_array_equal(summarised[column], stored[column])
    # the fresh-replicate scores of the depth comparison read θ's mean and sd
    stored_scores, summary_scores = replicate_scores(full), replicate_scores(summary)
    for name in stored_scores.data_vars:
        np.testing.assert_allclose(summary_scores[name], stored_scores[name], rtol=1e-6)


def test_noisy_loo_in_chunks_is_the_stored_loo(noisy_pair):
    """``b_marginal`` here is log p(b_j | b_−j, τ): chunked, the stored mode's values, bitwise.

    LOO on them agrees with the stored fit's to float32 rounding (its PSIS may compute in
    float64 from the float32 values, which ArviZ keeps in float32).
    """
    full, summary = noisy_pair
    stored_values = full.log_likelihood["b_marginal"].stack(sample=("chain", "draw"))
    observed = np.isfinite(summary.constant_data["se"].to_numpy())
    chunked_values = np.full((stored_values.sizes["sample"], *observed.shape), np.nan, "float32")
    seen = np.zeros(observed.shape, dtype=bool)
    for chunk, cells, values in marginal_chunks(summary, chunk_features=4):
        assert not (seen[:, chunk] & cells).any()
        seen[:, chunk] |= cells
        block = chunked_values[:, :, chunk]
        block[:, cells] = values
    np.testing.assert_array_equal(seen, observed)
    np.testing.assert_array_equal(
        chunked_values[:, observed], stored_values.transpose("sample", "observation").to_numpy()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k of a tiny fit
        stored = bh.loo(full, reff=0.8, pointwise=True)
        chunked = loo_in_chunks(summary, reff=0.8, chunk_features=4)
    assert chunked["loo_i"].dims == stored["loo_i"].dims == ("observation",)
    np.testing.assert_allclose(chunked["loo_i"], stored["loo_i"], rtol=0, atol=FLOAT32_LOO_ATOL)
    np.testing.assert_allclose(
        chunked["pareto_k"], stored["pareto_k"], rtol=0, atol=FLOAT32_PARETO_K_ATOL
    )
    np.testing.assert_allclose(chunked["elpd_loo"], stored["elpd_loo"], rtol=1e-6)
    np.testing.assert_array_equal(
        chunked["loo_i"]["feature"].to_numpy(), stored["loo_i"]["feature"].to_numpy()
    )


def test_noisy_summary_fit_plots_and_loads_back(noisy_pair, tmp_path):
    _, summary = noisy_pair
    plot_forest_by_group(summary, covariate="z", top_k=3)
    plot_volcano(summary, covariate="x")
    plot_shrinkage(summary, covariate="z")
    plot_stage1_vs_shrunken(summary, covariate="x")
    path = bh.save_results(tmp_path / "fit.nc", summary)
    loaded = bh.load_results(path).idata
    np.testing.assert_array_equal(theta_draws(loaded, ["f1"]), theta_draws(summary, ["f1"]))


def test_auto_storage_keeps_summaries_of_noisy_estimates_above_the_threshold(monkeypatch):
    from tests.test_missing import _problem

    problem = _problem(1, correlated=True)
    options = {"draws": 20, "tune": 20, "chains": 2, "random_seed": 1, "progressbar": False}
    monkeypatch.setattr(sampling, "SUMMARY_THRESHOLD_BYTES", 1000)
    with pytest.warns(UserWarning, match="keeping their summaries only"):
        fit = sample_gibbs(problem, **options)
    assert THETA_SUMMARY in fit.groups() and fit.attrs["storage"] == "summary"
    assert fit.attrs["noise"] == "tree"


def _values_nbytes(*groups) -> int:
    """Bytes of the groups' variables, without their coordinates."""
    return sum(variable.nbytes for group in groups for variable in group.data_vars.values())


def test_storage_sizes_count_what_each_mode_keeps(noisy_pair):
    """The estimate behind ``storage="auto"``: the arrays the fits hold and LOO's terms."""
    full, summary = noisy_pair
    problem = bh.inference_data.problem_from_idata(full)
    lead = (full.posterior.sizes["chain"], full.posterior.sizes["draw"])
    size = sampling._storage_bytes(problem, lead, np.float32)
    draws = full.posterior["theta"]
    # the stored mode: θ, and the observed cells' log-likelihood and replicated estimates
    stored = draws.nbytes + _values_nbytes(full.log_likelihood, full.posterior_predictive)
    unobserved = 2 * draws[..., 0, 0].size * draws.dtype.itemsize * int(problem.missing.sum())
    assert stored + unobserved == size["full"]
    tau = full.posterior["tau"].to_numpy()
    held_out = bh.log_likelihood.HeldOutFeatures(problem, tau, covariate=0)
    assert _values_nbytes(summary[THETA_SUMMARY]) + held_out._terms.nbytes == size["summary"]


def _one_covariate_noisy_problem():
    """One covariate, m = 9 features with tree noise on G = 3 first-level groups and 2 above."""
    from bayeshier_pymc.gaussian_tree import NodeNoise
    from bayeshier_pymc.priors import Priors
    from bayeshier_pymc.problem import ShrinkageProblem
    from tests.test_missing import FEATURES, MU0, S0, _hierarchy

    rng = np.random.default_rng(5)
    covariates = pd.Index(["x"], name="covariate")
    se = rng.uniform(0.4, 1.0, (1, 9))
    tree = _hierarchy().truncate(1)
    return ShrinkageProblem(
        b=rng.normal(MU0, 1.5, (1, 9)),
        se=se,
        covariates=covariates,
        features=FEATURES,
        tree=tree,
        priors=Priors.resolve({"mu0": MU0, "s0": S0}, ("feature", *tree.levels), covariates, se),
        depth=1,
        noise_tree=_hierarchy(),
        noise=NodeNoise(
            (rng.uniform(0, 0.6, (1, 3)), rng.uniform(0, 0.6, (1, 2))), np.array([0.3])
        ),
        own_variance=rng.uniform(0.1, 1.0, (1, 9)),
    )


def test_auto_storage_keeps_the_draws_when_summaries_would_take_more(monkeypatch):
    """G / m = 1/3 at p = 1: 16 G + 32 G bytes a draw exceed float32's 3 × 4 m, not float64's."""
    problem = _one_covariate_noisy_problem()
    options = {"draws": 20, "tune": 20, "chains": 2, "random_seed": 1, "progressbar": False}
    monkeypatch.setattr(sampling, "SUMMARY_THRESHOLD_BYTES", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = sample_gibbs(problem, theta_dtype=np.float32, **options)
    assert "theta" in kept.posterior and kept.attrs["storage"] == "full"
    with pytest.warns(UserWarning, match="keeping their summaries only"):
        summarised = sample_gibbs(problem, theta_dtype=np.float64, **options)
    assert THETA_SUMMARY in summarised.groups() and summarised.attrs["storage"] == "summary"


def test_a_saved_summary_fit_loads_back_whole(pair, tmp_path):
    _, summary = pair
    path = bh.save_results(tmp_path / "fit.nc", summary)
    loaded = bh.load_results(path).idata
    assert THETA_SUMMARY in loaded.groups()
    pd.testing.assert_frame_equal(bh.coefficient_table(loaded), bh.coefficient_table(summary))
    np.testing.assert_array_equal(theta_draws(loaded, ["f7"]), theta_draws(summary, ["f7"]))
