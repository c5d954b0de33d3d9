"""The live ultrasound view of the UI (being built)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("live", __name__)
