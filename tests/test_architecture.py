"""The map in ARCHITECTURE.md stays true: every module listed, no import cycle, no upward import.

Imports are read from the source with :mod:`ast`, so that imports at module level, inside
functions (lazy) and under ``if TYPE_CHECKING:`` all count. ``from package import name``
depends on the submodule ``package.name`` when there is one, else on ``package`` itself.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bayeshier_pymc"
SOURCE = ROOT / PACKAGE
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
LAYER_HEADING = re.compile(r"^### Layer (\d+)\b")
MODULE_ROW = re.compile(r"^\| `([^`]+\.py)` \|")


def module_name(path: Path) -> str:
    """Dotted name of a source file of the package (``gibbs/__init__.py`` → ``…gibbs``)."""
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def listed_name(relative: str) -> str:
    """Dotted name of a module as ARCHITECTURE.md lists it (a path under the package)."""
    return module_name(SOURCE / relative)


def package_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that the file at ``path`` imports, wherever the import stands."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    found.discard(name)
    unknown = found - modules
    assert not unknown, f"{name} imports {sorted(unknown)}, which are not modules of the package"
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports."""
    modules = package_modules()
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def documented_layers() -> dict[str, int]:
    """Module → its layer in ARCHITECTURE.md (1 = lowest), failing on a module listed twice."""
    layers: dict[str, int] = {}
    layer = 0
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        heading = LAYER_HEADING.match(line)
        if heading:
            assert int(heading.group(1)) == layer + 1, f"layers out of order at {line!r}"
            layer += 1
            continue
        row = MODULE_ROW.match(line)
        if row:
            assert layer, f"{row.group(1)} is listed before the first layer heading"
            name = listed_name(row.group(1))
            assert name not in layers, f"{row.group(1)} is listed twice in ARCHITECTURE.md"
            layers[name] = layer
    return layers


def cyclic_sets(graph: dict[str, set[str]]) -> list[list[str]]:
    """The sets of modules that import each other, directly or not (sorted; Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest import path from the component's first module back to itself."""
    start, members = component[0], set(component)
    paths = {target: [start, target] for target in sorted(graph[start] & members)}
    frontier = list(paths)
    while start not in paths:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    return paths[start]


def test_every_module_is_listed_once_in_architecture_md():
    listed = set(documented_layers())
    modules = set(package_modules())
    assert not modules - listed, f"modules missing from ARCHITECTURE.md: {sorted(modules - listed)}"
    assert not listed - modules, f"ARCHITECTURE.md lists absent modules: {sorted(listed - modules)}"


def test_no_import_cycle():
    graph = import_graph()
    found = []
    for members in cyclic_sets(graph):
        inside = [f"{a} → {b}" for a in members for b in sorted(graph[a] & set(members))]
        cycle = " → ".join(cycle_through(members, graph))
        found.append(f"{cycle}\n  (all imports among {members}: {'; '.join(inside)})")
    assert not found, "import cycles (lazy and TYPE_CHECKING imports included):\n" + "\n".join(
        found
    )


def test_no_module_imports_a_higher_layer():
    layers = documented_layers()
    upward = [
        f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if module in layers and target in layers and layers[target] > layers[module]
    ]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_the_checks_see_lazy_typing_and_relative_imports(tmp_path, monkeypatch):
    """The reader of imports itself: imports in functions, under TYPE_CHECKING, relative."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from bayeshier_pymc import low\n")
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.high import H\n"
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "high.py").write_text(
        "def f():\n    import bayeshier_pymc.low\n    from .. import low\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SOURCE", package)
    graph = import_graph()
    assert graph == {
        PACKAGE: {f"{PACKAGE}.low"},
        f"{PACKAGE}.low": {f"{PACKAGE}.sub.high"},
        f"{PACKAGE}.sub": set(),
        f"{PACKAGE}.sub.high": {f"{PACKAGE}.low"},
    }
    members = [f"{PACKAGE}.low", f"{PACKAGE}.sub.high"]
    assert cyclic_sets(graph) == [members]
    assert cycle_through(members, graph) == [*members, members[0]]


def _fresh_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_public_submodules_resolve_after_importing_the_package_alone():
    """``bh.plots`` is imported on first use, not with the package; ``bh.gibbs`` resolves."""
    output = _fresh_python(
        "import sys\n"
        "import bayeshier_pymc as bh\n"
        "lazy = ('bayeshier_pymc.plots',)\n"
        "print(sorted(m for m in lazy if m in sys.modules))\n"
        "print(bh.plots.plot_shrinkage.__module__, bh.gibbs.run_engine.__module__)\n"
        "print('plots' in dir(bh))\n"
    )
    assert output.splitlines() == [
        "[]",
        "bayeshier_pymc.plots.shrinkage bayeshier_pymc.gibbs.engine",
        "True",
    ]


def test_other_attributes_still_raise():
    import bayeshier_pymc as bh

    with pytest.raises(AttributeError, match="not_a_module"):
        bh.not_a_module  # noqa: B018
