"""Fuzzing of the public entry points: a finite result or a ValueError that names the problem.

Bounded, derandomised hypothesis runs (CI-deterministic). The messages a ValueError may carry
are the catalogue in ``docs/bad_inputs.md``; any other exception, a RuntimeWarning from the
package (an error under the project's pytest settings) or a non-finite result fails.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import ConvergenceWarning
from bayeshier_pymc.gaussian_tree import TreeIndex, upward_pass

FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOWER = settings(FAST, max_examples=3)
SAMPLING = settings(FAST, max_examples=3)

# every ValueError message a user may see from these entry points (docs/bad_inputs.md)
CATALOGUE = [
    r"non-finite value\(s\) \(NaN or inf\)",
    r"must be numeric",
    r"must be 2-dimensional",
    r"is empty",
    r"duplicated labels",
    r"needs n > p",
    r"zero residual variance",
    r"rank-deficient",
    r"outside \[1e-100, 1e100\]",
    r"outside \|value\| <= 1e100",
    r"overflow or underflow float64",
    r"must be strictly positive",
    r"have no .* annotation",
    r"not nested",
    r"level names must be non-empty strings",
    r"collide with the model's dims or variables",
    r"estimates have shape .* but standard errors",
    r"no annotation in the hierarchy",
    r"levels are repeated",
    r"that are no missing cell",
    r"every cell missing",
]


def assert_catalogued(err: ValueError) -> None:
    message = str(err)
    assert any(re.search(pattern, message) for pattern in CATALOGUE), message


LABEL_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=6
)


# ------------------------------------------------------------------------------------ mlm
@st.composite
def mlm_inputs(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 5))
    p = draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    exponents = draw(st.lists(st.integers(-120, 120), min_size=m, max_size=m))
    y = rng.normal(size=(n, m)) * 10.0 ** np.array(exponents, dtype=float)
    y += draw(st.sampled_from([0.0, 1e6, -3.0]))
    x = rng.normal(size=(n, p)) * 10.0 ** draw(st.integers(-120, 120))
    if draw(st.booleans()) and m > 1:
        y[:, draw(st.integers(0, m - 1))] = draw(st.floats(-1e3, 1e3))  # constant column
    if p > 1 and draw(st.booleans()):
        x[:, -1] = x[:, 0] * draw(st.sampled_from([1.0, 2.0, -1e-3]))  # collinear
    target = draw(st.sampled_from(["none", "y", "x"]))
    if target != "none":
        array = y if target == "y" or p == 0 else x
        i = draw(st.integers(0, array.shape[0] - 1))
        j = draw(st.integers(0, array.shape[1] - 1))
        array[i, j] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    labels = draw(
        st.one_of(
            st.none(),
            st.lists(LABEL_TEXT, min_size=m, max_size=m),
            st.lists(st.sampled_from(["a", "b", "日本", "α"]), min_size=m, max_size=m),
        )
    )
    y_in: object = y if labels is None else pd.DataFrame(y, columns=labels)
    return {
        "Y": y_in,
        "X": x,
        "x_intercept": draw(st.booleans()) or p == 0,
        "shrinkage": draw(st.sampled_from([None, None, "A", "D", "R"])),
    }


@FAST
@given(mlm_inputs())
def test_mlm_fuzz_gives_finite_results_or_a_named_value_error(inputs: dict) -> None:
    try:
        fit = bh.mlm(**inputs)
    except ValueError as err:
        assert_catalogued(err)
        return
    for name in ("coef", "se", "tstat", "pvalue"):
        values = getattr(fit, name).values
        assert np.isfinite(values).all(), name
    assert (fit.se.values > 0).all()
    assert np.isfinite(fit.to_frame()[["estimate", "se", "t", "p", "p_adj"]].to_numpy()).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["Y", "X"])
def test_mlm_names_nonfinite_input_and_position(bad: float, where: str) -> None:
    rng = np.random.default_rng(0)
    y, x = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    (y if where == "Y" else x)[4, 1] = bad
    with pytest.raises(ValueError, match=rf"{where} holds 1 non-finite .* position \(4, 1\)"):
        bh.mlm(y, x)


# ------------------------------------------------------------------------------ hierarchy
@st.composite
def annotation_frames(draw: st.DrawFn) -> tuple[pd.DataFrame, list[object]]:
    m = draw(st.integers(1, 8))
    features = draw(
        st.one_of(
            st.lists(LABEL_TEXT, min_size=m, max_size=m),
            st.lists(st.integers(0, 4), min_size=m, max_size=m),
        )
    )
    depth = draw(st.integers(0, 3))
    names = draw(
        st.lists(
            st.one_of(
                st.sampled_from(["SUB", "SUPER", "ä級", "feature", "tau", "SUB_mean", "draw"]),
                LABEL_TEXT,
                st.integers(0, 2),
            ),
            min_size=depth,
            max_size=depth,
        )
    )
    columns: dict[object, list[object]] = {}
    n_groups = m
    codes = list(range(m))
    for name in names:
        # nested by construction (coarsen codes), unless the draw breaks it
        n_groups = draw(st.integers(1, max(1, n_groups)))
        codes = [c % n_groups for c in codes]
        labels = [f"g{c}" if draw(st.booleans()) else f"グ{c}" for c in codes]
        if draw(st.integers(0, 4)) == 0:
            labels[draw(st.integers(0, m - 1))] = draw(st.sampled_from([None, np.nan, "", "  "]))
        if draw(st.integers(0, 5)) == 0:
            labels[draw(st.integers(0, m - 1))] = "broken"
        columns[name] = labels
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    if len(columns) != len(names):  # repeated names: build by position instead
        frame = pd.DataFrame(
            {i: pd.Series(v, dtype=object) for i, v in enumerate(columns.values())}
        )
        names = list(range(len(columns)))
    if frame.shape[1] == 0:
        frame = pd.DataFrame(index=range(m))
    frame.index = pd.Index(features)
    return frame, list(names)


@FAST
@given(annotation_frames(), st.sampled_from(["raise", "unassigned"]))
def test_hierarchy_fuzz_is_valid_or_names_the_problem(
    case: tuple[pd.DataFrame, list[object]], missing: str
) -> None:
    frame, levels = case
    try:
        tree = bh.Hierarchy.from_frame(frame, levels, missing=missing)  # type: ignore[arg-type]
    except ValueError as err:
        assert_catalogued(err)
        return
    assert tree.n_features == len(frame)
    assert list(tree.features) == list(frame.index)
    for depth in range(tree.depth):
        codes = tree.membership(depth)
        assert codes.min() >= 0 and codes.max() < tree.n_groups[depth]
        # strict nesting: every feature's group at depth d+1 is its group's parent
        if depth + 1 < tree.depth:
            assert (tree.parents[depth + 1][codes] == tree.membership(depth + 1)).all()
    table = tree.to_frame()
    for level in tree.levels:
        expected = frame[level].astype("string").fillna("").str.strip()
        annotated = (expected != "").to_numpy()
        assert (table[level].to_numpy()[annotated] == expected.to_numpy()[annotated]).all()


# ------------------------------------------------------------------------- ShrinkageModel
@st.composite
def shrinkage_inputs(draw: st.DrawFn) -> dict[str, object]:
    p = draw(st.integers(1, 2))
    m = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    se = 10.0 ** rng.uniform(-6, 6, size=(p, m))
    b = rng.normal(size=(p, m)) * 10.0 ** draw(st.integers(-12, 8))
    problem = draw(
        st.sampled_from(["none"] * 4 + ["nan_b", "inf_se", "zero_se", "neg_se", "missing"])
    )
    if problem != "none":
        i, j = draw(st.integers(0, p - 1)), draw(st.integers(0, m - 1))
        if problem == "nan_b":
            b[i, j] = np.nan  # with a finite se: refused
        elif problem == "missing":  # a missing cell: NaN estimate and se
            b[i, j] = se[i, j] = np.nan
        else:  # an infinite se is a missing cell too
            se[i, j] = {"inf_se": np.inf, "zero_se": 0.0, "neg_se": -1.0}[problem]
    features = [f"特徴{j}" for j in range(m)]
    structure = draw(st.sampled_from(["none", "one_group", "singletons", "two_level"]))
    hierarchy = None
    if structure != "none":
        if structure == "one_group":
            sub = ["all"] * m
        elif structure == "singletons":
            sub = features
        else:
            sub = [f"s{j % 3}" for j in range(m)]
        frame = pd.DataFrame({"SUB": sub})
        frame["SUPER"] = frame["SUB"].map(lambda s: "P" if s.endswith(("0", "l")) else "Q")
        frame.index = features
        hierarchy = bh.Hierarchy.from_frame(frame, ["SUB", "SUPER"])
    return {
        "estimates": (
            pd.DataFrame(b, index=[f"x{k}" for k in range(p)], columns=features),
            pd.DataFrame(se, index=[f"x{k}" for k in range(p)], columns=features),
        ),
        "hierarchy": hierarchy,
        "depth": draw(st.sampled_from([None, 0, "none"])),
    }


def _construct(inputs: dict[str, object]) -> bh.ShrinkageModel | None:
    try:
        return bh.ShrinkageModel(**inputs)  # type: ignore[arg-type]
    except ValueError as err:
        assert_catalogued(err)
        return None


@FAST
@given(shrinkage_inputs())
def test_shrinkage_model_builds_every_parameterization(inputs: dict) -> None:
    model = _construct(inputs)
    if model is None:
        return
    choices = (
        ["collapsed"] if not model.pooled else ["collapsed", "centered", "noncentered", "auto"]
    )
    for parameterization in choices:
        pm_model = model.build(parameterization)
        assert "se" in pm_model.named_vars


@SLOWER
@given(shrinkage_inputs())
def test_shrinkage_model_logp_is_finite_at_the_start(inputs: dict) -> None:
    model = _construct(inputs)
    if model is None:
        return
    pm_model = model.build("collapsed")
    logp = pm_model.compile_logp()(pm_model.initial_point())
    assert np.isfinite(logp)


@FAST
@given(shrinkage_inputs(), st.floats(-300, 150), st.floats(-300, 150))
def test_exact_draws_are_finite_for_extreme_scales(
    inputs: dict, log_tau_low: float, log_tau_high: float
) -> None:
    model = _construct(inputs)
    if model is None or not model.pooled:
        return
    rng = np.random.default_rng(0)
    p = model.estimates.estimate.shape[0]
    n_levels = model.tree.depth + 1  # type: ignore[union-attr]
    exponents = np.linspace(log_tau_low, log_tau_high, n_levels)
    tau = np.broadcast_to(10.0**exponents, (2, 3, p, n_levels)).copy()
    posterior = model.draw_given_scales(tau, rng)
    for name, values in posterior.items():
        assert np.isfinite(values).all(), name
    messages = upward_pass(
        model.problem.algebra_b,
        model.problem.var_b,
        tau[0, 0],
        TreeIndex.from_hierarchy(model.tree),  # type: ignore[arg-type]
        model.priors.mu0,
        model.priors.s0,
    )
    assert np.isfinite(messages.log_marginal).all()


@SAMPLING
@given(shrinkage_inputs())
def test_nuts_sampling_fuzz_gives_finite_posterior_and_log_likelihood(inputs: dict) -> None:
    model = _construct(inputs)
    if model is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        idata = model.sample(
            draws=50, tune=50, chains=2, random_seed=3, nuts_sampler="numpyro", progressbar=False
        )
    for group in ("posterior", "log_likelihood"):
        for name, values in idata[group].data_vars.items():
            assert np.isfinite(values.to_numpy()).all(), (group, name)
