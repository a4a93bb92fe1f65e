"""The package layering of docs/architecture.md: no upward imports, no import cycles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools/import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_package_imports_upward_or_sideways():
    graph = _import_graph()
    assert graph.violations(graph.module_graph()) == []


def test_no_import_cycles():
    graph = _import_graph()
    assert graph.cycles(graph.module_graph()) == []


def test_the_checker_sees_a_violation(tmp_path):
    """model importing parallel must be reported (so an empty list above means something)."""
    graph = _import_graph()
    fake = {"modtrain.model.x": {"modtrain.parallel.y"}, "modtrain.parallel.y": set()}
    assert graph.violations(fake) and graph.cycles({"a": {"b"}, "b": {"a"}})
