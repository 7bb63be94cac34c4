"""diffshot's import graph has layers: no import from a lower layer to a higher one, and no cycle.

The graph is read from the source (``ast`` over ``diffshot/**.py``): every ``import`` and ``from … import``
anywhere in a file (inside functions too), and every string naming a diffshot module (what
``importlib.import_module`` and the lazy public API import). docs/design.md explains the order.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffshot"

# A unit is a top-level module (diffshot/x.py) or a package (diffshot/x/); each sits on one layer. A unit
# imports only from layers strictly below its own.
# The package's own ``__init__`` (unit ``diffshot``) is at the bottom: it defines ``__version__`` and imports no
# diffshot module when loaded; the public API it names by string is imported on first use, so those names are no
# edges (test_the_package_imports_nothing_when_loaded checks it).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("diffshot", "errors", "lazy", "interrupt"),
    ("atomic", "fingerprint", "device", "stats", "calibration"),
    ("features",),
    ("episodes",),
    ("ops",),
    ("task",),
    ("methods",),
    ("results",),
    ("run", "extract", "synth"),
    ("report",),
    ("plot",),
    ("cli", "sklearn"),
    ("entry",),
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MODULE_NAME = re.compile(r"^diffshot(\.\w+)+$")


def module_of(path: Path) -> str:
    """The dotted name of a source file (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of a module: ``diffshot.run.batch`` → ``run``, ``diffshot`` → ``diffshot``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


MODULES = {module_of(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The longest prefix of ``name`` that is a diffshot module (``from a.b import c`` may name an attribute)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, by_name: bool = True) -> Iterator[str]:
    """Every diffshot module that ``module`` imports, statically or (``by_name``) named by a string."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        elif (
            by_name and isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value)
        ):
            names = [node.value]
        for name in names:
            target = resolve(name) if name.startswith("diffshot") else None
            if target is not None and target != module:
                yield target


GRAPH = {module: sorted(set(imports_of(module, by_name=module != "diffshot"))) for module in MODULES}


def test_the_graph_is_read() -> None:
    """The reader finds real edges (a broken reader would pass every other test here)."""
    assert "diffshot.errors" in GRAPH["diffshot.atomic"]
    assert "diffshot.methods" in GRAPH["diffshot.run.evaluate"]
    assert "diffshot.cli" in GRAPH["diffshot.entry"]


def test_the_package_imports_nothing_when_loaded() -> None:
    """``import diffshot`` loads no other diffshot module: the public API is imported on first use."""
    assert GRAPH["diffshot"] == []
    assert "diffshot.run.evaluate" in set(imports_of("diffshot"))  # named by string, for first use


def test_every_unit_has_a_layer() -> None:
    """A new top-level module or package must be given its place in LAYERS (and in docs/design.md)."""
    unplaced = sorted({unit_of(module) for module in MODULES} - set(RANK))
    assert not unplaced, f"units with no layer: {unplaced}"


def test_no_import_goes_up_or_sideways() -> None:
    """Every import between units goes to a strictly lower layer."""
    wrong = [
        f"{module} -> {target} ({unit_of(module)} is layer {RANK[unit_of(module)]}, "
        f"{unit_of(target)} is layer {RANK[unit_of(target)]})"
        for module, targets in GRAPH.items()
        for target in targets
        if unit_of(module) != unit_of(target)
        and RANK.get(unit_of(target), -1) >= RANK.get(unit_of(module), len(LAYERS))
    ]
    assert not wrong, "imports that do not go down a layer:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_cli_does_not_reach_into_ops() -> None:
    """A command parses, calls the library and renders: nothing under cli/ imports the tensor operations."""
    wrong = [
        f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if unit_of(m) == "cli" and unit_of(t) == "ops"
    ]
    assert not wrong, "the CLI imports ops/: " + ", ".join(wrong)


def test_find_cycle_finds_one() -> None:
    """The cycle finder is not vacuous."""
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_no_cycle_between_units() -> None:
    """The graph of units (top-level modules and packages) has no cycle."""
    units: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        units.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    cycle = find_cycle({unit: sorted(targets) for unit, targets in units.items()})
    assert cycle is None, "import cycle between units: " + " -> ".join(cycle or [])


def test_no_cycle_between_modules() -> None:
    """No two modules import each other, directly or around a loop (a package's ``__init__`` aside, which
    re-exports its modules)."""
    graph = {
        module: [t for t in targets if MODULES[t].name != "__init__.py"]
        for module, targets in GRAPH.items()
        if MODULES[module].name != "__init__.py"
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])
