"""The package's shape: stages are packages, and each imports only from the stages below it; modules and functions
stay small; nothing a user reads points at ../shared. All by reading the source (AST), no interpreter per module.

    python -m pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "peft_gpt2"
MODULES = {
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
}
# Each stage's rank: a package imports only from lower ranks (equal ranks never import each other). Training sits
# above evaluation and reporting because a run ends by scoring itself and drawing its loss; evaluation never imports
# training: the two meet in the run folder.
RANKS = {
    "errors": 0,
    "models": 1,
    "data": 1,
    "run_folder": 2,
    "inference": 2,
    "config": 3,
    "adapters": 3,
    "evaluation": 4,
    "reporting": 5,
    "training": 6,
    "serving": 6,
    "cli": 7,
    "__main__": 8,
}


def stage(module: str) -> str:
    """The stage a module belongs to: its package (``peft_gpt2.data.sources`` -> ``data``) or root module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """Every package module ``path`` imports, at the top, inside a function or for type checking only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != "peft_gpt2"}
    return found


EDGES = {m: imports(p) - {m} for m, p in MODULES.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if not state.get(nxt) and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if not state.get(start) and (cycle := visit(start, [])):
            return cycle
    return None


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go up or sideways between stages; the package's ``__init__`` (the public API) may import any."""
    wrong = []
    for module, targets in sorted(edges.items()):
        here = stage(module)
        for target in sorted(targets):
            there = stage(target)
            if here != "__init__" and there != here and RANKS[there] >= RANKS[here]:
                wrong.append(f"{module} -> {target} ({here} rank {RANKS[here]}, {there} rank {RANKS[there]})")
    return wrong


def test_every_stage_has_a_rank():
    assert {stage(m) for m in MODULES} - {"__init__"} == set(RANKS)


def test_stages_import_only_from_the_stages_below():
    assert upward(EDGES) == []
    assert find_cycle(EDGES) is None, " -> ".join(find_cycle(EDGES))


def test_the_checks_find_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert upward({"peft_gpt2.data.sources": {"peft_gpt2.training.train"}})  # up
    assert upward({"peft_gpt2.data.sources": {"peft_gpt2.models.loading"}})  # sideways
    assert not upward({"peft_gpt2.training.train": {"peft_gpt2.data.sources", "peft_gpt2.training.trainer"}})


def test_training_never_imports_the_serving_runtime():
    seen, todo = set(), [m for m in MODULES if stage(m) == "training"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += EDGES[module]
    assert not {stage(m) for m in seen} & {"serving", "cli", "adapters"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= 340, f"{name}: {lines} lines; split it along a seam a reader would name"


def test_functions_are_short():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 70:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long


def test_every_module_imports():
    """Every module imports (one that no test reaches shows here); the AST cycle check above covers what one
    interpreter per module used to (an import-order dependency is a cycle)."""
    import importlib

    for name in sorted(MODULES):
        if not name.endswith("__main__"):  # __main__ runs the CLI
            importlib.import_module(name)


def test_nothing_a_user_reads_points_at_shared():
    places = [REPO / "README.md", *PACKAGE.rglob("*.py"), *(REPO / "recipes").rglob("*")]
    places += (REPO / "reports").rglob("*")
    hits = [str(p.relative_to(REPO)) for p in places if p.is_file() and b"shared/" in p.read_bytes()]
    assert not hits
