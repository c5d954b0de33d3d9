"""The signed-in user's own settings: for now the language of the UI (audited)."""

from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance.store import preferences
from appliance.store.db import transaction
from appliance.web.db import get_conn, get_settings
from appliance.web.i18n import LANGUAGES, current_language, error_text, t, use_language
from appliance.web.security import ViewResult

bp = Blueprint("account", __name__, url_prefix="/account")
SCREEN = "screen"  # the form's value for "the screen's language" (stored as '')


@bp.route("/", methods=["GET"])
def index() -> str:
    return _page(200)[0]


def _page(status: int) -> tuple[str, int]:
    chosen = preferences.get_language(get_conn(), g.user.id) or SCREEN
    page = render_template(
        "account/index.html",
        languages=LANGUAGES,
        chosen=chosen,
        screen_language=get_settings().ui.language,
        speaking=current_language(),
    )
    return page, status


@bp.route("/language", methods=["POST"])
def set_language() -> ViewResult:
    wanted = request.form.get("language", "")[:16]
    language = "" if wanted == SCREEN else wanted
    conn = get_conn()
    try:
        with transaction(conn):
            preferences.set_language(conn, g.user.id, language, f"ui:{g.user.username}")
    except preferences.PreferenceError as exc:
        flash(error_text(exc, "account.error_"))
        return _page(400)
    use_language(language)  # the confirmation already in the language chosen
    flash(t("account.saved"))
    return _back()


def _back() -> Response:
    return redirect(url_for("account.index"))
