"""The worklist: studies by triage priority, then arrival."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from appliance.store.worklist import studies

bp = Blueprint("worklist", __name__)


@bp.route("/")
def index() -> str:
    from appliance.web import store_of

    rows = studies(store_of(current_app).conn, limit=100)
    return render_template("worklist/index.html", rows=rows)
