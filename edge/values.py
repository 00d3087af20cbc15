"""Checks of single values read from JSON or TOML files that users or other tools wrote."""

from __future__ import annotations

import math


def finite_number(value: object) -> bool:
    """A finite JSON number that fits a float64: not a bool (True is an int to Python), NaN, infinity
    or an integer beyond 1.8e308. JSON allows integers of any length, and `math.isfinite` raises
    OverflowError on one: a traceback naming neither the file nor the key."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


__all__ = ["finite_number"]
