"""How many tokens of a row a routed block takes: plain arithmetic, importable without torch
(the FLOP and cost formulas use it, and `modtrain plan` starts without torch)."""

from __future__ import annotations

import math


def tokens_per_row(capacity: float, seq_length: int) -> int:
    """k = ceil(capacity * S), fixed a priori so shapes and compute are static."""
    return max(1, min(seq_length, math.ceil(capacity * seq_length - 1e-9)))
