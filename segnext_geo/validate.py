"""Option value checks shared by the options objects: each error names the option (``--overlap``)."""

from __future__ import annotations

import operator
from typing import Any

from .errors import UserError

__all__ = ["as_bool", "as_choice", "as_int", "as_number"]


def as_int(value: Any, option: str, what: str) -> int:
    """``value`` as an int (a bool is refused)."""
    if isinstance(value, bool):
        raise UserError(f"{option}: {value!r} is not {what}")
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{option}: {value!r} is not {what}") from None


def as_number(value: Any, option: str, what: str) -> float:
    """``value`` as a float (a bool or ``None`` is refused)."""
    if isinstance(value, bool) or value is None:
        raise UserError(f"{option}: {value!r} is not {what}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{option}: {value!r} is not {what}") from None


def as_bool(value: Any, option: str) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise UserError(f"{option}: expected true or false, got {value!r}")
    return value


def as_choice(value: Any, allowed: tuple[str, ...], option: str) -> str:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise UserError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)
