"""The shape of the code, as docs/architecture.md states it, checked on the source itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bpfree.models import MODELS
from bpfree.rules import RULES

SRC = Path(__file__).resolve().parents[1] / "src" / "bpfree"
MODULES = sorted(SRC.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # in engine/ and meters/
# The command layer defers its imports so `bpfree --help` answers without loading torch;
# nowhere else is a bpfree import inside a function (it would be hiding a cycle). Third-party
# imports may be deferred: optional extras (optuna, matplotlib) are imported where used.
COMMANDS = {SRC / "cli.py", SRC / "cli_compare.py", SRC / "cli_sweep.py"}
LAZY_IMPORTS_ALLOWED = COMMANDS


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [n for n in ast.walk(tree) if isinstance(n, kinds)]


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_module_over_400_lines(path: Path) -> None:
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines: split it by concept"


def test_no_function_in_engine_or_meters_over_60_lines() -> None:
    long = [
        f"{_rel(p)}:{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for p in MODULES
        if p.parent.name in ("engine", "meters")
        for f in _functions(_tree(p))
        if f.end_lineno is not None and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_meters_import_nothing_downstream() -> None:
    downstream = ("bpfree.engine", "bpfree.comparison", "bpfree.sweeps", "bpfree.reporting")
    bad = [
        f"{_rel(p)} imports {name}"
        for p in (SRC / "meters").glob("*.py")
        for name in _imports(_tree(p))
        if name.startswith(downstream) or name == "bpfree.cli"
    ]
    assert not bad, bad


def test_rules_import_the_base_and_the_toolkit_never_a_sibling() -> None:
    rules_dir = SRC / "rules"
    shared = {"bpfree.rules.base", "bpfree.rules.hparams"}
    bad = []
    for p in rules_dir.glob("*.py"):
        if p.stem in ("__init__", "base", "hparams"):
            continue
        for name in _imports(_tree(p)):
            sibling = name.startswith("bpfree.rules.") and not name.startswith(
                "bpfree.rules.toolkit"
            )
            if sibling and name not in shared:
                bad.append(f"{_rel(p)} imports {name}")
    assert not bad, bad


def test_no_import_hidden_inside_a_function() -> None:
    bad = []
    for p in MODULES:
        if p in LAZY_IMPORTS_ALLOWED:
            continue
        for f in _functions(_tree(p)):
            for name in _imports(f):
                if name == "bpfree" or name.startswith("bpfree."):
                    bad.append(f"{_rel(p)}:{f.name} imports {name}")
    assert not bad, bad


def _string_constants(path: Path) -> set[str]:
    tree = _tree(path)
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }


def test_the_command_line_and_comparisons_hard_code_no_registered_name() -> None:
    """Rule, model, family and dataset names come from the registries, never from literals."""
    from bpfree.data import DATASETS

    names = set(RULES.names()) | set(MODELS.names()) | set(DATASETS.names())
    names |= {f for _, cls in RULES.items() for f in cls.info.families}
    files = [*COMMANDS, *(SRC / "comparison").glob("*.py"), *(SRC / "sweeps").glob("*.py")]
    files += [*(SRC / "reporting").glob("*.py"), *(SRC / "engine").glob("*.py")]
    patterns = [p.regex for p in MODELS.patterns()]

    def registered(s: str) -> bool:
        return s in names or any(r.fullmatch(s) for r in patterns)

    bad = [f"{_rel(p)}: {s!r}" for p in files for s in _string_constants(p) if registered(s)]
    assert not bad, bad


def test_the_command_line_answers_without_loading_torch() -> None:
    code = "import sys, bpfree.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
