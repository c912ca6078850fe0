"""Argument checks shared by the public functions: one wording for every caller."""

from __future__ import annotations

import operator

import numpy as np

from edgedb.errors import InvalidInputError, InvalidInputTypeError


def as_integer(name: str, value) -> int:
    """``value`` as an int; bool and non-integers raise InvalidInputTypeError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInputTypeError(f"{name} must be an integer, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidInputTypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def integer_at_least(name: str, value, low: int) -> int:
    """``value`` as an int if it is one (not a bool) and at least ``low``; else
    InvalidInputError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, not {value!r}")
    return int(value)
