"""The Examples sections of the main entry points run and print what they show."""

from __future__ import annotations

import doctest

import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.pipeline import run_pipeline

EXAMPLES = {
    "preprocess": bh.preprocess.preprocess,
    "mlm": bh.mlm,
    "ShrinkageModel": bh.ShrinkageModel,
    "ShrinkageModel.sample": bh.ShrinkageModel.sample,
    "coefficient_table": bh.coefficient_table,
    "compare_depths": bh.compare_depths,
    "run_pipeline": run_pipeline,
}


@pytest.mark.filterwarnings("ignore::bayeshier_pymc.convergence.ConvergenceWarning")
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_examples_section_runs(name: str) -> None:
    (test,) = doctest.DocTestFinder(recurse=False).find(EXAMPLES[name], name)
    assert test.examples, f"{name} has no Examples section"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (output above)"
