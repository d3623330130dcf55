"""Validation callbacks for numeric options that typer's ``min=``/``max=`` cannot express.

Integer bounds use ``typer.Option(..., min=1)``; these cover open intervals on floats. A bad value
becomes a usage error: one line on stderr and exit code 2, before any work starts.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import typer


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[Optional[float]], Optional[float]]:
    """A typer callback accepting finite floats in [lo, hi] (``lo_open``/``hi_open``: exclusive ends)."""
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    shown = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"

    def check(value: Optional[float]) -> Optional[float]:
        if value is None:
            return value
        bad = not math.isfinite(value)
        if lo is not None:
            bad |= value < lo or (lo_open and value == lo)
        if hi is not None:
            bad |= value > hi or (hi_open and value == hi)
        if bad:
            raise typer.BadParameter(f"{value:g} is not in {shown}")
        return value

    return check


POSITIVE = float_range(0.0, lo_open=True)
NON_NEGATIVE = float_range(0.0)
PROBABILITY = float_range(0.0, 1.0)
OPEN_UNIT = float_range(0.0, 1.0, lo_open=True, hi_open=True)
HALF_OPEN_UNIT = float_range(0.0, 1.0, hi_open=True)

# One wording for every command's --device.
DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: CUDA when available, else CPU)."
