"""The UIDs the box writes: deterministic from their inputs, under one root.

A builder's UIDs are hashes of what the object is made from, so building the same object twice
(a repeated import, a retried send) gives the same UIDs and the peer or the store sees a
duplicate instead of a second copy. pydicom's `generate_uid` makes them: SHA-512 of the
entropy sources appended to the root, at most 64 characters.
"""

from __future__ import annotations

from typing import NamedTuple

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

# pydicom's registered root, under which `generate_uid` makes UIDs by default; a site with an
# organisation root of its own sets `outputs.uid_root`, which the builders pass as `root`.
UID_ROOT = PYDICOM_ROOT_UID


class ObjectUids(NamedTuple):
    """The three UIDs a composite image needs, in the order of the information model."""

    study: UID
    series: UID
    instance: UID


def deterministic_uid(*parts: object, root: str = UID_ROOT) -> UID:
    """A UID under `root` that depends only on `parts` (each turned into text).

    Each part is sent as 'length:text', since `generate_uid` joins its sources without a
    separator: ("ab", "c") and ("a", "bc") must not give the same UID.
    """
    sources = [f"{len(text)}:{text}" for text in map(str, parts)]
    prefix = root if root.endswith(".") else f"{root}."
    return generate_uid(prefix=prefix, entropy_srcs=sources)


def output_uids(
    kind: str,
    study_uid: str,
    source_uid: str,
    fingerprint: str,
    label: str = "",
    root: str = UID_ROOT,
) -> ObjectUids:
    """The UIDs of an object the box writes about an analysed image (`kind`: "sr", "heatmap",
    "report"), in the source image's study.

    The series depends only on the kind and the study, so that all SRs (or heatmaps, or PDF
    reports) of a study gather in one series of their own, whatever image or revision they
    come from. The instance depends on the kind, the source image, the content's `fingerprint`
    (what was reported, at which revision) and, for heatmaps, the label: the same content
    built again is the same instance (a duplicate at the peer), a new revision a new one.
    """
    series = deterministic_uid("output-series", kind, study_uid, root=root)
    instance = deterministic_uid("output-instance", kind, source_uid, fingerprint, label, root=root)
    return ObjectUids(UID(study_uid), series, instance)
