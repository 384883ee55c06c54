"""The package's shape: imports run one way (no cycle), modules and functions stay small, no path to ../shared.

    python -m pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "peft_gpt2"
MODULES = {
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
}


def imports(path: Path) -> set[str]:
    """Every package module ``path`` imports, at the top or inside a function (a lazy import is still an edge)."""
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


def test_imports_run_one_way():
    edges = {m: imports(p) - {m} for m, p in MODULES.items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_training_never_imports_the_serving_runtime():
    edges = {m: imports(p) - {m} for m, p in MODULES.items()}
    seen, todo = set(), ["peft_gpt2.train"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += edges[module]
    assert not seen & {"peft_gpt2.adapter_set", "peft_gpt2.server", "peft_gpt2.batching", "peft_gpt2.chat"}


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


def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh interpreter: an import-order dependency shows up here."""
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    names = [n for n in sorted(MODULES) if not n.endswith("__main__")]  # __main__ runs the CLI
    running = {n: subprocess.Popen([sys.executable, "-c", code, n], stderr=subprocess.PIPE, text=True) for n in names}
    failed = {n: p.communicate(timeout=300)[1][-2000:] for n, p in running.items()}
    assert not {n: err for n, err in failed.items() if running[n].returncode != 0}


def test_nothing_a_user_reads_points_at_shared():
    places = [REPO / "README.md", *PACKAGE.rglob("*.py"), *(REPO / "recipes").rglob("*")]
    places += (REPO / "reports").rglob("*")
    hits = [str(p.relative_to(REPO)) for p in places if p.is_file() and b"shared/" in p.read_bytes()]
    assert not hits
