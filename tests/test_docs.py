"""The generated docs (configuration reference, error list, package table) match the code."""

from __future__ import annotations

from tests.tools import ROOT, load_tool


def test_configuration_reference_is_current():
    gen = load_tool("gen_docs")
    assert (ROOT / "docs/configuration.md").read_text() == gen.config_reference(), \
        "docs/configuration.md is stale: run python tools/gen_docs.py"


def test_architecture_package_table_is_current_and_lists_every_unit():
    gen = load_tool("gen_docs")
    text = (ROOT / "docs/architecture.md").read_text()
    assert text == gen.architecture_doc(), \
        "docs/architecture.md's package table is stale: run python tools/gen_docs.py"
    graph = load_tool("import_graph")
    units = {graph.unit(m) for m in graph.module_graph()} - {graph.PACKAGE}
    assert units <= set(graph.JOBS), f"units without a layer and job: {units - set(graph.JOBS)}"
    for name in units:
        assert f"`{name.replace('.', '/')}" in gen.package_table()


def test_error_list_is_current_and_complete():
    gen = load_tool("gen_docs")
    assert (ROOT / "docs/errors.md").read_text() == gen.errors_reference(), \
        "docs/errors.md is stale: run python tools/gen_docs.py"
    # Sanity: messages known to exist are collected.
    messages = [m for _, m in gen.error_messages()]
    assert any("unknown config key" in m for m in messages)
    assert len(messages) > 50


def test_every_config_key_is_documented():
    gen = load_tool("gen_docs")
    undocumented = [line.split("|")[1].strip() for line in gen.config_reference().splitlines()
                    if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert undocumented == [], f"add a comment beside these keys in schema.py: {undocumented}"
