"""The compiled PSIS gives ArviZ's numbers: log weights, k̂ and the LOO sums.

Reference: ArviZ 0.23's ``az.psislw`` and ``az.loo`` on the same float64 values (ArviZ keeps
float32 input in float32, see :mod:`bayeshier_pymc.psis`), for light and heavy tails
(k̂ > 0.7), short tails (k̂ = ∞), constant observations, few draws and ties.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest
import xarray as xr

from bayeshier_pymc import psis

RTOL = 1e-10


def _log_likelihood(rng: np.random.Generator, n_observations: int, n_samples: int) -> np.ndarray:
    """Observations × draws with light to very heavy tails of the weights exp(−log-likelihood).

    Row i is −exp(σ_i z) with z standard normal: the log weights' right tail grows with σ_i,
    from nearly uniform weights (k̂ near 0) to k̂ well above 1.
    """
    scale = np.linspace(0.05, 2.5, n_observations)[:, None]
    return -np.exp(scale * rng.standard_normal((n_observations, n_samples)))


def _arviz_loo(log_likelihood: np.ndarray, reff: float):
    """``az.loo`` of observations × draws, the draws as one chain."""
    values = xr.DataArray(log_likelihood.T[None], dims=("chain", "draw", "observation"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.loo(
            az.InferenceData(log_likelihood=values.to_dataset(name="y")),
            reff=reff,
            pointwise=True,
        )


@pytest.mark.parametrize(("n_samples", "reff"), [(4000, 0.9), (1000, 0.3), (300, 1.0)])
def test_log_weights_and_k_are_arviz(rng, n_samples, reff):
    log_likelihood = _log_likelihood(rng, 60, n_samples)
    expected_weights, expected_k = az.psislw(-log_likelihood, reff)
    weights, k = psis.psislw(-log_likelihood, reff)
    assert (expected_k > 0.7).any() and (expected_k < 0.3).any()  # heavy and light tails
    np.testing.assert_allclose(k, expected_k, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(weights, expected_weights, rtol=RTOL, atol=RTOL)


def test_loo_terms_are_arviz(rng):
    log_likelihood = _log_likelihood(rng, 80, 2000)
    expected = _arviz_loo(log_likelihood, reff=0.7)
    terms = psis.psis_loo(log_likelihood.T, reff=0.7)
    np.testing.assert_allclose(terms.loo_i, expected["loo_i"], rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(terms.pareto_k, expected["pareto_k"], rtol=RTOL, atol=RTOL)
    assert terms.loo_i.sum() == pytest.approx(expected["elpd_loo"], rel=RTOL)
    p_loo = terms.lppd_i.sum() - terms.loo_i.sum()
    assert p_loo == pytest.approx(expected["p_loo"], rel=RTOL)
    assert psis.good_k(2000) == expected["good_k"]
    # a contiguous copy gives the same numbers as the transposed view
    again = psis.psis_loo(np.ascontiguousarray(log_likelihood.T), reff=0.7)
    np.testing.assert_array_equal(again.loo_i, terms.loo_i)


def test_blocks_in_threads_give_the_numbers_of_one_block(rng, monkeypatch):
    log_likelihood = _log_likelihood(rng, 50, 400)
    whole = psis.psis_loo(log_likelihood.T, reff=0.9)
    weights, k = psis.psislw(-log_likelihood, reff=0.9)
    monkeypatch.setattr(psis, "_BLOCK_VALUES", 7 * 400)  # 8 blocks of up to 7 rows
    assert len(psis._blocks(50, 400)) == 8
    blocked = psis.psis_loo(log_likelihood.T, reff=0.9)
    for name in ("loo_i", "pareto_k", "lppd_i"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name))
    blocked_weights, blocked_k = psis.psislw(-log_likelihood, reff=0.9)
    np.testing.assert_array_equal(blocked_weights, weights)
    np.testing.assert_array_equal(blocked_k, k)


def test_short_tails_constant_observations_and_few_draws(rng):
    # 10 draws: a tail of 2 draws, too short to fit (k̂ = ∞, no smoothing)
    few = rng.normal(size=(5, 10))
    expected_weights, expected_k = az.psislw(-few, 1.0)
    weights, k = psis.psislw(-few, 1.0)
    assert np.isinf(expected_k).all() and np.isinf(k).all()
    np.testing.assert_allclose(weights, expected_weights, rtol=RTOL, atol=RTOL)
    # a constant observation has no tail above its cutoff
    constant = np.vstack([np.full(500, -1.3), rng.normal(size=500)])
    expected = _arviz_loo(constant, reff=1.0)
    terms = psis.psis_loo(constant.T, reff=1.0)
    assert np.isinf(terms.pareto_k[0]) and np.isinf(expected["pareto_k"][0])
    np.testing.assert_allclose(terms.loo_i, expected["loo_i"], rtol=RTOL, atol=RTOL)
    assert terms.loo_i[0] == pytest.approx(-1.3, rel=1e-14)
    # two draws, the fewest ArviZ accepts
    pair = rng.normal(size=(3, 2))
    np.testing.assert_allclose(psis.psislw(pair)[0], az.psislw(pair)[0], rtol=RTOL, atol=RTOL)


def test_ties_in_the_tail_change_only_which_tied_draw_gets_which_weight(rng):
    log_weights = np.round(rng.standard_t(4, size=(20, 800)), 1)  # many ties
    expected_weights, expected_k = az.psislw(log_weights, 0.8)
    weights, k = psis.psislw(log_weights, 0.8)
    np.testing.assert_allclose(k, expected_k, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(
        np.sort(weights, axis=1), np.sort(expected_weights, axis=1), rtol=RTOL, atol=RTOL
    )
    # tied draws are smoothed in draw order (a stable sort)
    for row in range(log_weights.shape[0]):
        for value in np.unique(log_weights[row]):
            tied = weights[row, log_weights[row] == value]
            assert (np.diff(tied) >= 0).all()


def test_float32_input_is_computed_in_float64(rng):
    # not the nearly constant rows of _log_likelihood: their tails' excesses round to 0 in
    # float32, and ArviZ's float32 fit divides by zero
    log_likelihood = rng.normal(-1.0, 1.0, (30, 1000)).astype(np.float32)
    terms = psis.psis_loo(log_likelihood.T, reff=0.9)
    upcast = psis.psis_loo(log_likelihood.T.astype(np.float64), reff=0.9)
    np.testing.assert_array_equal(terms.loo_i, upcast.loo_i)
    np.testing.assert_array_equal(terms.pareto_k, upcast.pareto_k)
    # ArviZ's float32 sums: the same to float32 rounding
    expected = _arviz_loo(log_likelihood, reff=0.9)
    np.testing.assert_allclose(terms.loo_i, expected["loo_i"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("values", "reff", "message"),
    [
        (np.array([[0.0, np.nan, 1.0]]), 1.0, "must be finite"),
        (np.array([[0.0, -np.inf, 1.0]]), 1.0, "must be finite"),
        (np.zeros((3, 1)), 1.0, "at least 2 draws"),
        (np.zeros((3, 5)), 0.0, "reff must be a positive"),
        (np.zeros((3, 5)), np.nan, "reff must be a positive"),
        (np.zeros((3, 5), dtype=int), 1.0, "floating point"),
    ],
)
def test_bad_input_is_refused(values, reff, message):
    with pytest.raises(ValueError, match=message):
        psis.psislw(values, reff)
    with pytest.raises(ValueError, match=message):
        psis.psis_loo(values.T, reff)


def test_loo_needs_draws_by_observations():
    with pytest.raises(ValueError, match="draws, observations"):
        psis.psis_loo(np.zeros(10), 1.0)


@pytest.mark.parametrize("dtype", [np.float16, ">f8", "<f4", np.longdouble])
def test_any_floating_type_and_byte_order_gives_the_float64_numbers(rng, dtype):
    """The values in another type give the numbers of the same values in native float64."""
    log_likelihood = _log_likelihood(rng, 12, 300).astype(dtype)
    native = log_likelihood.astype(np.float64)  # exact: every value is a float64 too
    want_weights, want_k = psis.psislw(-native, reff=0.8)
    weights, k = psis.psislw(-log_likelihood, reff=0.8)
    np.testing.assert_array_equal(weights, want_weights)
    np.testing.assert_array_equal(k, want_k)
    want, got = psis.psis_loo(native.T, reff=0.8), psis.psis_loo(log_likelihood.T, reff=0.8)
    for name in ("loo_i", "pareto_k", "lppd_i"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_non_contiguous_input_gives_the_contiguous_numbers(rng, monkeypatch):
    """Transposed and strided views, in several blocks: the numbers of C-contiguous copies."""
    monkeypatch.setattr(psis, "_BLOCK_VALUES", 5 * 200)  # blocks of 5 observations
    # (draws, 4, 6) viewed as (6, 4, draws): observations on two axes, the draws strided
    values = -_log_likelihood(rng, 24, 200).T.reshape(200, 4, 6)
    view = values.transpose(2, 1, 0)
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    contiguous = np.ascontiguousarray(view)
    want_weights, want_k = psis.psislw(contiguous, reff=0.7)
    weights, k = psis.psislw(view, reff=0.7)
    np.testing.assert_array_equal(view, contiguous)  # the input is left as it was
    np.testing.assert_array_equal(weights, want_weights)
    np.testing.assert_array_equal(k, want_k)
    # psis_loo of a transposed (Fortran-ordered) and of a strided log-likelihood
    log_likelihood = _log_likelihood(rng, 40, 400)[:, ::2].T  # (200 draws, 40)
    assert not log_likelihood.flags.c_contiguous
    want = psis.psis_loo(np.ascontiguousarray(log_likelihood), reff=0.7)
    got = psis.psis_loo(log_likelihood, reff=0.7)
    for name in ("loo_i", "pareto_k", "lppd_i"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_bad_value_in_a_later_block_is_refused(rng, monkeypatch, bad):
    """The check of each block, in threads, names the problem; big-endian input too."""
    monkeypatch.setattr(psis, "_BLOCK_VALUES", 3 * 100)
    log_likelihood = _log_likelihood(rng, 20, 100).astype(">f8")
    log_likelihood[17, 42] = bad
    with pytest.raises(ValueError, match="log weights must be finite"):
        psis.psislw(-log_likelihood, reff=1.0)
    with pytest.raises(ValueError, match="log-likelihood values must be finite"):
        psis.psis_loo(log_likelihood.T, reff=1.0)
