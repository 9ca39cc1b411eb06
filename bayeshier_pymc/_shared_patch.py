"""An attribute of another library replaced while any block, in any thread, needs it replaced.

The package changes two of nutpie's functions for the length of a block around
``pymc.sample``: ``nutpie.compile_pymc_model`` (through the compilation cache) and
``nutpie.sample`` (to log the start of the run). Blocks may overlap when several threads
sample at once (joblib's threading backend), so a plain swap in and out could restore the
original while another block still needs the replacement, or leave the replacement behind.
:class:`SharedPatch` counts the active blocks under a lock: the first to enter replaces the
attribute and the last to exit puts the original back.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SharedPatch"]


class SharedPatch:
    """``module.name`` replaced by ``wrap(original)`` while any block is active.

    Parameters
    ----------
    module
        The module's import name (imported at the first block, not before).
    name
        The attribute replaced.
    wrap
        Builds the replacement from the original.

    Examples
    --------
    >>> import math
    >>> doubled = SharedPatch("math", "sqrt", lambda sqrt: lambda x: 2 * sqrt(x))
    >>> with doubled:
    ...     math.sqrt(4.0)
    4.0
    >>> math.sqrt(4.0)
    2.0
    """

    def __init__(self, module: str, name: str, wrap: Callable[[Any], Any]) -> None:
        self._module = module
        self._name = name
        self._wrap = wrap
        self._lock = threading.Lock()
        self._active = 0
        self._original: Any = None

    def __enter__(self) -> None:
        module = importlib.import_module(self._module)
        with self._lock:
            if self._active == 0:
                self._original = getattr(module, self._name)
                setattr(module, self._name, self._wrap(self._original))
            self._active += 1

    def __exit__(self, *exc_info: object) -> None:
        module = importlib.import_module(self._module)
        with self._lock:
            self._active -= 1
            if self._active == 0:
                setattr(module, self._name, self._original)
                self._original = None
