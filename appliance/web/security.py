"""Sign-in required by default, roles, CSRF, session time-out, security headers, plain errors.

Default deny: a view is public only when decorated with `@public` (sign-in, set-up, health).
CSRF: every POST/PUT/PATCH/DELETE must carry the session's token, as the `csrf_token` form
field or the `X-CSRF-Token` header (app.js adds it to fetch requests from a meta tag).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from appliance.store import audit, users
from appliance.web.db import get_conn, get_settings

log = logging.getLogger(__name__)
View = TypeVar("View", bound=Callable[..., Any])
ViewResult = str | WerkzeugResponse | tuple[str, int]  # what a view returns
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def public(view: View) -> View:
    """Mark a view as reachable without signing in."""
    view.public = True  # type: ignore[attr-defined]
    return view


def roles_required(*roles: str) -> Callable[[View], View]:
    """Only users of these roles may use the view (403 for the others)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.user is None or g.user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def init_app(app: Flask) -> None:
    app.before_request(_load_user)
    app.before_request(_require_sign_in)
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.after_request(_audit_sign_in_address)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.jinja_env.globals["csrf_token"] = csrf_token


def _load_user() -> None:
    g.user = None
    user_id = session.get("user_id")
    if user_id is None:
        return
    settings = get_settings()
    conn = get_conn()
    seen = float(session.get("seen", 0))
    if time.time() - seen > settings.ui.session_timeout_min * 60:
        users.close_session(conn, session.get("sid"))
        session.clear()  # timed out: sign in again, and the sign-in page says why
        session["timed_out"] = g.timed_out = True
        return
    user = users.get_user(conn, int(user_id))
    if user is None or not user.active or not users.session_open(conn, session.get("sid"), user.id):
        session.clear()
        return
    g.user = user
    if request.headers.get("X-Poll") != "1":  # a page polling by itself is not someone's use
        session["seen"] = time.time()


def _require_sign_in() -> WerkzeugResponse | None:
    if request.endpoint is None or request.endpoint == "static":
        return None
    view = current_app.view_functions.get(request.endpoint)
    if view is None or getattr(view, "public", False) or g.user is not None:
        return None
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        abort(401)
    return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))


def _check_csrf() -> None:
    if request.method not in _UNSAFE:
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf")
    # As bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 400).
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode("utf-8", "replace"), expected.encode()
    ):
        abort(400, description="csrf")


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


_SIGN_IN_FORMS = {"auth.signin", "auth.setup"}


def _audit_sign_in_address(response: Response) -> Response:
    """Every sign-in (and set-up) attempt is audited with the address it came from: the
    screen's own, also through the TLS proxy (see `create_app`'s FromProxy), and whether it
    came over TLS."""
    if request.method == "POST" and request.endpoint in _SIGN_IN_FORMS:
        name = str(request.form.get("username", ""))[:32]
        audit.append(
            get_conn(),
            f"ui:{name}",
            "signin.address",
            f"user:{name}",
            address=request.remote_addr or "",
            tls=request.is_secure,
            status=response.status_code,
        )
    return response


def _http_error(error: HTTPException) -> Response | tuple[str, int]:
    code = error.code or 500
    if request.path.startswith("/api/"):
        return Response(f'{{"error": {code}}}', code, mimetype="application/json")
    key = "csrf" if error.description == "csrf" else str(code)
    return render_template("error.html", code=code, key=key), code


def _unexpected_error(error: Exception) -> tuple[str, int]:
    # Logged with its traceback for the admin; the browser only learns that it failed.
    log.exception("error serving %s %s", request.method, request.path)
    return render_template("error.html", code=500, key="500"), 500
