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


SEED_LIMIT = 2**32  # numpy's and PyTorch's seeds: 0 .. 2**32 - 1


def seed_value(name: str, value) -> int:
    """``value`` as a seed numpy and PyTorch both take: an integer in 0 .. 2**32 - 1."""
    seed = integer_at_least(name, value, 0)
    if seed >= SEED_LIMIT:
        raise InvalidInputError(f"{name} must be at most {SEED_LIMIT - 1}, not {value!r}")
    return seed


def thread_count(name: str, value) -> int | None:
    """``value`` (None: all cores) as a thread count from 1 to this machine's cores: more
    only queue for the same cores, and thousands of them once stalled a 2-core machine."""
    if value is None:
        return None
    count = integer_at_least(name, value, 1)
    cores = os.cpu_count() or 1
    if count > cores:
        raise InvalidInputError(f"{name}={count} on a machine with {cores} cores: give at most {cores} "
                                "(None uses them all)")
    return count
