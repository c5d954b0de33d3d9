"""`/health`: public, for a monitor or a load balancer; says only whether the UI and store work."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from werkzeug.wrappers import Response

from appliance.web.security import public

bp = Blueprint("health", __name__)


@bp.route("/health")
@public
def health() -> Response:
    from appliance.web import store_of

    store_of(current_app).conn.execute("SELECT 1").fetchone()
    return jsonify(status="ok")
