"""Sign-in required by default, roles, CSRF, session time-out, security headers, plain errors.

Default deny: a view is public only when decorated with `@public` (sign-in, set-up, health).
A view marked `@locked_screen` (the locked wall view) also opens for a screen where someone
signed in within WALL_HOURS: the wall cookie (see `wall_user`), never for any other browser.
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
from urllib.parse import urlsplit

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
from itsdangerous import BadSignature, URLSafeTimedSerializer
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


def locked_screen(view: View) -> View:
    """Mark a view as reachable without a session on a screen that holds a valid wall cookie
    (a user signed in on it within WALL_HOURS), as well as signed in."""
    view.locked_screen = True  # type: ignore[attr-defined]
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
    # The user is known before any blueprint's own preprocessing (the update page raises its
    # upload limit for a signed-in admin only).
    app.url_value_preprocessor(lambda endpoint, values: _load_user())
    app.before_request(_require_sign_in)
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.after_request(_audit_sign_in_address)
    app.after_request(_keep_wall_cookie)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["session_timeout_s"] = session_timeout_s


def session_timeout_s() -> float:
    """Seconds without use before a session ends: `ui.session_timeout_min`, or the app's
    SESSION_TIMEOUT_S where a test sets it (create_app's overrides; never from the settings
    file, so every admin sees the real value)."""
    override = current_app.config.get("SESSION_TIMEOUT_S")
    if override is not None:
        return float(override)
    return get_settings().ui.session_timeout_min * 60.0


def _load_user() -> None:
    g.user = None
    user_id = session.get("user_id")
    if user_id is None:
        return
    conn = get_conn()
    seen = float(session.get("seen", 0))
    if time.time() - seen > session_timeout_s():
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
    if getattr(view, "locked_screen", False) and wall_user() is not None:
        return None
    if request.endpoint == "auth.signout":  # after a time-out too: this screen shows no wall
        response = redirect(url_for("auth.signin"))
        forget_wall_cookie(response)
        return response
    target = request.full_path.rstrip("?")
    if request.method in _UNSAFE and request.blueprint != "auth":
        # A save after the session ended: nothing was saved; after the PIN the user goes back
        # to the page the form was on, where app.js puts the typed text back.
        session["unsaved"] = True
        target = _page_of_form()
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        abort(401)
    return redirect(url_for("auth.signin", next=target))


def _page_of_form() -> str:
    """The page a form was sent from: its `return_to` field (app.js adds it), else the nearest
    page above the form's address (/study/5/impression -> /study/5), else the worklist."""
    sent = str(request.form.get("return_to", ""))
    if local_page(sent):
        return sent
    parts = request.path.rstrip("/").split("/")
    while len(parts) > 1:
        parts.pop()
        candidate = "/".join(parts) or "/"
        if local_page(candidate):
            return candidate
    return url_for("worklist.index")


# Pages a sign-in never returns to: the sign-in pages themselves and the locked screen.
_NOT_RETURNED_TO = {"auth.signin", "auth.signout", "auth.setup", "wall.page", "static"}


def local_page(target: str) -> bool:
    """True for an address of a page of this site that can be opened (GET): never another
    site, a form's address, an API answer, the sign-in pages or the locked screen.

    Browsers drop tabs and newlines from a URL ("/<tab>/evil.example" becomes
    "//evil.example"), so only printable ASCII without spaces or backslashes passes.
    """
    plain = (
        target.startswith("/")
        and not target.startswith("//")
        and all(33 <= ord(c) < 127 and c != "\\" for c in target)
    )
    path = urlsplit(target).path if plain else ""
    if not path or path.startswith("/api/"):
        return False
    try:
        endpoint, _ = current_app.url_map.bind("localhost").match(path, method="GET")
    except HTTPException:  # no such page, or not one to open
        return False
    return endpoint not in _NOT_RETURNED_TO


def safe_next(target: str) -> str:
    """`target` if it is a local page (`local_page`), else the worklist."""
    return target if local_page(target) else url_for("worklist.index")


# --- the wall cookie: "a user signed in on this screen within WALL_HOURS" ----------------------

WALL_COOKIE = "appliance_wall"
WALL_HOURS = 12  # one shift: a screen nobody signed in to for longer shows the sign-in page
_WALL_SALT = "appliance.wall"
_WALL_RENEW_S = 600  # a signed-in screen renews its cookie at most this often


def _wall_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt=_WALL_SALT)


def _wall_token() -> tuple[int, float] | None:
    """The user id and the time the cookie was made, if it is genuine and young enough."""
    raw = request.cookies.get(WALL_COOKIE, "")
    if not raw:
        return None
    try:
        payload, made = _wall_signer().loads(raw, max_age=WALL_HOURS * 3600, return_timestamp=True)
    except (BadSignature, ValueError, TypeError):  # forged, expired or mangled
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), int):
        return None
    return payload["u"], made.timestamp()


def wall_user() -> users.User | None:
    """Who signed in on this screen last, within WALL_HOURS, if still an active user: the
    screen may then show the locked wall view. Kept on `g` for the request."""
    if "wall_user" not in g:
        token = _wall_token()
        user = users.get_user(get_conn(), token[0]) if token else None
        g.wall_user = user if user is not None and user.active else None
    found: users.User | None = g.wall_user
    return found


def set_wall_cookie(response: WerkzeugResponse, user_id: int) -> None:
    """Mark this screen as signed in on by `user_id` now (HttpOnly, SameSite=Strict, Secure
    like the session cookie)."""
    response.set_cookie(
        WALL_COOKIE,
        _wall_signer().dumps({"u": user_id}),
        max_age=WALL_HOURS * 3600,
        httponly=True,
        samesite="Strict",
        secure=bool(get_settings().ui.behind_tls and request.is_secure),
    )


def forget_wall_cookie(response: WerkzeugResponse) -> None:
    """Signing out on purpose ends the wall view too: the screen shows the sign-in page."""
    response.delete_cookie(WALL_COOKIE, httponly=True, samesite="Strict")


def _keep_wall_cookie(response: Response) -> Response:
    """A signed-in user's use of the screen renews its wall cookie (every _WALL_RENEW_S)."""
    user = g.get("user")
    if user is None or request.headers.get("X-Poll") == "1" or g.get("wall_forget"):
        return response
    token = _wall_token()
    if token is None or token[0] != user.id or time.time() - token[1] > _WALL_RENEW_S:
        set_wall_cookie(response, user.id)
    return response


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
