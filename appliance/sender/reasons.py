"""What became of a delivery, in plain words for the clinician and the admin who read the study
page and the health page, with the DICOM code in brackets for whoever calls the PACS vendor.

`judge` decides from a C-STORE status whether the object was sent, refused for good (sending
it again would get the same answer) or should be tried again later (the PACS is out of
resources). The other functions word what went wrong with the destination as a whole.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom.status import code_to_category

from appliance.dicomout.scu import (
    MAX_CONTEXTS,
    REFUSED_CONTEXT,
    AssociationError,
    Peer,
    RefusedContext,
    Rejection,
)

FILE_MISSING = "the file is missing from the box"
FILE_UNREADABLE = "the file on the box is not a readable DICOM object"
STOPPED = "the sender stopped before sending it; it goes with the next association"
NEXT_ASSOCIATION = (
    f"waiting for the next association (one carries at most {MAX_CONTEXTS} kinds of object)"
)
NOT_CONFIGURED = "not configured: this destination is no longer in the configuration"
REACHABLE = "reachable"

WARNINGS = {
    0x0001: "the PACS sent a warning",
    0xB000: "the PACS changed some values to fit (coercion of data elements)",
    0xB006: "the PACS discarded some data elements",
    0xB007: "the PACS says the object does not fully match its kind (SOP class)",
}
REFUSALS = {
    0x0110: "the PACS could not process the object",
    0x0117: "the PACS refused the object: its instance UID is not valid",
    0x0122: "",  # the SOP class: worded by `not_accepted`
    0x0124: "the PACS refused the object: this box is not authorised to store it",
    0x0210: "the PACS refused the object: the same request was already in progress",
    0x0211: "the PACS refused the request: it does not know the operation",
    0x0212: "the PACS refused the request: an argument had the wrong type",
}
REJECTED_BECAUSE = {
    (1, 1): "no reason given",
    (1, 2): "the DICOM application context is not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many connections)",
}


class Action(enum.Enum):
    SENT = "sent"
    FAILED = "failed"  # refused for good: only somebody's "send again" tries once more
    RETRY = "retry"  # transient: the object waits and the destination backs off


@dataclass(frozen=True)
class Verdict:
    """What to do with a delivery, the reason kept with it (`words`, which may quote the
    PACS's own comment) and the same without the comment (`summary`) for the log."""

    action: Action
    words: str = ""
    summary: str = ""


def kind_of(sop_class: str) -> str:
    """A SOP class as people name the objects: "Comprehensive 3D SR objects", "Secondary
    Capture images"; an unknown class by its UID."""
    name = UID(sop_class).name
    if name == sop_class:
        return f"objects of class {sop_class}"
    for suffix, words in ((" Image Storage", " images"), (" Storage", " objects")):
        if suffix in name:
            return name.replace(suffix, words, 1)
    return f"{name} objects"


def judge(status: int, comment: str, sop_class: str) -> Verdict:
    """The verdict on a C-STORE answer (PS3.4 B.2.3 and PS3.7 C)."""
    if status == 0x0000:
        return Verdict(Action.SENT)
    code = f"[status 0x{status:04X}]"
    said = f' (the PACS said: "{comment}")' if comment else ""
    category = code_to_category(status)
    if status in WARNINGS or category == "Warning":
        warning = WARNINGS.get(status, "the PACS sent a warning")
        return _verdict(Action.SENT, f"sent with a warning: {warning}", said, code)
    if 0xA700 <= status <= 0xA7FF:
        text = "the PACS is out of resources (its storage may be full); it will be tried again"
        return _verdict(Action.RETRY, text, said, code)
    return _verdict(Action.FAILED, _refusal(status, sop_class), said, code)


def _refusal(status: int, sop_class: str) -> str:
    if status == 0x0122:
        return not_accepted(sop_class)
    if status in REFUSALS:
        return REFUSALS[status]
    if 0xA900 <= status <= 0xA9FF:
        return "the PACS refused the object: it does not match its kind (SOP class)"
    if 0xC000 <= status <= 0xCFFF:
        return "the PACS refused the object: it cannot understand it"
    if code_to_category(status) in ("Pending", "Cancel"):
        return "the PACS gave an answer that does not fit a store request"
    return "the PACS refused the object"


def _verdict(action: Action, text: str, said: str, code: str) -> Verdict:
    return Verdict(action, f"{text}{said} {code}", f"{text} {code}")


def not_accepted(sop_class: str, refused: RefusedContext | None = None) -> str:
    """The PACS does not take this kind of object (or not in the transfer syntax offered)."""
    if refused is not None and refused.result == 4:
        syntaxes = ", ".join(UID(s).name for s in refused.syntaxes)
        return (
            f"the PACS does not accept {kind_of(sop_class)} in the form sent ({syntaxes})"
            f" [transfer syntax not supported for {sop_class}]"
        )
    why = REFUSED_CONTEXT.get(refused.result, "not accepted") if refused else "not accepted"
    return f"the PACS does not accept {kind_of(sop_class)} [SOP class {sop_class}: {why}]"


def unreachable(host: str, port: int, cause: str) -> str:
    """No DICOM conversation at all: "cannot reach HOST:PORT: connection refused"."""
    return f"cannot reach {host}:{port}: {cause}"


def rejected(rejection: Rejection, calling_aet: str, called_aet: str) -> str:
    """The PACS refused the association, with what the admin should check."""
    how = "permanently" if rejection.permanent else "for now (transient)"
    key = (rejection.source, rejection.diagnostic)
    because = REJECTED_BECAUSE.get(key, "no reason given")
    if key == (1, 3):
        because += f" (the box calls itself {calling_aet!r}: the PACS must know this AE title)"
    elif key == (1, 7):
        because += f" (the box asked for {called_aet!r}: check the destination's called AE title)"
    return (
        f"the PACS rejected the association {how}: {because}"
        f" [A-ASSOCIATE-RJ result {rejection.result}, source {rejection.source},"
        f" reason {rejection.diagnostic}]"
    )


def association_failed(exc: AssociationError, peer: Peer) -> str:
    """Why there is no association with `peer`, in words."""
    if exc.unreachable:
        return unreachable(peer.host, peer.port, exc.unreachable)
    if exc.rejection is not None:
        return rejected(exc.rejection, peer.calling_aet, peer.called_aet)
    if exc.refused:
        return "; ".join(not_accepted(r.sop_class, r) for r in exc.refused)
    return (
        "the PACS took the connection but not the association"
        " (it closed the connection, or did not answer in time)"
    )


def lost(why: str) -> str:
    """The association went away while an object was being sent."""
    return f"the connection to the PACS was lost while sending ({why}); it will be sent again"


def could_not_send(problem: str) -> str:
    return f"the object could not be sent: {problem}"
