"""User-facing text from one catalogue per language (`strings/<lang>/*.yaml`, one file per area),
so a translation is a copy of the folder. Templates call `t("area.key", name=...)`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, current_app

log = logging.getLogger(__name__)
STRINGS = Path(__file__).parent / "strings"


def load_catalogue(language: str = "en") -> dict[str, str]:
    """Every key of a language, as "area.key" -> text."""
    catalogue: dict[str, str] = {}
    for path in sorted((STRINGS / language).glob("*.yaml")):
        area = path.stem
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key, text in entries.items():
            catalogue[f"{area}.{key}"] = str(text)
    return catalogue


def init_app(app: Flask) -> None:
    app.extensions["appliance.strings"] = load_catalogue()
    app.jinja_env.globals["t"] = t


def t(key: str, **values: Any) -> str:
    """The text for `key`, formatted with `values`. A missing key is an error under test and
    shows as the key itself (logged) on a device, rather than a broken page."""
    catalogue: dict[str, str] = current_app.extensions["appliance.strings"]
    text = catalogue.get(key)
    if text is None:
        if current_app.testing:
            raise KeyError(f"no text for {key!r} in the catalogue")
        log.error("no text for %r in the catalogue", key)
        return key
    return text.format(**values) if values else text


def error_text(exc: Exception, prefix: str) -> str:
    """A refusal for people: from the catalogue (`prefix` + its key) when the error names a
    key, else its message (already written for people, e.g. by a view)."""
    key = getattr(exc, "key", "")
    return t(prefix + key, **getattr(exc, "values", {})) if key else str(exc)
