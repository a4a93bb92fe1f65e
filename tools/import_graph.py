"""Print modtrain's import graph by package, its import cycles and any upward imports.

    python tools/import_graph.py            # edges between packages, cycles, violations
    python tools/import_graph.py --modules  # edges between modules
    python tools/import_graph.py --dot      # Graphviz source of the package graph

Reads the source with `ast` (nothing is imported or run). Imports inside functions count:
a lazy import is still a dependency. Exit status 1 when a layer rule is broken or a cycle
exists, so the same check runs in the tests.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "modtrain"

# Lower numbers sit lower: a unit may import only from its own unit or a lower layer.
# Units are top-level packages/modules of modtrain, or data's and checkpoint's sub-packages
# and modules (SPLIT). Each has one
# job (docs/architecture.md's package table is generated from these two tables).
LAYERS: dict[str, int] = {
    "errors": 0,
    "log": 0,
    "config": 1,
    "run_dir": 1,
    "checkpoint": 1,
    "checkpoint.format": 1,
    "launcher": 1,
    "progress_bar": 1,
    "resources": 1,
    "model": 2,
    "checkpoint.files": 2,
    "checkpoint.tags": 2,
    "data.format": 2,
    "data.tokenizer": 2,
    "data.read": 3,
    "checkpoint.read": 3,
    "data.write": 3,
    "data": 4,
    "parallel": 5,
    "checkpoint.engine": 6,
    "inference": 6,
    "train": 7,
    "cluster": 7,
    "report": 8,
    "cli": 9,
    "__main__": 10,
}
SPLIT = ("data", "checkpoint")  # packages whose sub-packages and modules are units
JOBS: dict[str, str] = {
    "errors": "the one error type a user sees (`modtrain: error: ...`): `ModtrainError`",
    "log": "messages on stderr, once per job (rank 0) or from every rank for errors",
    "config": "YAML -> typed, validated dataclasses and overrides: `Config` and its sections",
    "run_dir": "the run directory's layout: `config.yaml`, `metrics.jsonl`, TensorBoard and "
               "Slurm logs, moving a run aside",
    "checkpoint": "the checkpoint package: the units below",
    "checkpoint.format": "the checkpoint format, the contract between writer and readers: the "
                         "tag layout, file names, tag names, `CheckpointState` (modtrain.json "
                         "as a typed, versioned dataclass)",
    "checkpoint.files": "what checkpoint files may unpickle (an allow-list) and their checksums",
    "checkpoint.tags": "a checkpoint directory's tags: the complete ones, `latest`, the order "
                       "resume and convert try them in, a tag's state",
    "checkpoint.read": "a checkpoint read without DeepSpeed: full fp32 weights (ZeRO merge, "
                       "tensor-parallel shards), every file loaded weights-only",
    "checkpoint.engine": "checkpoints through the DeepSpeed engine: atomic save, load, resume "
                         "plans, universal copies for another layout",
    "launcher": "who launched us (torchrun, deepspeed, Slurm, Open MPI, MPICH): rank, world, "
                "master address",
    "progress_bar": "tqdm bars for the long steps users wait on, on a terminal only",
    "resources": "files shipped in the package: tinyshakespeare, lm-eval task files",
    "model": "the network with no process-group code of its own: `GPT`, blocks, the MoD "
             "router, experts, document masks, RoPE, FLOP and cost formulas, **the parameter "
             "table** (`param_table.py`)",
    "data.format": "the token-store format, the contract between writer and reader",
    "data.tokenizer": "SentencePiece training and loading",
    "data.write": "corpora -> tokens -> a sharded zarr store (local processes or MPI ranks): "
                  "one registered reader per input format",
    "data.read": "a store -> the batches training reads (blends, schedules, validation "
                 "windows) and the checks `inspect --verify` runs",
    "data": "`modtrain data ...` and `modtrain tokenizer ...` over both sides",
    "parallel": "how processes are arranged: `Topology`, DeepSpeed's `mpu`, pipeline stages, "
                "the collectives on training metadata",
    "train": "the training loop and what it writes: DeepSpeed engine, step runners, hooks, "
             "schedules, signals",
    "inference": "a checkpoint -> an export -> samples and evaluations, on plain torch",
    "cluster": "Slurm job scripts and their submission: `modtrain submit`, `modtrain status`",
    "report": "what users look at, read from what train and inference wrote: curves, routing "
              "pictures, `inspect`, `plan`",
    "cli": "the `modtrain` command: gathers each package's sub-commands",
    "__main__": "`python -m modtrain`",
}
# Pairs the layers alone would allow but the design rules out: inference runs on plain
# torch and safetensors, without megatron-core or DeepSpeed (which `parallel` wraps).
FORBIDDEN: set[tuple[str, str]] = {("inference", "parallel"), ("inference", "checkpoint.engine"),
                                   ("report", "checkpoint.engine")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer unit a module belongs to (data and checkpoint split into their parts)."""
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE
    if parts[0] in SPLIT and len(parts) > 1:
        sub = f"{parts[0]}.{parts[1]}"
        if sub in LAYERS:
            return sub
    return parts[0]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """modtrain modules imported by one file (`from a import b` counts a.b if b is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a import b`: the module a.b when b is one, else (a name in) module a.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.add(name)
    return found


def module_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        deps = imports_of(path, modules)
        # Importing a.b.c also runs a/__init__ and a.b/__init__; only count what is named.
        graph[name] = {d for d in deps if d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_edges(graph: dict[str, set[str]]) -> Counter[tuple[str, str]]:
    edges: Counter[tuple[str, str]] = Counter()
    for src, deps in graph.items():
        for dst in deps:
            a, b = unit(src), unit(dst)
            if a != b and PACKAGE not in (a, b):
                edges[(a, b)] += 1
    return edges


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a unit to one on its own layer or above (other than itself)."""
    found = []
    for src, deps in sorted(graph.items()):
        for dst in sorted(deps):
            a, b = unit(src), unit(dst)
            if a == b or PACKAGE in (a, b):
                continue
            if a not in LAYERS or b not in LAYERS:
                found.append(f"{src} -> {dst}: unit {a if a not in LAYERS else b} has no layer")
            elif LAYERS[b] >= LAYERS[a] or (a, b) in FORBIDDEN:
                found.append(f"{src} -> {dst} ({a} may not import {b})")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="module-level edges")
    parser.add_argument("--dot", action="store_true", help="Graphviz source of the packages")
    args = parser.parse_args()
    graph = module_graph()
    if args.dot:
        print("digraph modtrain {\n  rankdir=BT;")
        for (a, b), n in sorted(package_edges(graph).items()):
            print(f'  "{a}" -> "{b}" [label={n}];')
        print("}")
        return 0
    if args.modules:
        for src in sorted(graph):
            for dst in sorted(graph[src]):
                print(f"{src} -> {dst}")
    else:
        print("package edges (imports between them):")
        for (a, b), n in sorted(package_edges(graph).items()):
            print(f"  {a:>16} -> {b:<16} {n}")
    found_cycles = cycles(graph)
    found_violations = violations(graph)
    print(f"import cycles: {len(found_cycles)}")
    for comp in found_cycles:
        print("  " + " <-> ".join(comp))
    print(f"upward or sideways imports: {len(found_violations)}")
    for line in found_violations:
        print("  " + line)
    return 1 if found_cycles or found_violations else 0


if __name__ == "__main__":
    sys.exit(main())
