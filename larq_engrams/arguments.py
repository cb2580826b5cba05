"""Checks of constructor and function arguments, with one wording for every module.

Each returns the value in its canonical type, or raises `ValueError` naming the
argument, what it must be, and what it got (`owner` prefixes the class or function).
"""
from collections.abc import Sequence

import numpy as np

__all__ = ["check_choice", "check_fraction", "check_int", "check_positive_int", "check_positive_ints",
           "check_setting"]


def _prefix(owner):
    return f"{owner}: " if owner else ""


def check_positive_int(name, value, owner=None, allow_none=False):
    """`value` as an int >= 1 (bools and floats are refused); None passes if `allow_none`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        also = " or None" if allow_none else ""
        raise ValueError(f"{_prefix(owner)}`{name}` must be a positive int{also}, got {value!r}.")
    return int(value)


def check_int(name, value, minimum, owner=None):
    """`value` as an int >= `minimum` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{_prefix(owner)}`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_fraction(name, value, owner=None):
    """`value` as a float in (0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{_prefix(owner)}`{name}` must be in (0, 1], got {value!r}.")
    return number


def check_positive_ints(name, values, owner=None):
    """A non-empty sequence of positive ints (an int alone counts as one) as a tuple."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"{_prefix(owner)}`{name}` must be a positive int or a non-empty sequence of them, "
                         f"got {values!r}.")
    try:
        return tuple(check_positive_int(name, v) for v in values)
    except ValueError:
        raise ValueError(f"{_prefix(owner)}`{name}` must hold positive ints only, got {values!r}.") from None


def check_choice(name, value, choices, owner=None):
    """`value` if it is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{_prefix(owner)}`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value


SETTINGS = ("class", "domain", "task")


def check_setting(setting, owner=None):
    """A continual-learning setting: "class", "domain" or "task" incremental."""
    return check_choice("setting", setting, SETTINGS, owner)
