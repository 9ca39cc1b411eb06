"""nutpie's numba compilation through the disk cache: nutpie's draws, never another model's code."""

import ctypes
import warnings

import numba
import numpy as np
import pymc as pm
import pytest
from pytensor.link.numba import cache as numba_cache

import bayeshier_pymc._nutpie_cache as nutpie_cache
import bayeshier_pymc.sampling as sampling
from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm, simulate
from bayeshier_pymc._nutpie_cache import (
    cached_nutpie_compilation,
    compile_pymc_model,
    compiled_key,
)

SHORT = {"draws": 60, "tune": 60, "chains": 2, "progressbar": False}


@pytest.fixture(scope="module")
def study():
    return simulate(40, 30, 2, proportions=[0.5, 0.3, 0.2], n_superclasses=2, random_seed=5)


@pytest.fixture(scope="module")
def fit(study):
    return mlm(study.Y, study.X, x_intercept=False)


@pytest.fixture(scope="module")
def subclasses(study):
    return Hierarchy.from_frame(study.annotations, ["subclass"])


def _variants(study, fit, subclasses) -> dict[str, pm.Model]:
    """The collapsed model of ``fit`` and models that differ from it in one respect each."""
    annotations = study.annotations.copy()
    shuffled = np.random.default_rng(0).permutation(annotations["subclass"].to_numpy())
    annotations["subclass"] = shuffled  # the same groups and sizes, other members
    other_fit = mlm(study.Y.iloc[:-4], study.X.iloc[:-4], x_intercept=False)
    return {
        "base": ShrinkageModel(fit, subclasses).build(),
        "other hierarchy": ShrinkageModel(
            fit, Hierarchy.from_frame(annotations, ["subclass"])
        ).build(),
        "depth": ShrinkageModel(
            fit, Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
        ).build(),
        "priors": ShrinkageModel(fit, subclasses, priors="research").build(),
        "noise": ShrinkageModel(fit, subclasses, noise="independent").build(),
        "covariates": ShrinkageModel(fit, subclasses, covariates=["x0"]).build(),
        "other estimates": ShrinkageModel(other_fit, subclasses).build(),
    }


def test_key_tells_every_structure_apart_and_ignores_the_data_values(study, fit, subclasses):
    """Models that differ in the hierarchy (same shapes), depth, priors, noise, covariates,
    estimates' variances (compiled into the collapsed model's operation) have
    different keys; the same model with other values of its data (read at every call, not
    compiled in) has the same key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = _variants(study, fit, subclasses)
        keys = {name: compiled_key(model) for name, model in variants.items()}
        base = variants["base"]
        with base:
            pm.set_data({"b": base["b"].get_value() + 0.5})
        other_data_key = compiled_key(base)
    assert None not in keys.values()
    assert len(set(keys.values())) == len(keys), keys
    assert other_data_key == keys["base"]


def _compiled_density(compiled, point: np.ndarray) -> tuple[float, np.ndarray]:
    """log p and its gradient at ``point`` from the compiled model's C entry point."""
    double = ctypes.POINTER(ctypes.c_double)
    point = np.ascontiguousarray(point, dtype=float)
    gradient, value = np.zeros_like(point), np.zeros(())
    status = compiled.compiled_logp_func.ctypes(
        point.size,
        point.ctypes.data_as(double),
        gradient.ctypes.data_as(double),
        value.ctypes.data_as(double),
        ctypes.c_void_p(compiled.user_data.ctypes.data),
    )
    assert status == 0
    return float(value), gradient


def test_compiled_density_is_each_models_own(study, fit, subclasses):
    """Each model compiled through the cache, one after another in one process, evaluates its
    own log density and gradient (PyMC's, compiled apart), never an earlier model's: the
    model of other estimates (the same shapes, other variances in its operation) and the same
    model with other data values."""
    base = ShrinkageModel(fit, subclasses).build()
    other_fit = mlm(study.Y.iloc[:-4], study.X.iloc[:-4], x_intercept=False)
    other = ShrinkageModel(other_fit, subclasses).build()
    shifted = ShrinkageModel(fit, subclasses).build()
    with shifted:
        pm.set_data({"b": shifted["b"].get_value() + 0.5})
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in (base, other, shifted):
            compiled = compile_pymc_model(model)
            (name,) = model.initial_point()
            shape = model.initial_point()[name].shape
            log_tau = rng.normal(-1.5, 0.5, shape)
            value, gradient = _compiled_density(compiled, log_tau.ravel())
            point = {name: log_tau}
            np.testing.assert_allclose(value, model.compile_logp()(point), rtol=1e-10)
            np.testing.assert_allclose(gradient, model.compile_dlogp()(point), rtol=1e-8)


def test_default_nuts_draws_are_those_of_nutpies_own_compilation(fit, subclasses, monkeypatch):
    """ShrinkageModel.sample (nutpie, compiled through the cache) gives, for a seed, the same
    InferenceData as ``pymc.sample`` with nutpie's own compilation; a second compilation of
    the model in the process is read from the cache, and nutpie is left as it was."""
    import nutpie

    model = ShrinkageModel(fit, subclasses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = model.sample(random_seed=4, **SHORT)
        with cached_nutpie_compilation():
            assert nutpie.compile_pymc_model is not nutpie.compile_pymc.compile_pymc_model
            again = compile_pymc_model(model.build())
        assert nutpie.compile_pymc_model is nutpie.compile_pymc.compile_pymc_model
        monkeypatch.setattr(sampling, "cached_nutpie_compilation", _uncached)
        own = model.sample(random_seed=4, **SHORT)
    assert again.compiled_logp_func.cache_hits == again.compiled_expand_func.cache_hits == 1
    assert cached.groups() == own.groups()
    for group in ("posterior", "log_likelihood", "posterior_predictive"):
        for name, values in own[group].data_vars.items():
            np.testing.assert_array_equal(cached[group][name].values, values.values)
    for name in ("diverging", "step_size", "n_steps"):
        np.testing.assert_array_equal(cached.sample_stats[name], own.sample_stats[name])


def _uncached():
    """In place of the cache: ``pymc.sample`` compiles with nutpie's own function."""
    import contextlib

    return contextlib.nullcontext()


def test_other_backends_and_options_are_compiled_by_nutpie_itself(fit, subclasses, monkeypatch):
    import nutpie.compile_pymc

    calls = []
    monkeypatch.setattr(
        nutpie.compile_pymc,
        "compile_pymc_model",
        lambda model, **options: calls.append(options) or "nutpie's own",
    )
    model = ShrinkageModel(fit, subclasses).build()
    assert compile_pymc_model(model, backend="jax", gradient_backend="jax") == "nutpie's own"
    assert compile_pymc_model(model, initial_points={"tau": 1.0}) == "nutpie's own"
    assert [sorted(call) for call in calls] == [
        ["backend", "gradient_backend", "var_names"],
        ["backend", "gradient_backend", "initial_points", "var_names"],
    ]


def test_the_key_changes_with_this_modules_source(fit, subclasses, monkeypatch):
    """Entries compiled by another version of the wrappers are not read (no version to bump)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ShrinkageModel(fit, subclasses).build()
        key = compiled_key(model)
        monkeypatch.setattr(nutpie_cache, "SOURCE_DIGEST", "another source")
        other_key = compiled_key(model)
    assert key is not None and other_key is not None and other_key != key


def _double_plus(x: float, y: float) -> float:
    return 2.0 * x + y


def test_an_unreadable_cache_entry_is_named_compiled_again_and_rewritten(tmp_path, monkeypatch):
    """A truncated entry (both its files) warns once, compiles and rewrites it; no crash."""
    monkeypatch.setattr(numba_cache, "NUMBA_CACHE_PATH", tmp_path)
    signature = numba.types.float64(numba.types.float64, numba.types.float64)
    key = "unreadable_entry_test"
    first = nutpie_cache._cfunc(_double_plus, signature, key)
    files = sorted(tmp_path.glob(f"*-{key}.*"))
    assert first.cache_hits == 0 and len(files) == 2  # the index and the compiled code
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"cache entry .*{key}.* could not be read"):
        again = nutpie_cache._cfunc(_double_plus, signature, key)
    assert again.ctypes(1.0, 2.0) == 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = nutpie_cache._cfunc(_double_plus, signature, key)
    assert third.cache_hits == 1 and third.ctypes(1.5, 2.0) == 5.0
