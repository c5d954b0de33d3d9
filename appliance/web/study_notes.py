"""Messages where the eye is: a form's error beside its field, a "done" beside the button.

A study form posts, then redirects back to the study (so a reload never posts twice). The
message it leaves is kept for that one next page in the session, with the place it belongs to
(`impression`, `image`, `sending`, `destination:<name>`), instead of the flash list that
base.html shows at the top of the page, far from the form and often out of sight on a small
panel. The page shows it at its place and moves the focus there.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import session

_KEY = "study_note"


@dataclass(frozen=True)
class Note:
    """One message for one place of one study's page."""

    place: str
    text: str
    error: bool


def leave_note(study_id: int, place: str, text: str, error: bool = False) -> None:
    """Keep `text` for the next view of study `study_id`, to be shown at `place`."""
    session[_KEY] = {"study": study_id, "place": place, "text": text, "error": error}


def take_note(study_id: int) -> Note | None:
    """The note left for this study (once: it is gone afterwards); None if there is none."""
    kept = session.get(_KEY)
    if not isinstance(kept, dict) or kept.get("study") != study_id:
        return None
    session.pop(_KEY, None)
    return Note(str(kept.get("place", "")), str(kept.get("text", "")), bool(kept.get("error")))
