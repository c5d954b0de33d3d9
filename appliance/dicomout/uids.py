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
