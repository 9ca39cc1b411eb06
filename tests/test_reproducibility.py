"""Same seed, same draws (across processes, for each NUTS backend and Gibbs); chains differ."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import ConvergenceWarning

SCRIPT = """
import hashlib, warnings
import numpy as np
import bayeshier_pymc as bh
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
b = rng.normal(size=(2, 12)); se = np.full((2, 12), 0.5)
model = bh.ShrinkageModel((b, se))
kwargs = {kwargs}
idata = model.sample(draws=30, tune=30, chains=2, random_seed={seed}, progressbar=False, **kwargs)
digest = hashlib.sha256()
for name in sorted(idata.posterior.data_vars):
    digest.update(np.ascontiguousarray(idata.posterior[name].to_numpy()).tobytes())
print("HASH", digest.hexdigest())
"""


def _hash_in_subprocess(kwargs: str, seed: int) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(kwargs=kwargs, seed=seed)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return next(line for line in result.stdout.splitlines() if line.startswith("HASH")).split()[1]


NUMPYRO = '{"nuts_sampler": "numpyro"}'
BACKENDS = [
    pytest.param(NUMPYRO, id="numpyro"),
    pytest.param('{"nuts_sampler": "nutpie"}', id="nutpie", marks=pytest.mark.slow),
    pytest.param('{"nuts_sampler": "pymc", "cores": 1}', id="pymc", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kwargs", BACKENDS)
def test_same_seed_gives_identical_draws_across_processes(kwargs: str) -> None:
    assert _hash_in_subprocess(kwargs, seed=11) == _hash_in_subprocess(kwargs, seed=11)


@pytest.mark.slow
def test_different_seeds_give_different_draws_across_processes() -> None:
    assert _hash_in_subprocess(NUMPYRO, seed=11) != _hash_in_subprocess(NUMPYRO, seed=12)


def _sample(seed: int, **kwargs: object):
    rng = np.random.default_rng(0)
    model = bh.ShrinkageModel((rng.normal(size=(1, 10)), np.full((1, 10), 0.5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.sample(
            draws=30, tune=30, chains=2, random_seed=seed, progressbar=False, **kwargs
        )


def test_in_process_repeat_is_identical_and_chains_differ() -> None:
    first, again = _sample(5), _sample(5)
    for name in first.posterior.data_vars:
        np.testing.assert_array_equal(first.posterior[name], again.posterior[name])
        values = first.posterior[name].to_numpy()
        assert not np.array_equal(values[0], values[1]), f"chains of {name} are identical"


def test_gibbs_same_seed_gives_identical_draws_and_chains_differ() -> None:
    pytest.importorskip("bayeshier_pymc.gibbs.engine")
    first = _sample(5, sampler="gibbs")
    again = _sample(5, sampler="gibbs")
    for name in first.posterior.data_vars:
        np.testing.assert_array_equal(first.posterior[name], again.posterior[name])
        values = first.posterior[name].to_numpy()
        assert not np.array_equal(values[0], values[1]), name


@pytest.mark.slow
def test_gibbs_same_seed_across_processes() -> None:
    pytest.importorskip("bayeshier_pymc.gibbs.engine")
    kwargs = '{"sampler": "gibbs"}'
    assert _hash_in_subprocess(kwargs, seed=3) == _hash_in_subprocess(kwargs, seed=3)
