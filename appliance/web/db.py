"""The store and settings of the app serving the current request (as the Flask tutorial's
`get_db`): blueprints reach the store only through here, never through the app factory, so
the factory imports the blueprints and nothing imports it back."""

from __future__ import annotations

import sqlite3

from flask import Flask, current_app, g

from appliance.config import Settings
from appliance.store import Store

STORE = "appliance.store"  # app.extensions keys, set by create_app
SETTINGS = "appliance.settings"


def store_of(app: Flask) -> Store:
    """The store an app was made with (outside a request: the UI role, tests)."""
    store: Store = app.extensions[STORE]
    return store


def get_store() -> Store:
    """The current app's store, kept on `g` for the rest of the request."""
    if "store" not in g:
        g.store = store_of(current_app)
    store: Store = g.store
    return store


def get_conn() -> sqlite3.Connection:
    """This thread's connection to the current app's store."""
    return get_store().conn


def get_settings() -> Settings:
    """The settings the current app was made with."""
    settings: Settings = current_app.extensions[SETTINGS]
    return settings
