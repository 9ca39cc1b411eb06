"""The Markdown report: numbers written so they can be compared, rates never shown as 0."""

from __future__ import annotations

import re

import pytest
from test_plots import _study_fit, exact_fit

from bayeshier_pymc import ShrinkageModel, coefficient_table, diagnose, scale_summary
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.report import write_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    fit, tree = _study_fit(2000)
    fits = {depth: exact_fit(2000, depth=depth) for depth in (1, 2)}
    idata = fits[2]
    coefficients = coefficient_table(idata)
    path = write_report(
        tmp_path_factory.mktemp("report") / "report.md",
        title="test",
        fit=fit,
        model=ShrinkageModel(fit, tree),
        coefficients=coefficients,
        scales=scale_summary(idata),
        samplers=None,
        depths=compare_fits(fits),
        diagnosis=diagnose(idata, var_names=["tau", "mu"]),
        figures=[],
    )
    return path.read_text(), coefficients, fits


def _rows(text, header):
    """The rows of the Markdown table whose header starts with ``header``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return lines[start].strip("|").split("|"), rows


def test_rates_below_one_over_s_read_as_such(report):
    text, coefficients, _ = report
    assert (coefficients["lfsr"] == 0).any()  # the top table has unresolved rates
    header, rows = _rows(text, "| covariate | feature |")
    columns = [h.strip() for h in header]
    lfsr = [row[columns.index("lfsr")] for row in rows]
    assert "<2.5e-03" in lfsr and "0" not in lfsr  # 2 chains × 200 draws: 1/S = 0.0025
    assert "with 400 draws a rate below 1/S shows as" in text


def test_elpds_keep_the_digits_that_separate_the_depths(report):
    text, _, _ = report
    assert not re.search(r"\de\+\d", text)  # no 1.7e+03
    header, rows = _rows(text, "| depth | model |")
    columns = [h.strip() for h in header]
    elpd = [row[columns.index("elpd_loo")] for row in rows]
    assert all(re.fullmatch(r"-?\d{4}\.\d", value) for value in elpd), elpd
    assert len(set(elpd)) == 2


def test_every_verdict_line_is_in_the_report(report):
    text, _, fits = report
    diagnosis = diagnose(fits[2], var_names=["tau", "mu"])
    warned = (diagnosis.table.status == "warn").any()
    status = "problems" if not diagnosis.ok else "ok, with warnings" if warned else "ok"
    assert f"**Diagnostics** ({status}):" in text
    for line in diagnosis.verdict.splitlines():
        assert f"- {line}" in text


def test_the_priors_are_a_table_of_their_own(report):
    text, coefficients, _ = report
    first = text.splitlines()[2]
    assert "features; ShrinkageModel(" in first and first.endswith(".")
    summary = ShrinkageModel(*_study_fit(2000)).summary_line  # the model the report was given
    assert f"features; {summary}. " in first
    assert "Priors" not in first  # the model's one-line summary, the priors below it
    _, rows = _rows(text, "| covariate | typical_se |")
    assert [row[0] for row in rows] == list(coefficients["covariate"].unique())
    assert "Priors: θ0 ~ N(mu0, s0²)" in text
