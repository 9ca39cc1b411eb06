"""Every code block of the user guide and the FAQ, and the README's commands, run as written.

The Python blocks of a page run in order in one namespace, in a temporary folder that has a
``shared/data`` link beside it, so that the pages' ``../shared/data`` resolves. Shell blocks run
their ``bayeshier …`` commands through the command line's ``main``; installation lines
(``pip``, ``python3 -m venv``) are not run. The README's Python block is run by
``tests/test_readme.py``.

The default suite runs every block cheaply: every sampling call runs the Gibbs engine (NUTS
samples the same posterior and is tested elsewhere) with ``CHEAP_DRAWS`` draws and tuning
steps and two chains, and the commands also ``--no-compare``; ``-m slow`` runs the pages
exactly as written and checks every output file the guide lists. Both skip without the real
data.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bayeshier_pymc import ShrinkageModel
from bayeshier_pymc.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHRUNK = ["AGE", "BMI", "C(GENDER)[T.1]", "C(T2D)[T.1]"]
"""The covariates the guide's model shrinks by default: every one but the intercept."""
GUIDE = ROOT / "docs" / "user_guide.md"
README = ROOT / "README.md"
FAQ = ROOT / "docs" / "faq.md"
CHEAP_DRAWS = 200
CHEAP_CLI = [
    *("--draws", str(CHEAP_DRAWS), "--tune", str(CHEAP_DRAWS), "--chains", "2"),
    *("--sampler", "gibbs", "--no-compare"),
]


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced ``python`` and ``bash`` blocks of a page, in order, as (language, code)."""
    found = re.findall(
        r"^```(python|bash)\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S
    )
    return [(language, code) for language, code in found]


def bayeshier_commands(code: str) -> list[list[str]]:
    """The ``bayeshier`` command lines of a shell block, as argument lists (without the name)."""
    lines = code.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line, comments=True) for line in lines]
    return [words[1:] for words in commands if words and words[0] == "bayeshier"]


def run_page(page: Path, folder: Path, *, cheap: bool, languages: set[str]) -> dict[str, Any]:
    """Run the page's blocks of ``languages`` in ``folder``; returns the Python namespace."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for language, code in code_blocks(page):
        if language not in languages:
            continue
        if language == "python":
            exec(compile(code, str(page), "exec"), namespace)
            continue
        for argv in bayeshier_commands(code):
            extra = CHEAP_CLI if cheap and argv[0] == "fit" else []
            assert main([*argv, *extra, "--quiet"]) == 0, argv
    return namespace


@pytest.fixture
def docs_folder(shared_data, tmp_path, monkeypatch):
    """A working folder with ``../shared/data`` pointing at the real data."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def cap_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``ShrinkageModel.sample`` call (``compare_depths`` included): short Gibbs runs."""
    original = ShrinkageModel.sample

    def capped(self: ShrinkageModel, sampler: str = "nuts", **kwargs: Any) -> Any:
        kwargs.update(draws=CHEAP_DRAWS, tune=CHEAP_DRAWS, chains=2, progressbar=False)
        return original(self, "gibbs", **kwargs)

    monkeypatch.setattr(ShrinkageModel, "sample", capped)


def check_guide(namespace: dict[str, Any]) -> None:
    """The figures the guide states about QMDiab are what its code computes."""
    assert namespace["raw"].shape == (356, 758)
    assert namespace["tree"].n_features == 404 and namespace["tree"].n_groups == (68, 9)
    assert namespace["Y"].shape == (356, 309)
    assert namespace["fit"].coef.indexes["covariate"].tolist() == ["(Intercept)", *SHRUNK]
    assert namespace["table"]["covariate"].unique().tolist() == SHRUNK
    assert "4 covariates × 309 features" in repr(namespace["model"])
    assert len(namespace["table"]) == 4 * 309 and namespace["stage1"] is not None
    assert set(namespace["hits"]["covariate"]) <= set(SHRUNK)
    assert namespace["hits"]["name"].notna().all()
    assert Path("results.nc").is_file() and Path("volcano_t2d.png").is_file()


def check_python_equals_command(namespace: dict[str, Any], out: Path) -> None:
    """The guide's Python steps and its command preprocess and fit stage 1 identically."""
    import pandas as pd

    written = pd.read_csv(out / "stage1_estimates.csv").set_index(["covariate", "feature"])
    python = namespace["stage1"].set_index(["covariate", "feature"])
    assert written.index.equals(python.index)
    pd.testing.assert_frame_equal(written, python, check_exact=False, rtol=1e-9)
    shrunk = pd.read_csv(out / "shrunken_effects.csv")
    assert set(shrunk["feature"]) == set(namespace["table"]["feature"])
    assert set(shrunk["covariate"]) == set(SHRUNK)


def listed_outputs(page: Path) -> list[str]:
    """The file names of the guide's table of the command's outputs."""
    return re.findall(r"^\| `([\w.]+)` \|", page.read_text(encoding="utf-8"), re.M)


@pytest.mark.filterwarnings("ignore::bayeshier_pymc.convergence.ConvergenceWarning")
def test_guide_runs(docs_folder, monkeypatch):
    cap_sampling(monkeypatch)
    namespace = run_page(GUIDE, docs_folder, cheap=True, languages={"python", "bash"})
    check_guide(namespace)
    check_python_equals_command(namespace, docs_folder / "qmdiab_results")
    written = {path.name for path in (docs_folder / "qmdiab_results").iterdir()}
    compared = {"depths.csv", "sampler_agreement.csv"}  # not written with --no-compare
    assert set(listed_outputs(GUIDE)) - compared <= written


@pytest.mark.filterwarnings("ignore::bayeshier_pymc.convergence.ConvergenceWarning")
def test_readme_commands_run(docs_folder):
    assert code_blocks(README)
    run_page(README, docs_folder, cheap=True, languages={"bash"})
    assert (docs_folder / "qmdiab_results" / "shrunken_effects.csv").is_file()


@pytest.mark.slow
def test_guide_and_readme_commands_run_as_written(docs_folder):
    namespace = run_page(GUIDE, docs_folder, cheap=False, languages={"python", "bash"})
    check_guide(namespace)
    check_python_equals_command(namespace, docs_folder / "qmdiab_results")
    written = {path.name for path in (docs_folder / "qmdiab_results").iterdir()}
    assert set(listed_outputs(GUIDE)) <= written
    run_page(README, docs_folder, cheap=False, languages={"bash"})


def test_faq_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run_page(FAQ, tmp_path, cheap=True, languages={"python"})
    assert namespace["deepest"].prefer == "deepest"


def test_block_extraction():
    """The extraction sees every block and every command (no data needed)."""
    languages = [language for language, _ in code_blocks(GUIDE)]
    assert languages.count("bash") == 2 and languages.count("python") >= 10
    commands = [argv for _, code in code_blocks(GUIDE) for argv in bayeshier_commands(code)]
    assert [argv[0] for argv in commands] == ["fit"]
    assert commands[0][commands[0].index("--formula") + 1] == "AGE + BMI + C(GENDER) + C(T2D)"
    assert listed_outputs(GUIDE)[:2] == ["stage1_estimates.csv", "shrunken_effects.csv"]


def test_api_reference_lists_every_public_name():
    """docs/api.rst names every name of the public API, directly or through its module."""
    import importlib

    import bayeshier_pymc as bh

    listed = set(re.findall(r"^   ([\w.]+)$", (ROOT / "docs" / "api.rst").read_text(), re.M))
    public = {name: getattr(bh, name) for name in bh.__all__ if name != "__version__"}
    for module in ("csv_inputs", "pipeline", "report", "cli", "plots", "psis"):
        loaded = importlib.import_module(f"bayeshier_pymc.{module}")
        public |= {f"{module}.{name}": getattr(loaded, name) for name in loaded.__all__}
    resolved = set()
    for entry in listed:
        head, _, tail = entry.partition(".")
        owner = importlib.import_module(f"bayeshier_pymc.{head}") if tail else bh
        resolved.add(id(getattr(owner, tail or head)))
    absent = [
        name
        for name, obj in public.items()
        if not isinstance(obj, ModuleType) and id(obj) not in resolved
    ]
    assert not absent, f"docs/api.rst lacks {absent}"
