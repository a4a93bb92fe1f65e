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


COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
               "broadcast", "broadcast_object_list", "barrier", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather",
               "gather_object", "scatter", "send", "recv", "isend", "irecv"}


def direct_collective_calls(source: str) -> list[str]:
    """`dist.all_reduce(...)`, `torch.distributed.barrier()`: collectives called directly."""
    import ast

    calls = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in COLLECTIVES):
            owner = ast.unparse(node.func.value)
            if owner in ("dist", "torch.distributed", "distributed"):
                calls.append(f"{owner}.{node.func.attr} (line {node.lineno})")
    return calls


def test_only_the_collectives_module_calls_collectives_in_train_and_parallel():
    """Tensors handed to NCCL must be on the GPU: one module builds them (on the topology's
    device); elsewhere in train/, parallel/ and checkpoint/ a direct call would bypass it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "modtrain"
    found = {}
    for package in ("train", "parallel", "checkpoint"):
        for path in sorted((root / package).rglob("*.py")):
            if path.name != "collectives.py":
                calls = direct_collective_calls(path.read_text())
                if calls:
                    found[str(path.relative_to(root))] = calls
    assert found == {}


def test_the_collective_check_sees_a_direct_call():
    src = "import torch.distributed as dist\ndist.all_reduce(t)\ntorch.distributed.barrier()\n"
    assert direct_collective_calls(src) == ["dist.all_reduce (line 2)",
                                            "torch.distributed.barrier (line 3)"]
