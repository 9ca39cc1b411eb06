"""Execute every tutorial notebook in quick mode (``BAYESHIER_NOTEBOOK_QUICK=1``).

Each notebook is read into memory and run with nbclient from ``notebooks/`` (so relative
paths such as ``../../shared/data`` resolve as they do for a reader); the committed file and
its saved outputs are never written. Notebooks that need the external data in
``../shared/data`` are skipped when it is absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SHARED_DATA = NOTEBOOKS.parents[1] / "shared" / "data"
NEEDS_SHARED_DATA = {"02_qmdiab_plasma.ipynb": "qmdiab_plasma_data.csv"}
EXPECTED = [
    "01_quickstart.ipynb",
    "02_qmdiab_plasma.ipynb",
    "03_nuts_vs_gibbs.ipynb",
    "04_hierarchy_depths_loo.ipynb",
    "05_simulation_study.ipynb",
]
QUICK_BUDGET_S = 240.0
"""Generous ceiling per notebook in quick mode (they take well under a minute alone)."""


def test_every_notebook_is_present_and_saved_with_outputs() -> None:
    found = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    assert found == EXPECTED
    for name in EXPECTED:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code, name
        assert all(cell.get("execution_count") for cell in code), f"{name} is not fully executed"
        assert not any(
            output.get("output_type") == "error" for cell in code for output in cell.outputs
        ), f"{name} was saved with an error"
        assert "BAYESHIER_NOTEBOOK_QUICK" in code[0].source, f"{name}: no quick switch first"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_in_quick_mode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data_file = NEEDS_SHARED_DATA.get(name)
    if data_file is not None and not (SHARED_DATA / data_file).is_file():
        pytest.skip(f"{name} needs {SHARED_DATA / data_file}, which is absent")
    monkeypatch.setenv("BAYESHIER_NOTEBOOK_QUICK", "1")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # an in-memory copy
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    first = "".join(
        output.get("text", "")
        for output in notebook.cells[
            next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code")
        ].outputs
    )
    assert "QUICK=True" in first
    assert elapsed < QUICK_BUDGET_S, f"{name} took {elapsed:.0f} s in quick mode"
