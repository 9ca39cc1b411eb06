"""A user's first minutes: ``import bayeshier_pymc``, ``bayeshier demo`` and ``bayeshier fit``.

Each is timed as a fresh subprocess (what a user starts), in one run, and printed beside its
goal (issue 15: the demo within 30 s and the README's QMDiab fit within 60 s, on 2 idle cores;
the import is measured, with no goal). The fit is skipped when the QMDiab files are absent.

    python benchmarks/bench_first_minutes.py [--data ../shared/data] [--repeats 1]

The machine may be shared: each line gives the load average (1 minute) before and after the
command, and the command's CPU seconds beside its wall seconds; on a loaded machine the wall
time exceeds what an idle one takes. The first run after an install or a change to the
package also compiles the numba kernels (cached on disk afterwards): each line says whether
that cache was there (``numba cache: warm``) or not (``cold``). With ``--repeats`` above 1 the
fastest run is reported.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bayeshier_pymc"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
QMDIAB = {
    "--responses": "qmdiab_plasma_data.csv",
    "--samples": "qmdiab_plasma_samples.csv",
    "--annotations": "qmdiab_plasma_features.csv",
}


def _numba_cache() -> str:
    """Whether the package's numba kernels are cached on disk (``warm``) or not (``cold``)."""
    return "warm" if any(PACKAGE.rglob("*.nbi")) else "cold"


def _timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, with its threads and children) of ``command``."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _report(name: str, command: list[str], goal: float | None, repeats: int) -> None:
    """Time ``command`` ``repeats`` times and print the fastest run beside ``goal``."""
    cache = _numba_cache()
    load_before = os.getloadavg()[0]
    wall, cpu = min(_timed(command) for _ in range(repeats))
    load_after = os.getloadavg()[0]
    verdict = (
        "no goal" if goal is None else f"goal ≤ {goal:.0f} s: {'met' if wall <= goal else 'MISSED'}"
    )
    print(
        f"{name:<14} {wall:7.1f} s wall {cpu:7.1f} s cpu   {verdict:<18} "
        f"load {load_before:.1f} → {load_after:.1f}, numba cache: {cache}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the QMDiab CSVs")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each command (fastest kept)"
    )
    args = parser.parse_args()
    python = sys.executable
    print(
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
        f"(1, 5, 15 min); Python {sys.version.split()[0]}",
        flush=True,
    )
    _report("import", [python, "-c", "import bayeshier_pymc"], None, args.repeats)
    with tempfile.TemporaryDirectory() as out:
        demo = [python, "-m", "bayeshier_pymc.cli", "demo", "--out", f"{out}/demo", "--quiet"]
        _report("bayeshier demo", demo, 30.0, args.repeats)
        files = {flag: args.data / name for flag, name in QMDIAB.items()}
        if not all(path.exists() for path in files.values()):
            print(f"bayeshier fit  skipped: the QMDiab files are not in {args.data}", flush=True)
            return
        fit = [python, "-m", "bayeshier_pymc.cli", "fit"]
        for flag, path in files.items():
            fit += [flag, str(path)]
        fit += [
            "--feature-id", "featureID", "--formula", "AGE + BMI + C(GENDER) + C(T2D)",
            "--levels", "SUB_PATHWAY", "SUPER_PATHWAY", "--drop-unannotated",
            "--sampler", "gibbs", "--out", f"{out}/qmdiab", "--quiet",
        ]  # fmt: skip
        _report("bayeshier fit", fit, 60.0, args.repeats)


if __name__ == "__main__":
    main()
