"""A user's first minutes: ``import bayeshier_pymc``, ``bayeshier demo`` and ``bayeshier fit``.

Each is timed as a fresh subprocess (what a user starts), in one run, and printed beside its
goal (issue 15: the demo within 30 s and the README's QMDiab fit within 60 s, on 2 idle cores;
the import is measured, with no goal). The fit is skipped when the QMDiab files are absent.

    python benchmarks/bench_first_minutes.py [--data ../shared/data] [--repeats 1] [--steps]

The machine may be shared: each line gives the load average (1 minute) before and after the
command, and the command's CPU seconds beside its wall seconds; on a loaded machine the wall
time exceeds what an idle one takes. The first run after an install or a change to the
package also compiles the numba kernels (cached on disk afterwards): each line says whether
that cache was there (``numba cache: warm``) or not (``cold``). With ``--repeats`` above 1 the
fastest run is reported.

With ``--steps`` the demo and the fit are run once more each, with their progress lines (and
bars) on, and a second line gives the seconds between the lines: where the time goes (import
and data, stage 1, each sampler, diagnostics, depth comparison, tables, results.nc, figures,
report). These runs are not the timed ones: the bars cost a little.
"""

from __future__ import annotations

import argparse
import os
import re
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


STEPS = (
    (re.compile(r"^(demo study|read |stage 1:)"), "import and data"),
    (re.compile(r"^stage 2: "), "stage 1"),  # then the first sampler (the next "stage 2" line)
    (re.compile(r"^sampler agreement"), "second sampler, agreement"),
    (re.compile(r"^(diagnostics|depth comparison)"), "diagnostics"),
    (re.compile(r"^recommended depth"), "depth comparison"),
    (re.compile(r"^wrote .*\.csv$"), "tables"),
    (re.compile(r"^wrote .*\.nc$"), "results.nc"),
    (re.compile(r"^wrote .*\.png$"), "figures"),
    (re.compile(r"^wrote .*\.md$"), "report"),
)
"""A progress line of the pipeline, and the step that it ends."""


def _numba_cache() -> str:
    """Whether the package's numba kernels are cached on disk (``warm``) or not (``cold``)."""
    return "warm" if any(PACKAGE.rglob("*.nbi")) else "cold"


def _timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, with its threads and children) of ``command``."""
    environment = _environment()
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


def _environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def _steps(name: str, command: list[str]) -> None:
    """Run ``command`` with its progress lines and print the seconds of each step."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    last = start
    samplers = 0
    with subprocess.Popen(
        [part for part in command if part != "--quiet"],
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            step = next((label for pattern, label in STEPS if pattern.match(line.strip())), None)
            if step == "stage 1":  # the first "stage 2" line ends stage 1, the second a sampler
                samplers += 1
                step = "stage 1" if samplers == 1 else "first sampler"
            if step is None:
                continue
            now = time.perf_counter()
            seconds[step] = seconds.get(step, 0.0) + now - last
            last = now
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    seconds["exit"] = time.perf_counter() - last
    total = time.perf_counter() - start
    parts = ", ".join(f"{step} {value:.1f}" for step, value in seconds.items())
    print(f"{name:<14} steps (s, bars on, {total:.1f} in all): {parts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the QMDiab CSVs")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each command (fastest kept)"
    )
    parser.add_argument(
        "--steps", action="store_true", help="run the demo and the fit once more, timing each step"
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
        if args.steps:
            _steps("bayeshier demo", demo)
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
        if args.steps:
            _steps("bayeshier fit", fit)


if __name__ == "__main__":
    main()
