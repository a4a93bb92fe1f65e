"""The calibration file `modtrain plan --calibration` reads (benchmarks/calibrate.py writes it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from modtrain.errors import ModtrainError

FORMAT = "modtrain-calibration/1"


def load_achieved_flops(path: str | Path) -> float:
    """Achieved training FLOP/s of one device, measured on real steps (plain JSON, nothing
    in it runs)."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as e:
        raise ModtrainError(f"--calibration {path}: cannot read it ({e.strerror}); write one "
                            "with benchmarks/calibrate.py --out FILE") from None
    except ValueError:
        raise ModtrainError(f"--calibration {path} is not JSON; write one with "
                            "benchmarks/calibrate.py --out FILE") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModtrainError(f"--calibration {path} is not a {FORMAT} file; write one with "
                            "benchmarks/calibrate.py --out FILE")
    value = record.get("achieved_flops_per_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ModtrainError(f"--calibration {path}: achieved_flops_per_s is {value!r}, not a "
                            "positive number; measure it again with benchmarks/calibrate.py")
    return float(value)
