"""Argument checks shared by the public API, with Keras-style error messages."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_sparsity(name: str, value: object) -> float:
    """Returns ``value`` as a float if it is a number in [0, 1), else raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Argument `{name}` must be a number in [0, 1). Received: {name}={value!r}")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"Argument `{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)


def check_int(name: str, value: object, minimum: int) -> int:
    """Returns ``value`` if it is an int >= ``minimum``, else raises."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Argument `{name}` must be an integer. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"Argument `{name}` must be >= {minimum}. Received: {name}={value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``choices``, else raises."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Argument `{name}` must be one of {options}. Received: {name}={value!r}")
    return value  # type: ignore[return-value]


def check_int_pair(name: str, value: object) -> tuple[int, int]:
    """Returns ``value`` as a tuple of two positive ints, else raises."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not ok:
        raise ValueError(
            f"Argument `{name}` must be a tuple of two positive integers. Received: {name}={value!r}"
        )
    return int(value[0]), int(value[1])
