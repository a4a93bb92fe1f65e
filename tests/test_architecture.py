"""The package layering of docs/architecture.md: no upward imports, no import cycles."""

from __future__ import annotations

from tests.tools import load_tool


def test_no_package_imports_upward_or_sideways():
    graph = load_tool("import_graph")
    assert graph.violations(graph.module_graph()) == []


def test_no_import_cycles():
    graph = load_tool("import_graph")
    assert graph.cycles(graph.module_graph()) == []


def test_the_checker_sees_a_violation(tmp_path):
    """model importing parallel must be reported (so an empty list above means something)."""
    graph = load_tool("import_graph")
    fake = {"modtrain.model.x": {"modtrain.parallel.y"}, "modtrain.parallel.y": set()}
    assert graph.violations(fake) and graph.cycles({"a": {"b"}, "b": {"a"}})
