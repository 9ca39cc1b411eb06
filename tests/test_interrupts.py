"""Ctrl-C stops every sampler promptly, whatever its phase, and leaves nothing running.

The subprocess tests start a run in a child Python, wait for a line that says which phase it
is in, send SIGINT and time the KeyboardInterrupt and the exit. The child's phases are told by
markers: the DEBUG log of :mod:`bayeshier_pymc._interrupt` for NUTS, and small wrappers
installed in the child for the Gibbs engine (they print, and the θ writer's one slows each
draw down to stand for a long kernel).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.gibbs import engine
from bayeshier_pymc.gibbs.theta_writer import ThetaWriter

ROOT = Path(__file__).resolve().parents[1]

CHILD_PREAMBLE = """
import logging, sys
import numpy as np
logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
logging.getLogger("bayeshier_pymc").setLevel(logging.DEBUG)
from bayeshier_pymc.shrinkage import ShrinkageModel
from bayeshier_pymc.gibbs import engine, theta_writer
rng = np.random.default_rng(1)
b = rng.normal(size=(3, 400))
model = ShrinkageModel((b, np.full(b.shape, 0.5)))
"""

CHILDREN = {
    "nuts compiling": (  # while a thread draws the exact draws' normals, slowed to 40 s
        "import time\n"
        "from bayeshier_pymc import sampling\n"
        "sampling.NORMAL_BLOCK_CELLS = 100 * b.size\n"
        "sampling.commit = lambda block: time.sleep(0.02)\n"
        "print('start', flush=True)\n"
        "model.sample(draws=100_000, tune=100_000, chains=2, random_seed=1, progressbar=False)",
        "start",
        1.0,
    ),
    "nuts sampling": (
        "model.sample(draws=100_000, tune=20, chains=2, random_seed=1, progressbar=False)",
        "NUTS sampling",
        0.5,
    ),
    "numpyro nuts sampling": (
        "model.sample(nuts_sampler='numpyro', draws=100_000, tune=20, chains=2, random_seed=1,\n"
        "             progressbar=False)",
        "NUTS sampling",
        0.5,
    ),
    "pymc nuts sampling": (
        "logging.getLogger('pymc').setLevel(logging.INFO)\n"
        "model.sample(nuts_sampler='pymc', draws=100_000, tune=20, chains=2, cores=2,\n"
        "             random_seed=1, progressbar=False)",
        "NUTS: [tau]",
        3.0,
    ),
    "gibbs pymc step sampling": (
        "logging.getLogger('pymc').setLevel(logging.INFO)\n"
        "model.sample('gibbs', backend='pymc', draws=100_000, tune=20, chains=2, cores=2,\n"
        "             random_seed=1, progressbar=False)",
        "TreeGibbs: [",
        3.0,
    ),
    "gibbs tuning": (
        "print('start', flush=True)\n"
        "model.sample('gibbs', draws=100, tune=10_000_000, chains=4, cores=2, progressbar=False)",
        "start",
        1.0,
    ),
    "gibbs writing theta": (
        "import time\n"
        "write, finish = theta_writer.ThetaWriter._write, theta_writer.ThetaWriter.finish\n"
        "def slow_write(self, draw):\n"
        "    time.sleep(0.01)\n"
        "    write(self, draw)\n"
        "def announced_finish(self):\n"
        "    print('writing the last draws', flush=True)\n"
        "    return finish(self)\n"
        "theta_writer.ThetaWriter._write = slow_write\n"
        "theta_writer.ThetaWriter.finish = announced_finish\n"
        "model.sample('gibbs', draws=3000, tune=10, chains=4, cores=2, progressbar=False)",
        "writing the last draws",
        0.3,
    ),
}


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put((time.perf_counter(), line))
    sink.put((time.perf_counter(), None))


@pytest.mark.parametrize("phase", list(CHILDREN))
def test_ctrl_c_stops_a_run_within_seconds_and_leaves_nothing(phase):
    body, marker, delay = CHILDREN[phase]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("CI", "PYTEST_XDIST_WORKER"):  # numpyro hides its bar under these
        environment.pop(name, None)
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", CHILD_PREAMBLE + textwrap.dedent(body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(child.stdout, lines), daemon=True).start()
    output = []
    try:
        deadline = time.perf_counter() + 180
        while not any(marker in line for line in output):
            _, line = lines.get(timeout=max(deadline - time.perf_counter(), 0.1))
            assert line is not None, "".join(output)
            output.append(line)
        time.sleep(delay)
        assert child.poll() is None, "".join(output)
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        interrupted = None
        while True:
            at, line = lines.get(timeout=60)
            if line is None:
                break
            output.append(line)
            if interrupted is None and line.startswith("KeyboardInterrupt"):
                interrupted = at - sent
        returncode = child.wait(timeout=60)
        exited = time.perf_counter() - sent
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    text = "".join(output)
    assert interrupted is not None and returncode in (-signal.SIGINT, 1), text
    assert interrupted < 5.0, (interrupted, text)
    assert exited < 20.0, (exited, text)
    with pytest.raises(ProcessLookupError):  # no process of the child's session is left
        os.killpg(child.pid, 0)


@pytest.fixture
def small_model():
    data = bh.simulate(n=40, m=30, p=2, n_superclasses=3, random_seed=4)
    tree = bh.Hierarchy.from_frame(data.annotations, data.levels)
    return bh.ShrinkageModel(bh.mlm(data.Y, data.X, x_intercept=False), tree)


def test_gibbs_interrupted_before_its_first_sweep_leaves_no_thread(small_model, monkeypatch):
    """Ctrl-C as the progress bar is made: the θ writer's thread must not outlive the run."""
    writers: list[ThetaWriter] = []

    class Recorded(ThetaWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)

    def interrupted_bar(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "ThetaWriter", Recorded)
    monkeypatch.setattr(engine, "tqdm", interrupted_bar)
    before = set(threading.enumerate())
    try:
        with pytest.raises(KeyboardInterrupt):
            small_model.sample("gibbs", draws=20, tune=20, chains=2, cores=2, random_seed=1)
        assert set(threading.enumerate()) <= before
    finally:
        for writer in writers:
            writer.close()


def test_an_abandoned_theta_writer_stops_after_the_draw_under_way(small_model, monkeypatch):
    """Draws still queued are not written once the engine stops early (they used to be)."""
    n_groups = small_model.tree.n_groups
    stores = {
        "mu": np.zeros((2, 200, 2)),
        "tau": np.ones((2, 200, 2, 3)),
        "subclass_mean": np.zeros((2, 200, 2, n_groups[0])),
        "superclass_mean": np.zeros((2, 200, 2, n_groups[1])),
    }
    write = ThetaWriter._write

    def slow_write(self, draw):
        time.sleep(0.02)
        write(self, draw)

    monkeypatch.setattr(ThetaWriter, "_write", slow_write)
    # the stores of the independent model's writer (θ's parents are the posterior's)
    problem = bh.ShrinkageModel(
        small_model.estimates, small_model.tree, noise="independent"
    ).problem
    writer = ThetaWriter(problem, np.random.SeedSequence(0), stores, np.float32, True)
    for draw in range(200):
        writer.recorded(draw)
    start = time.perf_counter()
    writer.close(abandon=True)
    assert time.perf_counter() - start < 1.0


def test_numpyro_stepped_from_python_gives_the_same_draws(small_model):
    """The loop that lets Ctrl-C in runs the same compiled step: the draws do not change."""
    import pymc as pm

    from bayeshier_pymc._interrupt import numpyro_steps_from_python

    model = small_model.build()
    options = {
        "draws": 30,
        "tune": 30,
        "chains": 2,
        "random_seed": 3,
        "nuts_sampler": "numpyro",
        "progressbar": False,
        "model": model,
        "compute_convergence_checks": False,
        "nuts_sampler_kwargs": {"chain_method": "vectorized"},
    }
    whole = pm.sample(**options).posterior["tau"].to_numpy()
    with numpyro_steps_from_python("numpyro", progressbar=False):
        stepped = pm.sample(**options).posterior["tau"].to_numpy()
    np.testing.assert_array_equal(stepped, whole)


def test_numpyro_blocks_stay_short_whatever_a_step_costs():
    """A block aims at BLOCK_SECONDS, grows at most twofold and never drops below one step."""
    from bayeshier_pymc._interrupt import BLOCK_SECONDS, _next_block

    assert _next_block(1, 20.0) == 1  # the first block compiles: the next stays at one step
    assert _next_block(8, 1e-6) == 16  # fast steps: twice as many, not thousands at once
    assert _next_block(100, 10 * BLOCK_SECONDS) == 10  # slower steps: a shorter block
    assert _next_block(64, 0.5 * BLOCK_SECONDS) == 128
    assert _next_block(3, 1e3) == 1


def test_numpyro_gets_a_compiled_log_density_of_the_same_value(small_model):
    """Within the NUTS call PyMC's JAX log density is jitted (one program, not one per op)."""
    import jax
    import pymc.sampling.jax as pymc_jax

    from bayeshier_pymc.sampling import _compiled_jax_log_density

    model = small_model.build()
    point = [np.asarray(value) + 0.1 for value in model.initial_point().values()]
    plain = pymc_jax.get_jaxified_logp(model, negative_logp=False)
    with _compiled_jax_log_density("numpyro"):
        compiled = pymc_jax.get_jaxified_logp(model, negative_logp=False)
    assert pymc_jax.get_jaxified_logp.__name__ == "get_jaxified_logp"  # restored
    assert isinstance(compiled, type(jax.jit(lambda x: x)))
    np.testing.assert_allclose(float(compiled(point)), float(plain(point)), rtol=1e-12)
    with _compiled_jax_log_density("nutpie"):
        assert pymc_jax.get_jaxified_logp(model) is not compiled
        assert not isinstance(pymc_jax.get_jaxified_logp(model), type(jax.jit(lambda x: x)))


def test_nutpie_start_is_logged_and_nutpie_left_as_it_was(monkeypatch, caplog):
    import nutpie

    from bayeshier_pymc._interrupt import nutpie_start_logged

    def sample(*args, **options):
        return args, options

    monkeypatch.setattr(nutpie, "sample", sample)
    with caplog.at_level(logging.DEBUG, logger="bayeshier_pymc._interrupt"):
        with nutpie_start_logged("numpyro"):
            assert nutpie.sample is sample
        assert not caplog.records
        with nutpie_start_logged("nutpie"):
            assert nutpie.sample(1, draws=2) == ((1,), {"draws": 2})
    assert nutpie.sample is sample
    assert [record.getMessage() for record in caplog.records] == [
        "NUTS sampling (nutpie: tuning, then the kept draws)"
    ]
