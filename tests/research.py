"""Import the research modules kept beside the benchmark scripts in ``benchmarks/``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def research_module(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py``, imported once under ``name``.

    ``benchmarks/`` joins ``sys.path``, as it does for a script run from there, so that the
    module finds the scripts it imports by name.
    """
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
