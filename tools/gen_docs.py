"""Generate the docs that are read from the code: the configuration reference and the
list of every `modtrain: error:` message.

    python tools/gen_docs.py           # rewrite docs/configuration.md, docs/errors.md
    python tools/gen_docs.py --check   # exit 1 when either is stale (run by the tests)

The configuration reference comes from the dataclasses in modtrain/config/schema.py: each
key's type, default and the comment written beside or above it. The error list comes from
every `ModtrainError(...)` raised in modtrain/: the message as written, with `{...}` where
a value is filled in, and the module that raises it. Both are read with `ast` and
`tokenize` (nothing is imported).
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "modtrain/config/schema.py"
CONFIG_DOC = ROOT / "docs/configuration.md"
ERRORS_DOC = ROOT / "docs/errors.md"
ROOT_CLASS = "Config"


def _comments(source: str) -> dict[int, tuple[bool, str]]:
    """line -> (whether the comment is the whole line, its text)."""
    return {tok.start[0]: (tok.line.strip().startswith("#"), tok.string.lstrip("#").strip())
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _field_doc(node: ast.AnnAssign, comments: dict[int, tuple[bool, str]]) -> str:
    """The whole-line comments right above a field, then the one on its own line."""
    above = []
    line = node.lineno - 1
    while line in comments and comments[line][0]:
        above.insert(0, comments[line][1])
        line -= 1
    whole, inline = comments.get(node.lineno, (True, ""))
    return " ".join([*above, "" if whole else inline]).strip()


def _classes(source: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}


def _default(node: ast.AnnAssign, source: str) -> str:
    if node.value is None:
        return ""
    text = ast.get_source_segment(source, node.value)
    if isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "field":
        for kw in node.value.keywords:
            if kw.arg == "default_factory":
                factory = ast.unparse(kw.value)
                return {"list": "[]", "dict": "{}"}.get(factory, "")
    return text


def config_reference() -> str:
    source = SCHEMA.read_text()
    classes, comments = _classes(source), _comments(source)
    lines = ["# Configuration reference", "",
             "Generated from `modtrain/config/schema.py` by `python tools/gen_docs.py`; a test",
             "fails when it is stale. Set keys in the YAML file or override them on the command",
             "line with dotted names (`modtrain train CONFIG.yaml train.steps=200`).", ""]

    def section(cls_name: str, prefix: str) -> None:
        cls = classes[cls_name]
        doc = ast.get_docstring(cls)
        lines.extend([f"## `{prefix}`", ""])
        if doc:
            lines.extend([doc.splitlines()[0], ""])
        lines.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
        nested = []
        for node in cls.body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            name, kind = node.target.id, ast.unparse(node.annotation)
            if kind in classes:
                nested.append((kind, f"{prefix}.{name}"))
                continue
            meaning = _field_doc(node, comments).replace("|", "\\|")
            default = _default(node, source).replace("|", "\\|")
            lines.append(f"| `{prefix}.{name}` | `{kind.replace('|', 'or')}` | `{default}` | "
                         f"{meaning} |")
        lines.append("")
        for kind, path in nested:
            section(kind, path)

    for node in classes[ROOT_CLASS].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            section(ast.unparse(node.annotation), node.target.id)
    return "\n".join(lines).rstrip() + "\n"


def _message(node: ast.expr) -> str | None:
    """The literal text of a message expression, `{...}` for every filled-in value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{...}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _message(node.left), _message(node.right)
        return None if left is None or right is None else left + right
    return "{...}"


def error_messages() -> list[tuple[str, str]]:
    """(module, message) of every ModtrainError raised in the package, sorted."""
    found = set()
    for path in sorted((ROOT / "modtrain").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("ModtrainError")
                    and node.args):
                text = _message(node.args[0])
                if text:
                    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                    found.add((module, " ".join(text.split())))
    return sorted(found)


def errors_reference() -> str:
    lines = ["# Error messages", "",
             "Every error a user can cause ends the command with one line, `modtrain: error: "
             "MESSAGE`,", "naming the problem and the fix; nothing already written is lost. "
             "This list is generated", "from the code by `python tools/gen_docs.py` (a test "
             "fails when it is stale); `{...}`", "stands for a value filled in at run time "
             "(a path, a number, a key).", ""]
    current = None
    for module, message in error_messages():
        if module != current:
            lines.extend(["", f"## `{module}`", ""])
            current = module
        escaped = message.replace("|", "\\|")
        lines.append(f"- {escaped}")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a doc is stale")
    args = parser.parse_args()
    stale = []
    for path, text in ((CONFIG_DOC, config_reference()), (ERRORS_DOC, errors_reference())):
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}; run python tools/gen_docs.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
