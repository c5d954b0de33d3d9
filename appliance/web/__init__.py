"""The touchscreen web UI: a Flask application factory with one blueprint per area.

It reads and writes the store only (DESIGN.md): no runtime, capture or DICOM networking here.
Every view needs a signed-in user unless marked `@public`; admin views need the admin role.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from appliance.config import Settings
from appliance.paths import Paths, resolve_paths
from appliance.store import Store, kv, open_store, users
from appliance.web import (
    account,
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
    timefmt,
    updates,
    wall,
    worklist,
)
from appliance.web.db import SETTINGS, STORE, store_of
from appliance.web.params import BoundedInt

__all__ = ["TEMPLATES", "create_app", "store_of"]

WSGIApp = Callable[[dict[str, Any], Any], Any]
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
    if settings.ui.behind_tls:
        app.wsgi_app = FromProxy(app.wsgi_app)  # type: ignore[method-assign]
        app.session_interface = SecureWhenTLS()
    app.url_map.converters["int"] = BoundedInt  # ids past SQLite's integers: 404, not 500
    i18n.init_app(app)
    timefmt.init_app(app)
    security.init_app(app)
    areas = (
        wall.bp,  # before auth: the sign-in page hands a locked screen to the wall
        auth.bp,
        health.bp,
        worklist.bp,
        study.bp,
        sending.bp,
        export.bp,
        imports.bp,
        admin.bp,
        updates.bp,
        account.bp,
        live.bp,
    )
    for blueprint in areas:
        app.register_blueprint(blueprint)
    return app


class FromProxy:
    """Trusts X-Forwarded-For and -Proto (one hop, the TLS proxy on this box) only on
    connections from this machine, so that the audit names the screen's own address and
    `request.is_secure` says whether it came over TLS. From anywhere else (a UI bound to
    0.0.0.0 by mistake) the headers are dropped: a client must not choose its own address."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=0, x_port=0, x_prefix=0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if _loopback(environ.get("REMOTE_ADDR", "")):
            return self.fixed(environ, start_response)
        for header in ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO"):
            environ.pop(header, None)
        return self.app(environ, start_response)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class SecureWhenTLS(SecureCookieSessionInterface):
    """Session cookies marked Secure when the request came through the TLS proxy, and not
    on the box's own touchscreen at http://localhost (which never crosses the network): a
    Secure cookie over plain HTTP is kept by Chromium on localhost but not by every browser
    (a kiosk with another one would never stay signed in)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) and request.is_secure


def _secret_key(store: Store) -> str:
    """The key that signs session cookies: made on first start, kept in the store, so
    sessions survive a restart of the UI role."""
    return kv.get_or_set(store.conn, _SIGNING_KEY_ROW, lambda: secrets.token_hex(32))


TEMPLATES = Path(__file__).parent / "templates"
