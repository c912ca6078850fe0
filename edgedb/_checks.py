"""Argument checks shared by the public functions: one wording for every caller."""

from __future__ import annotations

import operator
import os

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


def path_text(name: str, value, what: str = "a path") -> str:
    """``value`` (a str or an os.PathLike of one) as text; anything else, bytes included
    (pathlib would fail on it with a bare TypeError), raises InvalidInputTypeError."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str):
        return text
    hint = "; decode it first" if isinstance(text, bytes) else ""
    raise InvalidInputTypeError(f"{name} must be {what} (str or os.PathLike), not {type(value).__name__} "
                                f"{value!r:.60}{hint}")


def integer_at_least(name: str, value, low: int) -> int:
    """``value`` as an int if it is one (not a bool) and at least ``low``; else
    InvalidInputError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, not {value!r}")
    return int(value)
