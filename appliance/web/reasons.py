"""Plain words for what the worker stored: why an image was held back, failed or has no model,
and why a live capture request failed.

The worker writes its reasons for the record (statistics, header values, thresholds): right for
the audit and the administrator, wrong for a technologist at the scanner. `describe` turns a
stored reason into a catalogue entry (`strings/<lang>/reasons.yaml`): one sentence in clinical
words, what to do next, and the stored text kept as `detail` for a collapsed "Details".

A reason code stored beside the text is used when there is one (`code`); otherwise the known
message templates of the worker, runtime and store are recognised here (the UI never imports the
runtime, so the patterns live in this room, and tests/test_web_reasons.py checks each one against
the message the real code writes). Anything unknown still gets a plain sentence for its state,
with the text under Details: a new message is never shown raw, and never breaks a page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask.sansio.app import App

from appliance.web.i18n import t

# The outcomes an image can show, in plain words (strings/en/states.yaml).
OUTCOMES = ("findings", "no_findings", "held_back", "no_model", "failed")
# What the worker's summary says of a result without positive findings (worker/triage.py).
NO_FINDINGS_SUMMARY = "no findings above the thresholds"
# Modalities named in plain words (reasons.kind_<code>); any other is "kind_other".
KINDS = ("CR", "DX", "US", "CT", "MR", "MG", "XA", "RF", "NM", "PT", "OT")


@dataclass(frozen=True)
class Reason:
    """A stored reason for people: `key` names the catalogue entry (reasons.<key> and
    reasons.<key>_advice), `plain` and `advice` are its words, `detail` the stored text."""

    key: str
    plain: str
    advice: str
    detail: str


@dataclass(frozen=True)
class _Template:
    """One message the worker writes: the catalogue entry it maps to and how to know it."""

    key: str
    pattern: re.Pattern[str]


def _template(key: str, pattern: str) -> _Template:
    return _Template(key, re.compile(pattern, re.S))


# In the order they are tried; the first that matches anywhere in the text wins (an analysis
# of several models joins their reasons with "; "). Each names where its message is written.
TEMPLATES = (
    # worker/analyse.py no_model_reason (with runtime/routing.py's rule that failed)
    _template("no_model_none_installed", r"^(?P<subject>[^:]*): no model is installed"),
    _template(
        "no_model_body_part_unknown",
        r"^(?P<subject>[^:]*): no model for this body part \(.*body part unknown",
    ),
    _template(
        "no_model_body_part",
        r"^(?P<subject>[^:]*): no model for this body part \(.*?body part '(?P<body_part>[^']*)'",
    ),
    _template("no_model_modality", r"^(?P<subject>[^:]*): no model for this modality \("),
    _template("no_model_sop_class", r"^(?P<subject>[^:]*): no model for this SOP class \("),
    _template("no_model_view", r"^(?P<subject>[^:]*): no model for this view \("),
    _template("no_model_colour", r"^(?P<subject>[^:]*): no model for this colour \("),
    _template("no_model_generic", r"^(?P<subject>[^:]*): no model for this "),
    # runtime/quality.py: what the plausibility check saw
    _template("held_back_blank", r"the image is almost blank \(contrast"),
    _template("held_back_uniform", r"the image is uniform and cannot be compared"),
    _template("held_back_rotated", r"the image appears to be rotated"),
    _template("held_back_upside_down", r"the image appears to be upside down"),
    _template("held_back_atypical", r"the image does not look like a typical input"),
    _template("held_back_generic", r"the image failed the plausibility check"),
    # worker/analyse.py, worker/role.py, worker/watch.py, store/jobs.py, store/reconcile.py
    _template("failed_decode", r"the image cannot be (decoded|read): "),
    _template("failed_missing", r"the image file is missing from the (store|spool)"),
    _template("failed_hung", r"inference hung: no answer from |\S+ hung: not finished after "),
    _template("failed_worker_stopped", r"the worker stopped during each of \d+ attempt"),
    _template("failed_model_error", r"^[^:;]+ failed: \w+: "),
    # worker/capture/state.py (LiveState.not_live), as control.py passes it on
    _template("capture_no_image", r"no image has come from the capture device yet"),
    _template("capture_not_live", r"the capture shows .*, not a live scan"),
)
KEYS = frozenset(template.key for template in TEMPLATES)
# The sentence for a reason nothing above recognises, by the state it was stored with.
GENERIC = {
    "held_back": "held_back_generic",
    "no_model": "no_model_generic",
    "failed": "failed_generic",
    "capture": "capture_generic",
}


def describe(reason: str, state: str = "", code: str = "") -> Reason:
    """The catalogue entry for a stored reason: by its code when one was stored, else by the
    message template it follows, else a generic sentence for `state`. Never raises."""
    text = (reason or "").strip()
    values: dict[str, str] = {}
    key = code if code in KEYS else ""
    for template in TEMPLATES:
        match = template.pattern.search(text)
        if match and (not key or template.key == key):
            key = template.key
            values = {name: value or "" for name, value in match.groupdict().items()}
            break
    if not key:
        key = GENERIC.get(state, "generic")
    words = _values(values)
    return Reason(key, t(f"reasons.{key}", **words), t(f"reasons.{key}_advice", **words), text)


def _values(found: dict[str, str]) -> dict[str, str]:
    """What a sentence may name, in plain words: the kind of image and the body part."""
    subject = found.get("subject", "")
    modality = subject.split(" ", 1)[0].upper() if subject else ""
    kind = t(f"reasons.kind_{modality}") if modality in KINDS else t("reasons.kind_other")
    body_part = found.get("body_part", "").strip().lower()
    return {"kind": kind, "body_part": body_part or t("reasons.kind_other")}


def shown_state(state: str, summary: str = "") -> str:
    """The state to show: an analysis with findings whose summary says none was found above
    the thresholds (or says nothing) is "no_findings"; every other state as stored."""
    if state == "findings" and (not summary.strip() or summary.startswith(NO_FINDINGS_SUMMARY)):
        return "no_findings"
    return state


def init_app(app: App) -> None:
    """Make `describe_reason` and `shown_state` available to every template (_reason.html)."""
    app.jinja_env.globals.update(describe_reason=describe, shown_state=shown_state)
