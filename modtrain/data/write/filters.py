"""--filter: a tiny parser of 'COLUMN OP VALUE' and the test it makes of a record's value."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modtrain.errors import ModtrainError

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
    ">": operator.gt, "<": operator.lt,
}
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Filter:
    """`column OP value`: keep the rows where it holds (a row without the value is dropped)."""

    column: str
    op: str
    value: str | float

    def keep(self, values: list[Any]) -> list[bool]:
        test = _OPS[self.op]
        out = []
        for v in values:
            if v is None:
                out.append(False)
            elif isinstance(self.value, float) and not isinstance(v, bool):
                out.append(isinstance(v, int | float) and test(v, self.value))
            else:
                out.append(test(str(v), str(self.value)))
        return out


def parse_filter(text: str | None) -> Filter | None:
    """'lang==en', 'score>=3.5', "name!='a b'" -> Filter; no code is ever evaluated."""
    if not text:
        return None
    m = _FILTER.match(text)
    if not m or not m.group(3):
        raise ModtrainError(f"--filter {text!r} is not COLUMN OP VALUE; write e.g. 'lang==en' "
                            "or 'score>=3.5' (OP one of == != >= <= > <)")
    column, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return Filter(column, op, raw[1:-1])  # quoted: always a string
    try:
        return Filter(column, op, float(raw))
    except ValueError:
        if op not in ("==", "!="):
            raise ModtrainError(f"--filter {text!r} compares with {op} a value that is not a "
                                "number; use == or != for strings") from None
        return Filter(column, op, raw)
