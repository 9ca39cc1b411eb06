"""The research simulation design: metabolite effects nested in subclasses (and superclasses)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc._validation import covariance_factor

__all__ = ["ResidualNoise", "SimulatedStudy", "simulate", "train_test_split"]


@dataclass(frozen=True)
class ResidualNoise:
    """Correlated residuals for :func:`simulate`, added to (or replacing) the independent ones.

    Each component is switched off by its default; with all defaults the residuals are the
    independent ``N(0, sigma_y²)`` ones.

    Attributes
    ----------
    covariance
        An m × m positive definite covariance (e.g. a real data set's,
        :func:`bayeshier_pymc.validation_data.real_residual_covariance`): the rows of the base
        residuals are ``N(0, covariance)`` instead of ``N(0, sigma_y² I)``.
    subclass_sd, superclass_sd, global_sd
        Tree-structured noise: per sample, one ``N(0, sd²)`` value shared by the metabolites of
        each subclass, of each superclass (needs ``n_superclasses``), and by all.
    n_factors, factor_sd
        Factor residuals: ``F L'`` with ``F`` (n × n_factors) standard normal and loadings
        ``L`` (m × n_factors) drawn once ``N(0, factor_sd²)``.
    """

    covariance: np.ndarray | None = None
    subclass_sd: float = 0.0
    superclass_sd: float = 0.0
    global_sd: float = 0.0
    n_factors: int = 0
    factor_sd: float = 0.0


@dataclass(frozen=True)
class SimulatedStudy:
    """A simulated metabolomics study.

    Attributes
    ----------
    X
        Sample covariates (samples × p), standard normal.
    Y
        Responses (samples × m).
    B
        True coefficients with dims ``("covariate", "feature")``.
    annotations
        Feature annotation table (index: feature; columns: ``subclass`` and, with
        superclasses, ``superclass``).
    residual_covariance
        The true m × m covariance of a residual row with correlated residuals
        (:class:`ResidualNoise`); ``None`` for independent ones (``sigma_y² I``).
    """

    X: pd.DataFrame
    Y: pd.DataFrame
    B: xr.DataArray
    annotations: pd.DataFrame
    residual_covariance: np.ndarray | None = None

    @property
    def levels(self) -> list[str]:
        """The annotation levels, finest first."""
        return list(self.annotations.columns)


def simulate(
    n: int = 60,
    m: int = 770,
    p: int = 10,
    *,
    proportions: Sequence[float] = (0.55, 0.25, 0.15, 0.05),
    tau_w: float = 0.08,
    tau_v: float = 0.12,
    theta0_scale: float = 0.2,
    sigma_y: float = 1.0,
    n_superclasses: int | Sequence[int] | None = None,
    tau_u: float = 0.12,
    residuals: ResidualNoise | None = None,
    random_seed: int | None = None,
) -> SimulatedStudy:
    """Simulate the research design.

    X ~ N(0, 1) (n × p); for each covariate k, θ0_k ~ N(0, theta0_scale²); superclass means
    α_gk ~ N(θ0_k, tau_u²) (only with ``n_superclasses``); subclass means
    β_hk ~ N(α_g(h)k or θ0_k, tau_v²); θ_jk ~ N(β_h(j)k, tau_w²); Y = X B + E with
    E ~ N(0, sigma_y²), or correlated residuals (``residuals``). There is no intercept. The
    correlated components are drawn after everything else, so a seed gives the same truth and
    X with and without them, and the independent setting's numbers are those of before.

    Parameters
    ----------
    n, m, p
        Samples, metabolites and covariates.
    proportions
        Share of the metabolites in each subclass (normalised to sum to one).
    tau_w, tau_v, tau_u
        Standard deviations of metabolites around subclasses, subclasses around their parent,
        and superclasses around θ0.
    theta0_scale
        Standard deviation of the global mean θ0 of each covariate.
    sigma_y
        Residual standard deviation.
    n_superclasses
        Group the subclasses, in order, into superclasses: an integer splits them as evenly
        as possible into that many; a sequence gives the number of subclasses in each.
    residuals
        Correlated residuals (see :class:`ResidualNoise`); ``None``: independent ones.
    random_seed
        Seed of the generator.

    Returns
    -------
    SimulatedStudy
    """
    shares = np.asarray(proportions, dtype=float)
    if shares.ndim != 1 or shares.size == 0 or (shares <= 0).any():
        raise ValueError("proportions must be a non-empty sequence of positive numbers.")
    if min(n, m, p) < 1:
        raise ValueError(f"n, m and p must be positive, got n={n}, m={m}, p={p}.")
    n_sub = shares.size
    super_of_sub = None if n_superclasses is None else _superclass_map(n_superclasses, n_sub)
    rng = np.random.default_rng(random_seed)
    counts = _allocate(m, shares / shares.sum())
    subclass_of = np.repeat(np.arange(n_sub), counts)

    theta0 = rng.normal(0.0, theta0_scale, size=p)
    if super_of_sub is None:
        sub_parent_mean = np.broadcast_to(theta0[:, None], (p, n_sub))
    else:
        alpha = rng.normal(theta0[:, None], tau_u, size=(p, super_of_sub.max() + 1))
        sub_parent_mean = alpha[:, super_of_sub]
    beta = rng.normal(sub_parent_mean, tau_v)
    theta = rng.normal(beta[:, subclass_of], tau_w)

    X = rng.normal(size=(n, p))
    if residuals is None:
        noise, residual_covariance = rng.normal(0.0, sigma_y, size=(n, m)), None
    else:
        groups = [subclass_of] if super_of_sub is None else [subclass_of, super_of_sub[subclass_of]]
        noise, residual_covariance = _correlated_residuals(residuals, n, groups, sigma_y, rng)
    Y = X @ theta + noise

    samples = pd.Index([f"sample_{i}" for i in range(n)], name="sample")
    covariates = pd.Index([f"x{k}" for k in range(p)], name="covariate")
    features = pd.Index([f"metabolite_{j}" for j in range(m)], name="feature")
    annotations = pd.DataFrame({"subclass": [f"subclass_{h}" for h in subclass_of]}, index=features)
    if super_of_sub is not None:
        annotations["superclass"] = [f"superclass_{g}" for g in super_of_sub[subclass_of]]
    return SimulatedStudy(
        X=pd.DataFrame(X, index=samples, columns=covariates),
        Y=pd.DataFrame(Y, index=samples, columns=features),
        B=xr.DataArray(
            theta,
            dims=("covariate", "feature"),
            coords={"covariate": covariates, "feature": features},
            name="B",
        ),
        annotations=annotations,
        residual_covariance=residual_covariance,
    )


def _correlated_residuals(
    settings: ResidualNoise,
    n: int,
    groups: list[np.ndarray],
    sigma_y: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (n × m) of ``settings`` and their true row covariance (m × m).

    ``groups`` holds the subclass and, with superclasses, the superclass of every metabolite.
    """
    m = groups[0].size
    if settings.superclass_sd > 0 and len(groups) < 2:
        raise ValueError("superclass_sd needs a study with superclasses (n_superclasses).")
    sds = (settings.subclass_sd, settings.superclass_sd, settings.global_sd, settings.factor_sd)
    if min(sds) < 0 or settings.n_factors < 0:
        raise ValueError("the residual noise's sds and n_factors must not be negative.")
    if settings.covariance is None:
        noise = rng.normal(0.0, sigma_y, size=(n, m))
        covariance = sigma_y**2 * np.eye(m)
    else:
        covariance = np.array(settings.covariance, dtype=float)
        factor = covariance_factor(covariance, m, "the residual covariance")
        noise = rng.standard_normal((n, m)) @ factor.T
    shared = [
        (np.zeros(m, dtype=np.intp), settings.global_sd),
        *((codes, sd) for codes, sd in zip(groups, sds[:2], strict=False)),
    ]
    for codes, sd in shared:
        if sd > 0:
            noise += rng.normal(0.0, sd, size=(n, codes.max() + 1))[:, codes]
            covariance += sd**2 * (codes[:, None] == codes[None, :])
    if settings.n_factors > 0 and settings.factor_sd > 0:
        loadings = rng.normal(0.0, settings.factor_sd, size=(m, settings.n_factors))
        noise += rng.standard_normal((n, settings.n_factors)) @ loadings.T
        covariance += loadings @ loadings.T
    return noise, covariance


def _superclass_map(n_superclasses: int | Sequence[int], n_sub: int) -> np.ndarray:
    """Superclass index of each subclass."""
    if np.ndim(n_superclasses) == 0:
        n_super = int(n_superclasses)  # type: ignore[arg-type]
        if not 1 <= n_super <= n_sub:
            raise ValueError(f"n_superclasses must be between 1 and {n_sub}, got {n_super}.")
        return np.arange(n_sub) * n_super // n_sub
    sizes = np.asarray(n_superclasses, dtype=int)
    if sizes.sum() != n_sub or (sizes < 1).any():
        raise ValueError(
            f"n_superclasses as sizes must be positive and sum to the {n_sub} subclasses, "
            f"got {sizes.tolist()}."
        )
    return np.repeat(np.arange(sizes.size), sizes)


def _allocate(m: int, shares: np.ndarray) -> np.ndarray:
    """Split ``m`` items by ``shares`` (largest remainders), every group getting at least one."""
    if m < shares.size:
        raise ValueError(f"m={m} metabolites cannot fill {shares.size} subclasses.")
    raw = shares * m
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() < m:
        counts[np.argmax(raw - counts)] += 1
    while counts.sum() > m:
        counts[np.argmax(np.where(counts > 1, counts - raw, -np.inf))] -= 1
    return counts


def train_test_split(
    study: SimulatedStudy, train_fraction: float = 0.7, *, random_seed: int | None = None
) -> tuple[SimulatedStudy, SimulatedStudy]:
    """Split the samples (rows) at random into a training and a held-out study.

    Parameters
    ----------
    study
        The study to split.
    train_fraction
        Share of the samples used for training (the research code used 0.7).
    random_seed
        Seed of the permutation.

    Returns
    -------
    tuple of SimulatedStudy
        ``(train, test)``, sharing ``B`` and ``annotations``.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}.")
    n = study.X.shape[0]
    n_train = round(train_fraction * n)
    if not 0 < n_train < n:
        raise ValueError(f"a {train_fraction} split of {n} samples leaves one side empty.")
    order = np.random.default_rng(random_seed).permutation(n)
    parts = (np.sort(order[:n_train]), np.sort(order[n_train:]))
    return tuple(  # type: ignore[return-value]
        SimulatedStudy(
            study.X.iloc[rows],
            study.Y.iloc[rows],
            study.B,
            study.annotations,
            study.residual_covariance,
        )
        for rows in parts
    )
