"""How large an incoming dataset says it will be, read from its bytes as they arrive.

A C-STORE does not state its size before its data, but an image does: native pixel data is one
element with an explicit length, and it comes after every other element that matters. Following
the element headers (and skipping their values unread) finds it after the first few kilobytes,
so the receiver can refuse an image that would leave less than the free-space floor before its
pixel data is written, not after the disk is full.

The stream is what pynetdicom writes into an incoming file: a 128-byte preamble, "DICM", the
file meta group (Explicit VR Little Endian, with its group length) and then the dataset in the
negotiated transfer syntax. Deflated datasets, encapsulated (compressed) pixel data and
undefined-length UN elements announce nothing: their size is only known as it arrives.
"""

from __future__ import annotations

import struct

_PREAMBLE = 132  # 128 bytes, then "DICM"
_PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_DELIMITERS = (0xFFFEE00D, 0xFFFEE0DD)  # item and sequence delimitation
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class AnnouncedSize:
    """Follows a Part 10 stream fed in pieces; `total` becomes the file's size as its Pixel
    Data element announces it (None while unknown, and for a dataset that announces none)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.done = False
        self._buffer = bytearray()
        self._pos = 0  # next unread byte of _buffer
        self._offset = 0  # file offset of _buffer[0]
        self._skip = 0  # value bytes still to pass over before the next header
        self._depth = 0  # inside how many undefined-length sequences and items
        self._meta_end: int | None = None
        self._implicit = False
        self._little = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.done:
            return
        view = memoryview(data)
        if self._skip:
            passed = min(self._skip, len(view))
            self._skip -= passed
            self._offset += passed
            view = view[passed:]
        self._buffer += view
        try:
            self._walk()
        except (ValueError, struct.error):
            self.done = True  # not well formed: the dataset check refuses it with the reason
        del self._buffer[: self._pos]
        self._offset += self._pos
        self._pos = 0

    def _available(self) -> int:
        return len(self._buffer) - self._pos

    def _walk(self) -> None:
        if self._meta_end is None and not self._read_meta():
            return
        while not self.done and not self._skip:
            header = self._header()
            if header is None:
                return
            tag, vr, length = header
            self._element(tag, vr, length)

    def _read_meta(self) -> bool:
        """Read the transfer syntax once the whole file meta group is here."""
        if len(self._buffer) < _PREAMBLE + 12:
            return False
        if self._buffer[128:132] != b"DICM" or self._buffer[132:136] != b"\x02\x00\x00\x00":
            raise ValueError("no file meta group length")
        meta_end = _PREAMBLE + 12 + struct.unpack_from("<L", self._buffer, _PREAMBLE + 8)[0]
        if len(self._buffer) < meta_end:
            return False
        syntax = _meta_transfer_syntax(bytes(self._buffer[_PREAMBLE:meta_end]))
        if syntax == _DEFLATED:
            self.done = True
            return False
        self._implicit, self._little = syntax == _IMPLICIT_LE, syntax != _EXPLICIT_BE
        self._meta_end = self._pos = meta_end
        return True

    def _header(self) -> tuple[int, bytes | None, int] | None:
        """The next element's tag, VR (None when implicit or an item) and value length."""
        if self._available() < 8:
            return None
        order = "<" if self._little else ">"
        group, element = struct.unpack_from(order + "HH", self._buffer, self._pos)
        tag = group << 16 | element
        if group == 0xFFFE or self._implicit:
            length = struct.unpack_from(order + "L", self._buffer, self._pos + 4)[0]
            self._pos += 8
            return tag, None, length
        vr = bytes(self._buffer[self._pos + 4 : self._pos + 6])
        if vr not in _LONG_VRS:
            length = struct.unpack_from(order + "H", self._buffer, self._pos + 6)[0]
            self._pos += 8
            return tag, vr, length
        if self._available() < 12:
            return None
        length = struct.unpack_from(order + "L", self._buffer, self._pos + 8)[0]
        self._pos += 12
        return tag, vr, length

    def _element(self, tag: int, vr: bytes | None, length: int) -> None:
        if tag in _DELIMITERS:
            self._depth -= 1
            if self._depth < 0:
                raise ValueError("a delimiter outside any sequence")
        elif self._depth == 0 and tag >= _PIXEL_DATA:
            if tag == _PIXEL_DATA and length != _UNDEFINED:
                self.total = self._offset + self._pos + length
            self.done = True  # found, encapsulated, or past where pixel data would be
        elif length != _UNDEFINED:
            self._pass(length)
        elif tag == _ITEM or vr in (b"SQ", None):
            self._depth += 1  # its content is more element headers
        else:
            self.done = True  # an undefined-length UN: its inner encoding is not followed

    def _pass(self, length: int) -> None:
        if length <= self._available():
            self._pos += length
        else:
            self._skip = length - self._available()
            self._pos = len(self._buffer)


def _meta_transfer_syntax(meta: bytes) -> str:
    """The Transfer Syntax UID (0002,0010) of a file meta group (Explicit VR Little Endian)."""
    pos = 0
    while pos + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, pos)
        vr = meta[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, start = struct.unpack_from("<L", meta, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", meta, pos + 6)[0], pos + 8
        if (group, element) == (0x0002, 0x0010):
            return meta[start : start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    raise ValueError("no transfer syntax in the file meta")
