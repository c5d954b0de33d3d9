"""The one shape of a value the store will not take, whatever the table."""

from __future__ import annotations


class Refused(ValueError):
    """A value the store cannot accept; the message says why in words for logs, `key` and
    `values` let the UI say it from its strings catalogue (in the user's language)."""

    def __init__(self, message: str, key: str = "", **values: object) -> None:
        super().__init__(message)
        self.key = key
        self.values = values
