"""Sign-in with a user name and a PIN on a touch keypad, sign-out, and the first-run set-up.

A screen whose session ended for inactivity shows the locked wall view (wall.py) rather than
this form; a touch there opens the form with the last user chosen, and signing in goes back to
the page the user was on. A form sent after the session ended comes here with "nothing was
saved yet", and signing in goes back to the form's page, where app.js restores the draft.
"""

from __future__ import annotations

import time

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response

from appliance.store import users
from appliance.store.db import transaction
from appliance.web.db import get_conn, get_settings
from appliance.web.i18n import error_text, t
from appliance.web.security import (
    ViewResult,
    csrf_token,
    forget_wall_cookie,
    public,
    safe_next,
    session_timeout_s,
    set_wall_cookie,
    wall_user,
)

bp = Blueprint("auth", __name__)


@bp.route("/signin", methods=["GET", "POST"])
@public
def signin() -> ViewResult:
    if not users.has_admin(get_conn()):
        return redirect(url_for("auth.setup"))
    target = safe_next(request.args.get("next", ""))
    unsaved = bool(session.get("unsaved"))
    if request.method == "GET":
        timed_out = session.pop("timed_out", False) or g.get("timed_out", False)
        last = wall_user()
        if timed_out and not unsaved and last is not None:
            return redirect(url_for("wall.page", back=target))  # nobody is here: lock
        username = last.username if last is not None else ""
        return _form(username, timed_out=timed_out)
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
        if unsaved:
            flash(t("auth.unsaved_restored"), "unsaved")
        response = redirect(target)
        set_wall_cookie(response, result.user.id)  # this screen may lock to the wall view
        return response
    if result.outcome is users.SignIn.LOCKED:
        minutes = max(1, round(result.locked_for_s / 60))
        flash(t("auth.locked", minutes=minutes), "error")
        return _form(username), 429
    flash(t("auth.wrong"), "error")
    return _form(username), 401


def _form(username: str, timed_out: bool = False) -> str:
    return render_template(
        "auth/signin.html",
        username=username,
        timed_out=timed_out,
        unsaved=bool(session.get("unsaved")),
    )


@bp.route("/signout", methods=["POST"])
def signout() -> Response:
    users.close_session(get_conn(), session.get("sid"))  # the cookie is worthless from now on
    session.clear()
    g.wall_forget = True  # signed out on purpose: no wall view on this screen
    response = redirect(url_for("auth.signin"))
    forget_wall_cookie(response)
    return response


@bp.route("/api/session")
def alive() -> Response:
    """Asked by app.js while someone touches the screen: keeps the session in step with the
    screen's use (a long impression typed without a request would otherwise end it)."""
    seen = float(session.get("seen", time.time()))
    left = max(0.0, seen + session_timeout_s() - time.time())
    return make_response(jsonify(left_s=round(left)))


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
        policy = get_settings().ui.pin_policy
        users.check_username(form.get("username", ""))
        users.check_pin(form.get("pin", ""), policy)
        if form.get("pin") != form.get("pin_again"):
            raise users.UserError(t("auth.pins_differ"))
        with transaction(conn):  # the code is spent only if the admin is created
            if not users.use_setup_code(conn, form.get("code", "")[:16]):
                raise users.UserError(t("auth.bad_code"))
            admin = users.create_user(
                conn,
                form["username"],
                form.get("display_name", ""),
                "admin",
                form["pin"],
                "setup",
                policy=policy,
            )
    except users.UserError as exc:
        flash(error_text(exc, "admin.user_"), "error")
        return render_template("auth/setup.html", username=form.get("username", "")), 400
    _start_session(admin.id)
    response = redirect(url_for("worklist.index"))
    set_wall_cookie(response, admin.id)
    return response


def _start_session(user_id: int) -> None:
    users.close_session(get_conn(), session.get("sid"))  # a sign-in over another ends that one
    session.clear()  # a fresh session (and CSRF token) at every sign-in
    session["sid"] = users.open_session(get_conn(), user_id)
    session["user_id"] = user_id
    session["seen"] = time.time()
    csrf_token()


def initials_of(display_name: str) -> str:
    """'Tina Tech' -> 'TT': the header's button for the signed-in user's menu."""
    words = [word for word in display_name.split() if word[:1].isalnum()]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[-1][0]).upper()


@bp.record_once
def _initials_in_the_header(state: BlueprintSetupState) -> None:
    """base.html shows the signed-in user as initials."""
    state.app.jinja_env.globals["initials_of"] = initials_of
