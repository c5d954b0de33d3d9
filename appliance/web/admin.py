"""Administration, for the admin role only: users, model packages, system health, audit trail.

Everything here is read from the store, never from the other roles directly: the worker and
the receiver write what they are doing into it when they start (and a heartbeat while they
run, `store.status`), so this page works whether or not they are up, and says which are not.
Every change made here is audited under the admin's name.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.wrappers import Response as WerkzeugResponse

from appliance.config import PinPolicy
from appliance.store import status, users
from appliance.store.backup import last_backup
from appliance.store.db import transaction
from appliance.web import timefmt
from appliance.web.db import get_conn, get_settings, get_store
from appliance.web.health import destination_health, with_sender
from appliance.web.i18n import error_text, t
from appliance.web.params import whole_number
from appliance.web.security import ViewResult

bp = Blueprint("admin", __name__, url_prefix="/admin")
# The time filter for every page, until create_app registers it itself (init_app runs once).
bp.record_once(lambda state: timefmt.init_app(cast(Flask, state.app)))

PAGE_SIZE = 50  # audit rows per page
MAX_PAGE = 10**9  # past any real audit trail; keeps OFFSET within SQLite's integers
ROLES = ("receiver", "worker", "ui")  # shown even before they first report
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula
CSV_COLUMNS = ("id", "at_utc", "actor", "action", "subject", "detail")


def _actor() -> str:
    return f"ui:{g.user.username}"


@bp.before_request
def _admins_only() -> None:
    """Signed-out users were already sent to sign in (security.py); other roles stop here."""
    if g.user is None or g.user.role != "admin":
        abort(403)


@bp.context_processor
def _helpers() -> dict[str, Callable[..., Any]]:
    return {
        "local_time": local_time,
        "duration": duration,
        "size": size,
        "plain": plain,
        "details": details,
        "fast_int8": fast_int8,
        "short_hash": short_hash,
    }


# --- users -------------------------------------------------------------------------------------


@bp.route("/")
def index() -> WerkzeugResponse:
    return redirect(url_for("admin.health"))


@bp.route("/users", methods=["GET"])
def user_list() -> str:
    return _users_page({})


def _users_page(values: Mapping[str, str]) -> str:
    everyone = users.list_users(get_conn())
    return render_template("admin/users.html", users=everyone, roles=users.ROLES, values=values)


@bp.route("/users", methods=["POST"])
def create_user() -> ViewResult:
    form = request.form
    conn = get_conn()
    try:
        pin = _new_pin(form)
        with transaction(conn):
            user = users.create_user(
                conn,
                form.get("username", "").strip(),
                form.get("display_name", ""),
                form.get("role", ""),
                pin,
                _actor(),
                _pin_policy(),
            )
    except users.UserError as exc:
        flash(error_text(exc, "admin.user_"))
        return _users_page(form), 400
    flash(t("admin.user_created", username=user.username))
    return redirect(url_for("admin.user_list"))


def _new_pin(form: Mapping[str, str]) -> str:
    """The PIN typed twice; both the same (a typo in a PIN nobody can see locks a user out)."""
    pin = form.get("pin", "")[:16]
    if pin != form.get("pin_again", "")[:16]:
        raise users.UserError(t("admin.pins_differ"))
    return users.check_pin(pin, _pin_policy())


def _pin_policy() -> PinPolicy:
    return get_settings().ui.pin_policy


@bp.route("/users/<int:user_id>/active", methods=["POST"])
def set_active(user_id: int) -> ViewResult:
    conn = get_conn()
    user = users.get_user(conn, user_id) or abort(404)
    active = request.form.get("active") == "1"
    try:
        with transaction(conn):
            _check_may_disable(conn, user, active)
            users.set_active(conn, user.id, active, _actor())
    except users.UserError as exc:
        flash(error_text(exc, "admin.user_"))
        return _users_page({}), 400
    key = "admin.user_enabled" if active else "admin.user_disabled"
    flash(t(key, username=user.username))
    return redirect(url_for("admin.user_list"))


def _check_may_disable(conn: sqlite3.Connection, user: users.User, active: bool) -> None:
    """Never disable oneself or the last active admin: nobody could administer the box."""
    if active:
        return
    if user.id == g.user.id:
        raise users.UserError(t("admin.not_yourself"))
    if user.role == "admin" and _active_admins(conn) <= 1:
        raise users.UserError(t("admin.last_admin"))


def _active_admins(conn: sqlite3.Connection) -> int:
    return sum(1 for u in users.list_users(conn) if u.role == "admin" and u.active)


@bp.route("/users/<int:user_id>/pin", methods=["POST"])
def reset_pin(user_id: int) -> ViewResult:
    conn = get_conn()
    user = users.get_user(conn, user_id) or abort(404)
    try:
        pin = _new_pin(request.form)
        with transaction(conn):
            users.set_pin(conn, user.id, pin, _actor(), _pin_policy())
    except users.UserError as exc:
        reason = error_text(exc, "admin.user_")
        flash(t("admin.pin_not_changed", username=user.username, reason=reason))
        return _users_page({}), 400
    flash(t("admin.pin_changed", username=user.username))
    return redirect(url_for("admin.user_list"))


# --- model packages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """One label's validation figures, each under a plain name (`metric_*` in the catalogue)."""

    label: str
    figures: list[tuple[str, str]]


@dataclass(frozen=True)
class Validation:
    """A manifest's validation figures: the dataset, one block per label, the raw values."""

    dataset: str
    labels: list[Figures]
    raw: str


@bp.route("/models")
def models() -> str:
    packages = status.installed_models(get_conn())
    tables = {p.name: _validation(p.manifest) for p in packages}
    return render_template("admin/models.html", packages=packages, validation=tables)


def _validation(manifest: Mapping[str, Any]) -> Validation | None:
    figures = manifest.get("validation")
    if not isinstance(figures, dict):
        return None
    metrics = figures.get("metrics")
    names = _label_names(manifest)
    labels = [
        Figures(names.get(str(label), str(label)), _plain_figures(values))
        for label, values in (metrics.items() if isinstance(metrics, dict) else ())
        if isinstance(values, dict)
    ]
    raw = json.dumps(figures, indent=1, ensure_ascii=False, default=str)
    return Validation(str(figures.get("dataset", "")), labels, raw)


def _plain_figures(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(plain("admin.metric_", str(name)), _figure(value)) for name, value in values.items()]


def _label_names(manifest: Mapping[str, Any]) -> dict[str, str]:
    """label name -> the name the package shows people (`display`), from its outputs."""
    names: dict[str, str] = {}
    for output in manifest.get("outputs") or ():
        for label in (output.get("labels") or ()) if isinstance(output, dict) else ():
            if isinstance(label, dict) and label.get("name"):
                names[str(label["name"])] = str(label.get("display") or label["name"])
    return names


def _figure(value: Any) -> str:
    """A figure as people read it: fractions with up to 3 decimals, counts as they are."""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def plain(prefix: str, name: str) -> str:
    """The catalogue's plain words for a technical name (`prefix` + name), else the name."""
    key = prefix + name
    try:
        text = t(key)
    except KeyError:  # under test a missing key raises; a name without words shows as it is
        return name
    return name if text == key else text


def details(text: str | None) -> list[tuple[str, str]]:
    """A stored JSON detail (audit rows) as key/value lines; other text as one line."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return [("", text)]
    if not isinstance(value, dict):
        return [("", text)]
    return [
        (str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
        for k, v in value.items()
    ]


def fast_int8(reason: str) -> bool | None:
    """Whether the worker's precision reason says this CPU has fast 8-bit arithmetic (the
    instruction names are shown only under details); None when the reason does not say."""
    if "has no 8-bit" in reason:
        return False
    if "has 8-bit" in reason:
        return True
    return None


def short_hash(value: str) -> str:
    """The first 12 characters of a long hash, enough to compare at a glance."""
    return value if len(value) <= 16 else value[:12] + "…"


# --- system health -----------------------------------------------------------------------------


@bp.route("/health")
def health() -> str:
    store = get_store()
    conn = store.conn
    states = {state.role: state for state in status.role_states(conn)}
    floor = get_settings().storage.free_space_floor_mb * 2**20
    free = store.spool.free_bytes()
    return render_template(
        "admin/health.html",
        free=free,
        floor=floor,
        low=free < floor,
        unwritable=status.write_problem(conn, store.paths.data_dir),
        outlook=status.disk_outlook(conn, free, floor),
        removed=status.removed_images(conn),
        backup=last_backup(conn),
        summary=store.summary(),
        roles=[
            (name, states.get(name)) for name in with_sender(_role_names(states), get_settings())
        ],
        destinations=destination_health(store),
        receiver=states.get("receiver"),
        worker=states.get("worker"),
        loaded=[m for m in status.installed_models(conn) if m.state == "loaded"],
        refused=[m for m in status.installed_models(conn) if m.state == "refused"],
        last_association=status.last_association_at(conn),
        failed_jobs=status.failed_jobs(conn),
        problems=status.audit_problems(conn),
    )


def _role_names(states: Mapping[str, status.RoleState]) -> list[str]:
    return [*ROLES, *sorted(name for name in states if name not in ROLES)]


# --- audit trail -------------------------------------------------------------------------------


@bp.route("/audit")
def audit() -> ViewResult:
    search, problem = _audit_filter(request.args)
    page = whole_number(request.args.get("page", "1"), low=1, high=MAX_PAGE) or 1
    conn = get_conn()
    rows, total = status.audit_page(conn, search, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    page_html = render_template(
        "admin/audit.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        filters={k: request.args.get(k, "") for k in ("action", "actor", "subject", "from", "to")},
        actions=status.audit_actions(conn),
        problem=problem,
    )
    return (page_html, 400) if problem else page_html


@bp.route("/audit.csv")
def audit_csv() -> Response:
    """The filtered trail as CSV, streamed in batches; the export itself is audited."""
    search, problem = _audit_filter(request.args)
    if problem:
        abort(400)
    store = get_store()
    store.audit(_actor(), "audit.exported", "audit", filters=_filter_detail(search))

    def lines() -> Iterator[str]:
        yield csv_line(CSV_COLUMNS)
        for row in status.audit_rows(lambda: store.conn, search):
            yield csv_line(
                str(row[c]) for c in ("id", "at", "actor", "action", "subject", "detail")
            )

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    response = Response(stream_with_context(lines()), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    return response


def _audit_filter(args: Mapping[str, str]) -> tuple[status.AuditFilter, str]:
    """The filter from the query string, and a message when a date cannot be read. Dates are
    the box's local days; the store keeps UTC, so they become UTC bounds here."""
    try:
        since = _utc_start_of(args.get("from", ""))
        until = _utc_start_of(args.get("to", ""), days_after=1)
    except ValueError:
        return status.AuditFilter(), t("admin.bad_date")
    search = status.AuditFilter(
        action=args.get("action", "").strip()[:64],
        actor=args.get("actor", "").strip()[:64],
        subject=args.get("subject", "").strip()[:128],
        since=since,
        until=until,
    )
    return search, ""


def _utc_start_of(text: str, days_after: int = 0) -> str:
    """The UTC time at which local day `text` (YYYY-MM-DD) begins, `days_after` days on."""
    if not text.strip():
        return ""
    day = date.fromisoformat(text.strip())  # ValueError: not a date, the caller says so
    try:
        local = datetime.combine(day + timedelta(days=days_after), time.min).astimezone()
        return local.astimezone(timezone.utc).isoformat(timespec="microseconds")
    except (OverflowError, ValueError, OSError):
        return ""  # at either end of the calendar: no bound on that side


def _filter_detail(search: status.AuditFilter) -> dict[str, str]:
    return {k: v for k, v in vars(search).items() if v}


def csv_line(cells: Iterator[str] | tuple[str, ...]) -> str:
    """One CSV line; a cell a spreadsheet would take for a formula starts with a quote."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([safe_cell(cell) for cell in cells])
    return buffer.getvalue()


def safe_cell(value: str) -> str:
    """Defuse CSV formula injection (OWASP): '=cmd|...' becomes "'=cmd|...", shown as text."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


# --- formatting for the templates --------------------------------------------------------------


def local_time(value: str | None) -> str:
    """A stored UTC time as the box's local time, in the site's one format (timefmt.when)."""
    return timefmt.when(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return t("admin.none")
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return t("admin.duration_d", d=days, h=hours)
    if hours:
        return t("admin.duration_h", h=hours, m=minutes)
    if minutes:
        return t("admin.duration_m", m=minutes)
    return t("admin.duration_s", s=secs)


def size(count: int) -> str:
    if count >= 2**30:
        return t("admin.size_gib", n=f"{count / 2**30:.1f}")
    return t("admin.size_mib", n=f"{count / 2**20:.0f}")
