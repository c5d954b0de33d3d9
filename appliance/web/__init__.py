"""The touchscreen web UI: a Flask application factory with one blueprint per area.

It reads and writes the store only (DESIGN.md): no runtime, capture or DICOM networking here.
Every view needs a signed-in user unless marked `@public`; admin views need the admin role.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flask import Flask

from appliance.config import Settings
from appliance.paths import Paths, resolve_paths
from appliance.store import Store, kv, open_store, users
from appliance.web import (
    admin,
    auth,
    export,
    health,
    i18n,
    imports,
    live,
    security,
    sending,
    study,
    worklist,
)
from appliance.web.db import SETTINGS, STORE, store_of
from appliance.web.params import BoundedInt

__all__ = ["TEMPLATES", "create_app", "store_of"]

_SIGNING_KEY_ROW = "ui_secret"  # the kv row that holds the cookie signing key


def create_app(settings: Settings, paths: Paths | None = None, **overrides: Any) -> Flask:
    """The UI for the store these settings point at; `overrides` go into app.config."""
    app = Flask(__name__)
    store = open_store(settings, paths or resolve_paths(settings))
    app.extensions[STORE] = store
    app.extensions[SETTINGS] = settings
    app.extensions["appliance.unknown_names"] = users.UnknownNames()
    app.config.update(
        SECRET_KEY=_secret_key(store),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.ui.behind_tls,
        SESSION_COOKIE_NAME="appliance_session",
        MAX_CONTENT_LENGTH=settings.ui.upload_max_mb * 2**20,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.config.update(overrides)
    app.url_map.converters["int"] = BoundedInt  # ids past SQLite's integers: 404, not 500
    i18n.init_app(app)
    security.init_app(app)
    areas = (
        auth.bp,
        health.bp,
        worklist.bp,
        study.bp,
        sending.bp,
        export.bp,
        imports.bp,
        admin.bp,
        live.bp,
    )
    for blueprint in areas:
        app.register_blueprint(blueprint)
    return app


def _secret_key(store: Store) -> str:
    """The key that signs session cookies: made on first start, kept in the store, so
    sessions survive a restart of the UI role."""
    return kv.get_or_set(store.conn, _SIGNING_KEY_ROW, lambda: secrets.token_hex(32))


TEMPLATES = Path(__file__).parent / "templates"
