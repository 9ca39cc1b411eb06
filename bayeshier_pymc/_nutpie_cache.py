"""nutpie's numba compilation of a PyMC model, its two compiled entry points cached on disk.

nutpie on numba (the default NUTS) compiles a model in two stages: PyTensor turns the log
density with its gradient, and the function that expands a point into every variable, into
numba code (which PyTensor's own numba cache keeps on disk); then nutpie wraps each in a C
callback (``numba.cfunc``) that its Rust threads call, reading the model's shared data (its
``pm.Data``) through a pointer. The wrappers inline the whole model, so compiling them is
most of the time (9.6 of 10.5 s for the collapsed research model, loaded 2-core machine),
and nutpie compiles them uncached, at every call (they are closures over the model's
functions, which numba's cache cannot key). Here they are compiled
as PyTensor compiles its own functions, so that numba's disk cache serves them: each is
recompiled from a small source whose free variables are globals, under a key
(:func:`compiled_key`).

The key is what the compiled code depends on: PyTensor's own cache keys of the two
functions (their graphs, constants, static shapes and each Op's key, the collapsed model's
tree, variances and priors included), the layout of the shared data (names, ranks, dtypes:
their values are read at every call, never compiled in), the number of parameters and of
expanded values, the versions of nutpie, numba and PyTensor, and the digest of this module's
source (:data:`SOURCE_DIGEST`). A function PyTensor cannot
key is compiled as nutpie compiles it, uncached. The cache lives in PyTensor's numba cache
folder (``pytensor.config.base_compiledir``); an entry that cannot be read (a truncated or
damaged file) is reported in a warning, removed and compiled again.

:func:`compile_pymc_model` is ``nutpie.compile_pymc_model`` for the numba backend with the
cache (other backends and options go to nutpie's own); within :func:`cached_nutpie_compilation`
``pymc.sample(nuts_sampler="nutpie")`` compiles through it, so that any PyMC model sampled
there, extended by the user or not, is compiled once per machine and structure. The compiled
model is nutpie's own (``CompiledPyMCModel``): the draws for a seed are those of nutpie's
compilation.
"""

from __future__ import annotations

import functools
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from bayeshier_pymc._shared_patch import SharedPatch

__all__ = ["cached_nutpie_compilation", "compile_pymc_model", "compiled_key"]

SOURCE_DIGEST = sha256(Path(__file__).read_bytes()).hexdigest()
"""The digest of this module's source, part of every key: entries compiled by another version
of the wrappers here are not read."""

UNREADABLE_ENTRY_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    OSError,
    AttributeError,
    ImportError,
    IndexError,
)
"""What reading a damaged cache entry raises (numba unpickles its files; Python's pickle
documents these besides :class:`pickle.UnpicklingError`)."""


def _through_the_cache(own: Callable[..., Any]) -> Callable[..., Any]:
    """The replacement of ``nutpie.compile_pymc_model``: :func:`compile_pymc_model`."""

    @functools.wraps(own)
    def cached(model: Any, **options: Any) -> Any:
        return compile_pymc_model(model, **options)

    return cached


_PATCH = SharedPatch("nutpie", "compile_pymc_model", _through_the_cache)


@contextmanager
def cached_nutpie_compilation() -> Iterator[None]:
    """Within the block, nutpie compiles PyMC models through :func:`compile_pymc_model`.

    ``pymc.sample(nuts_sampler="nutpie")`` calls ``nutpie.compile_pymc_model``; within the
    block that is :func:`compile_pymc_model`, which caches the numba backend's compiled entry
    points on disk. nutpie is left as it was once the last block active (in any thread) ends.

    Examples
    --------
    >>> import pymc as pm
    >>> from bayeshier_pymc.sampling import cached_nutpie_compilation
    >>> with pm.Model() as model:  # doctest: +SKIP
    ...     x = pm.Normal("x")
    >>> with cached_nutpie_compilation():  # doctest: +SKIP
    ...     idata = pm.sample(nuts_sampler="nutpie", model=model)
    """
    with _PATCH:
        yield


def compile_pymc_model(
    model: Any,
    *,
    backend: str = "numba",
    gradient_backend: str = "pytensor",
    var_names: Iterable[str] | None = None,
    **options: Any,
) -> Any:
    """``nutpie.compile_pymc_model``, its numba entry points read from the cache when there.

    Parameters
    ----------
    model
        The PyMC model.
    backend, gradient_backend, var_names
        As for ``nutpie.compile_pymc_model``; the cache serves ``backend="numba"``.
    **options
        nutpie's other options (initial points, jitter, freezing, numba's options): given
        any, or another backend, nutpie compiles the model itself, uncached.

    Returns
    -------
    nutpie.compile_pymc.CompiledPyMCModel
        nutpie's compiled model.
    """
    from nutpie.compile_pymc import compile_pymc_model as compile_uncached

    if backend.lower() != "numba" or gradient_backend.lower() != "pytensor" or options:
        return compile_uncached(
            model,
            backend=backend,
            gradient_backend=gradient_backend,
            var_names=var_names,
            **options,
        )
    return _compile_numba(model, var_names)


def compiled_key(model: Any, var_names: Iterable[str] | None = None) -> str | None:
    """The cache key of nutpie's numba entry points of ``model``.

    Parameters
    ----------
    model
        The PyMC model.
    var_names
        The variables nutpie keeps (default: all).

    Returns
    -------
    str or None
        ``None`` when PyTensor keys one of the two functions with nothing (it does not cache
        it either): the entry points are then compiled uncached.
    """
    return _key(_pytensor_functions(model, var_names))


@dataclass(frozen=True)
class _Functions:
    """What nutpie compiles a model into before its entry points (see ``_make_functions``)."""

    n_dim: int
    n_expanded: int
    logp: Any
    expand: Any
    initial_point: Callable[..., np.ndarray]
    shape_info: Any
    shared_data: dict[str, np.ndarray]
    shared_vars: dict[str, Any]


def _pytensor_functions(model: Any, var_names: Iterable[str] | None) -> _Functions:
    """The log density with its gradient and the expansion as PyTensor functions (NUMBA mode).

    As nutpie builds them for its numba backend, with its default initial point (the
    support point, jittered), and the model's shared data by name.
    """
    import nutpie.compile_pymc as nutpie_pymc
    from pymc.initial_point import make_initial_point_fn

    initial_point = make_initial_point_fn(
        model=model,
        default_strategy="support_point",
        jitter_rvs=set(model.free_RVs),
        return_transformed=True,
    )
    n_dim, n_expanded, logp, expand, initial_point_func, shape_info = nutpie_pymc._make_functions(
        model,
        mode="NUMBA",
        compute_grad=True,
        join_expanded=True,
        pymc_initial_point_fn=nutpie_pymc._wrap_with_lock(initial_point),
        var_names=var_names,
    )
    shared_data, shared_vars = {}, {}
    for variable in [*logp.get_shared(), *expand.get_shared()]:
        if variable.name in shared_vars and shared_vars[variable.name] is not variable:
            raise ValueError(f"Shared variables must have unique names: {variable.name}")
        value = np.array(variable.get_value(), order="C", copy=True)
        value.flags.writeable = False
        shared_data[variable.name], shared_vars[variable.name] = value, variable
    return _Functions(
        n_dim, n_expanded, logp, expand, initial_point_func, shape_info, shared_data, shared_vars
    )


def _key(functions: _Functions) -> str | None:
    """PyTensor's keys of both functions, the shared data's layout, the sizes, the versions.

    The shared data's values do not enter the key: the entry points read them at every call.
    """
    import numba
    import nutpie
    import pytensor
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    if not pytensor.config.numba__cache:
        return None
    keys = [
        CACHED_SRC_FUNCTIONS.get(f.vm.jit_fn.py_func) for f in (functions.logp, functions.expand)
    ]
    if None in keys:
        return None
    layout = [(name, value.ndim, value.dtype.str) for name, value in functions.shared_data.items()]
    sizes = (functions.n_dim, functions.n_expanded)
    versions = (nutpie.__version__, numba.__version__, pytensor.__version__, SOURCE_DIGEST)
    return sha256(repr((keys, layout, sizes, versions)).encode()).hexdigest()


def _compile_numba(model: Any, var_names: Iterable[str] | None) -> Any:
    """What ``nutpie.compile_pymc_model`` does for numba, the entry points by :func:`_cfunc`."""
    import nutpie.compile_pymc as nutpie_pymc

    functions = _pytensor_functions(model, var_names)
    key = _key(functions)
    n_dim, n_expanded, shared_data = functions.n_dim, functions.n_expanded, functions.shared_data
    user_data = nutpie_pymc.make_user_data(functions.shared_vars, shared_data)
    logp, logp_signature = nutpie_pymc._make_c_logp_func(
        n_dim,
        functions.logp.vm.jit_fn,
        user_data,
        [variable.name for variable in functions.logp.get_shared()],
        shared_data,
    )
    expand, expand_signature = nutpie_pymc._make_c_expand_func(
        n_dim,
        n_expanded,
        functions.expand.vm.jit_fn,
        user_data,
        [variable.name for variable in functions.expand.get_shared()],
        shared_data,
    )
    shape_info = functions.shape_info
    dims, coords = nutpie_pymc._prepare_dims_and_coords(model, shape_info)
    return nutpie_pymc.CompiledPyMCModel(
        _n_dim=n_dim,
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info, strict=True)},
        compiled_logp_func=_cfunc(logp, logp_signature, key and f"{key}_logp"),
        compiled_expand_func=_cfunc(expand, expand_signature, key and f"{key}_expand"),
        initial_point_func=functions.initial_point,
        shared_data=shared_data,
        user_data=user_data,
        n_expanded=n_expanded,
        shape_info=shape_info,
        logp_func=functions.logp,
        expand_func=functions.expand,
    )


def _cfunc(function: Callable[..., int], signature: Any, key: str | None) -> Any:
    """``numba.cfunc(signature)(function)``, cached under ``key`` unless it is ``None``.

    numba caches no closure such as nutpie's ``function``; the C callback compiled instead
    calls it (as a jitted function, inlined by numba) from a function written here whose free
    variable is a global, and PyTensor's cache locator files it under ``key``. An entry that
    cannot be read (:data:`UNREADABLE_ENTRY_ERRORS`) is named in a warning, removed and
    compiled again, which writes it anew; where it cannot be removed, the callback is compiled
    uncached.
    """
    import numba

    if key is None:
        return numba.cfunc(signature)(function)
    from pytensor.link.numba import cache
    from pytensor.link.numba.cache import compile_numba_function_src

    arguments = ", ".join(function.__code__.co_varnames[: function.__code__.co_argcount])
    name = function.__name__
    wrapper = compile_numba_function_src(
        f"def {name}({arguments}):\n    return entry({arguments})\n",
        name,
        global_env={"entry": numba.njit(function), "__name__": __name__},
        cache_key=key,
    )
    try:
        return numba.cfunc(signature, cache=True)(wrapper)
    except UNREADABLE_ENTRY_ERRORS as error:
        files = sorted(Path(cache.NUMBA_CACHE_PATH).glob(f"*-{key}.*"))
        warnings.warn(
            f"the compiled-model cache entry {[str(path) for path in files]!r} could not be "
            f"read ({type(error).__name__}: {error}); it is compiled again.",
            UserWarning,
            stacklevel=2,
        )
        try:
            for path in files:
                path.unlink(missing_ok=True)
        except OSError:
            return numba.cfunc(signature)(function)
        return numba.cfunc(signature, cache=True)(wrapper)
