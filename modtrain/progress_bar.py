"""Progress bars (tqdm) for the long steps users wait on: data preparation, evaluation,
conversion. Shown on a terminal only; batch logs get their own plain lines or none."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable | None = None, *, desc: str, enabled: bool = True,
        **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr with rate and time left; a silent pass-through when `enabled`
    is false or stderr is not a terminal."""
    return tqdm(iterable, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=not (enabled and on_terminal()), **kwargs)
