"""Sign-in with a user name and a PIN on a touch keypad, sign-out, and the first-run set-up."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from appliance.store import users
from appliance.store.db import transaction
from appliance.web.db import get_conn, get_settings
from appliance.web.i18n import error_text, t
from appliance.web.security import ViewResult, csrf_token, public

bp = Blueprint("auth", __name__)


@bp.route("/signin", methods=["GET", "POST"])
@public
def signin() -> ViewResult:
    if not users.has_admin(get_conn()):
        return redirect(url_for("auth.setup"))
    if request.method == "GET":
        timed_out = session.pop("timed_out", False) or g.get("timed_out", False)
        return render_template("auth/signin.html", timed_out=timed_out)
    settings = get_settings().ui
    username = request.form.get("username", "").strip()[:64]
    result = users.sign_in(
        get_conn(),
        username,
        request.form.get("pin", "")[:16],
        settings.lockout_attempts,
        settings.lockout_min * 60.0,
        current_app.extensions["appliance.unknown_names"],
    )
    if result.outcome is users.SignIn.OK and result.user is not None:
        _start_session(result.user.id)
        return redirect(_safe_next(request.args.get("next", "")))
    if result.outcome is users.SignIn.LOCKED:
        minutes = max(1, round(result.locked_for_s / 60))
        flash(t("auth.locked", minutes=minutes))
        return render_template("auth/signin.html", username=username), 429
    flash(t("auth.wrong"))
    return render_template("auth/signin.html", username=username), 401


@bp.route("/signout", methods=["POST"])
def signout() -> Response:
    users.close_session(get_conn(), session.get("sid"))  # the cookie is worthless from now on
    session.clear()
    return redirect(url_for("auth.signin"))


@bp.route("/setup", methods=["GET", "POST"])
@public
def setup() -> ViewResult:
    """Create the first admin with the one-time code the UI role printed; gone afterwards."""
    conn = get_conn()
    if users.has_admin(conn):
        abort(404)
    if request.method == "GET":
        return render_template("auth/setup.html")
    form = request.form
    try:
        users.check_username(form.get("username", ""))
        users.check_pin(form.get("pin", ""))
        if form.get("pin") != form.get("pin_again"):
            raise users.UserError(t("auth.pins_differ"))
        with transaction(conn):  # the code is spent only if the admin is created
            if not users.use_setup_code(conn, form.get("code", "")[:16]):
                raise users.UserError(t("auth.bad_code"))
            admin = users.create_user(
                conn, form["username"], form.get("display_name", ""), "admin", form["pin"], "setup"
            )
    except users.UserError as exc:
        flash(error_text(exc, "admin.user_"))
        return render_template("auth/setup.html", username=form.get("username", "")), 400
    _start_session(admin.id)
    return redirect(url_for("worklist.index"))


def _start_session(user_id: int) -> None:
    users.close_session(get_conn(), session.get("sid"))  # a sign-in over another ends that one
    session.clear()  # a fresh session (and CSRF token) at every sign-in
    session["sid"] = users.open_session(get_conn(), user_id)
    session["user_id"] = user_id
    session["seen"] = time.time()
    csrf_token()


def _safe_next(target: str) -> str:
    """Only a page of this site that can be opened (GET): never an open redirect.

    Browsers drop tabs and newlines from a URL ("/<tab>/evil.example" becomes
    "//evil.example"), so only printable ASCII without spaces or backslashes passes; and a
    form's address (POST only) would end in "method not allowed", so it goes to the worklist.
    """
    path = urlsplit(target).path if _plain_path(target) else ""
    if path:
        try:
            current_app.url_map.bind("localhost").match(path, method="GET")
            return target
        except HTTPException:  # no such page, or not one to open
            pass
    return url_for("worklist.index")


def _plain_path(target: str) -> bool:
    return (
        target.startswith("/")
        and not target.startswith("//")
        and all(33 <= ord(c) < 127 and c != "\\" for c in target)
    )
