"""Small readers for DICOM attributes that may sit at the top level or in functional groups."""

from __future__ import annotations

import math
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset


def tag_text(keyword: str) -> str:
    """`Rows (0028,0010)`: how an error names an attribute so a person can look it up."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of `sequence` for `frame` in an enhanced (functional groups) image.

    Per-frame groups win over shared ones (PS3.3 C.7.6.16); None when neither has it.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and 0 <= frame < len(per_frame):
        item = _first_item(per_frame[frame], sequence)
        if item is not None:
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        return _first_item(shared[0], sequence)
    return None


def _first_item(group: Dataset, sequence: str) -> Dataset | None:
    items = group.get(sequence)
    if not items:
        return None
    item: Dataset = items[0]
    return item


def lookup(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """`keyword` from the top level, else from the functional group `sequence` for `frame`."""
    value = ds.get(keyword)
    if value is not None and value != "":
        return value
    item = functional_item(ds, frame, sequence)
    if item is None:
        return None
    return item.get(keyword)


def as_floats(value: Any) -> tuple[float, ...] | None:
    """A DS/FD value (single or multi) as finite floats; None when it is not numeric."""
    single = isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")
    items = [value] if single else list(value)
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if not numbers or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def plain_error(exc: BaseException) -> str:
    """An exception as one short line for people: its message without pydicom's advice to
    developers ("To replace this error...", "Use force=True...")."""
    text = str(exc).split(" To replace this error")[0].split(" Use force=True")[0]
    return (text or type(exc).__name__).strip()[:300]
