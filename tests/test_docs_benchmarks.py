"""The figures in the docs come from files that exist: included outputs and indexed scripts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BENCHMARKS = ROOT / "benchmarks"
OUTPUTS = DOCS / "benchmarks"

# MyST: ```{literalinclude} path   reStructuredText: .. literalinclude:: path
INCLUDE = re.compile(r"^(?:`{3,}\{literalinclude\}|\.\.\s+literalinclude::)\s*(\S+)", re.MULTILINE)


def doc_pages() -> list[Path]:
    """Every Markdown and reStructuredText page of the docs, outside the build folders."""
    pages = [*DOCS.rglob("*.md"), *DOCS.rglob("*.rst")]
    return sorted(page for page in pages if "_build" not in page.parts)


def literal_includes() -> list[tuple[Path, str]]:
    """Every ``literalinclude`` of the docs as (page, target as written)."""
    return [
        (page, match.group(1))
        for page in doc_pages()
        for match in INCLUDE.finditer(page.read_text(encoding="utf-8"))
    ]


def resolve(page: Path, target: str) -> Path:
    """The file a ``literalinclude`` names: relative to its page, or to docs/ when absolute."""
    if target.startswith("/"):
        return (DOCS / target.lstrip("/")).resolve()
    return (page.parent / target).resolve()


def test_the_pattern_finds_both_syntaxes() -> None:
    text = "```{literalinclude} benchmarks/a.txt\n:language: text\n```\n.. literalinclude:: b.txt\n"
    assert INCLUDE.findall(text) == ["benchmarks/a.txt", "b.txt"]


def test_the_docs_include_benchmark_outputs() -> None:
    assert any(resolve(page, target).parent == OUTPUTS for page, target in literal_includes())


@pytest.mark.parametrize(
    ("page", "target"),
    literal_includes(),
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_every_literalinclude_points_to_an_existing_file(page: Path, target: str) -> None:
    path = resolve(page, target)
    assert path.is_file(), f"{page.relative_to(ROOT)} includes {target}, which does not exist"
    assert path.stat().st_size > 0, f"{page.relative_to(ROOT)} includes {target}, which is empty"


def test_every_benchmark_output_is_included_by_a_page() -> None:
    included = {resolve(page, target) for page, target in literal_includes()}
    orphans = [
        path.name for path in sorted(OUTPUTS.glob("*.txt")) if path.resolve() not in included
    ]
    assert not orphans, f"docs/benchmarks/ holds outputs that no page includes: {orphans}"


def test_the_benchmarks_page_lists_every_script() -> None:
    index = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    missing = [
        script.name for script in sorted(BENCHMARKS.glob("*.py")) if f"`{script.name}`" not in index
    ]
    assert not missing, f"docs/benchmarks.md does not list {missing}"
