"""User-facing text from one catalogue per language (`strings/<lang>/*.yaml`, one file per area),
so a translation is a copy of the folder. Templates call `t("area.key", name=...)`.

Which language a request gets: the signed-in user's own choice (users.language, set on the
account page), else the screen's (`ui.language`), which is also what the sign-in page and the
locked wall view show. Every catalogue is loaded once, when the app is made. A key missing
from a translation falls back to English (tests/test_web_i18n.py keeps the catalogues level).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, current_app, g, has_app_context, has_request_context

from appliance.store import preferences
from appliance.web.db import get_conn, get_settings

log = logging.getLogger(__name__)
STRINGS = Path(__file__).parent / "strings"
LANGUAGES = preferences.LANGUAGES
FALLBACK = "en"  # the catalogue every key is written in first
_CATALOGUES = "appliance.strings"  # app.extensions key: language -> catalogue


def load_catalogue(language: str = FALLBACK) -> dict[str, str]:
    """Every key of a language, as "area.key" -> text."""
    catalogue: dict[str, str] = {}
    for path in sorted((STRINGS / language).glob("*.yaml")):
        area = path.stem
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key, text in entries.items():
            catalogue[f"{area}.{key}"] = str(text)
    return catalogue


def init_app(app: Flask) -> None:
    app.extensions[_CATALOGUES] = {language: load_catalogue(language) for language in LANGUAGES}
    app.jinja_env.globals["t"] = t
    app.jinja_env.globals["current_language"] = current_language


def current_language() -> str:
    """The language of this request: the user's choice, else the screen's. Kept on `g` once
    the user is known (security.py loads g.user before any view runs)."""
    if not has_request_context():
        return get_settings().ui.language if has_app_context() else FALLBACK
    chosen = g.get("language")
    if isinstance(chosen, str):
        return chosen
    user = g.get("user")
    language = preferences.get_language(get_conn(), user.id) if user is not None else ""
    language = language or get_settings().ui.language
    if "user" in g:  # before the user is loaded the answer may still change
        g.language = language
    return language


def use_language(language: str) -> None:
    """Speak `language` for the rest of this request (a user who has just chosen it)."""
    g.language = language if language in LANGUAGES else get_settings().ui.language


def t(key: str, **values: Any) -> str:
    """The text for `key` in the request's language, formatted with `values`. A key missing
    from a translation falls back to English; one missing from English is an error under
    test and shows as the key itself (logged) on a device, rather than a broken page."""
    catalogues: dict[str, dict[str, str]] = current_app.extensions[_CATALOGUES]
    language = current_language()
    text = catalogues.get(language, {}).get(key) if language != FALLBACK else None
    if text is not None:
        try:
            return text.format(**values) if values else text
        except (KeyError, IndexError, ValueError):  # a translation behind a changed placeholder
            log.warning(
                "the %s text for %r does not fit its values: shown in English", language, key
            )
    elif language != FALLBACK:
        log.warning("no %s text for %r: shown in English", language, key)
    text = catalogues[FALLBACK].get(key)
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
