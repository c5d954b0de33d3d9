"""Whole numbers from URLs, forms and JSON, checked before they reach SQLite or arithmetic.

SQLite integers are 64-bit: a larger id in a URL raised OverflowError (a 500). `str.isdigit`
accepts digits such as '²' that `int()` refuses, and JSON may carry floats, booleans or 1e999.
"""

from __future__ import annotations

from typing import Any

from werkzeug.routing import IntegerConverter, Map

MAX_ID = 2**63 - 1  # SQLite's largest integer


class BoundedInt(IntegerConverter):
    """`<int:...>` in routes, but only up to SQLite's largest integer (larger: 404)."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)


def whole_number(value: object, low: int = 0, high: int = MAX_ID) -> int | None:
    """`value` as an int within [low, high] when it is one (an int, or ASCII digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _digits(value.strip()):
        number = int(value.strip())
    else:
        return None
    return number if low <= number <= high else None


def _digits(text: str) -> bool:
    """ASCII digits, few enough for int() (it refuses over 4,300) and SQLite (19 at most)."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()
