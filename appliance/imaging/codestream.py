"""What a compressed frame says about its own size, read from its first bytes without decoding.

A JPEG, JPEG-LS or JPEG 2000 decoder allocates what the codestream declares, not what the
DICOM header says: a 64 x 64 image whose codestream declares 60000 x 60000 makes the decoder
ask for gigabytes (a decompression bomb). The receiver, the import page and `decode` read the
frame header here and refuse a codestream larger than Rows, Columns or Samples per Pixel.

Headers read: JPEG SOFn (ITU T.81 B.2.2) and JPEG-LS SOF55 (T.87 C.2.2): height, width,
components; JPEG 2000 SIZ (T.800 A.5.1): Xsiz - XOsiz, Ysiz - YOsiz, Csiz, in a bare codestream
or in a JP2 file's codestream box.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from appliance.errors import RejectedInput

_JPEG_FAMILY = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes)
_JPEG_2000 = frozenset(JPEG2000TransferSyntaxes)
COMPRESSED_SYNTAXES = _JPEG_FAMILY | _JPEG_2000
# Start of frame markers: SOF0-3, 5-7, 9-11, 13-15 (C4 DHT, C8 JPG, CC DAC are not frames),
# and SOF55 (F7) of JPEG-LS.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOF |= {0xF7}
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length
_SOS = 0xDA
_SOC_SIZ = b"\xff\x4f\xff\x51"  # JPEG 2000: start of codestream, then the SIZ marker


@dataclass(frozen=True)
class FrameSize:
    """The size a codestream declares (height 0: a JPEG that gives it later, in a DNL)."""

    height: int
    width: int
    components: int


def frame_size(transfer_syntax: str, data: bytes) -> FrameSize | None:
    """The size declared by the codestream that `data` starts (a frame's first bytes), or None
    when the syntax is not JPEG, JPEG-LS or JPEG 2000, or `data` ends before the header."""
    if transfer_syntax in _JPEG_2000:
        return _siz_size(data)
    if transfer_syntax in _JPEG_FAMILY:
        return _sof_size(data)
    return None


def check_frame_size(
    transfer_syntax: str, data: bytes, rows: int, columns: int, samples: int, *, whole: bool
) -> None:
    """Refuse (RejectedInput) a codestream declaring more rows, columns or components than the
    header; `whole` says `data` is the whole frame, so a missing frame header is refused too."""
    if transfer_syntax not in COMPRESSED_SYNTAXES:
        return
    size = frame_size(transfer_syntax, data)
    if size is None:
        if whole:
            raise RejectedInput(
                "the compressed pixel data has no frame header (JPEG SOF or JPEG 2000 SIZ)"
            )
        return
    if size.height > rows or size.width > columns or size.components > samples:
        raise RejectedInput(
            f"the compressed pixel data declares {size.height} x {size.width} pixels with "
            f"{size.components} component(s), but the header says {rows} x {columns} with "
            f"{samples} sample(s) per pixel (a decompression bomb or a corrupt file)"
        )


def _siz_size(data: bytes) -> FrameSize | None:
    """JPEG 2000: the SIZ segment after the SOC marker (also inside a JP2 'jp2c' box)."""
    at = data.find(_SOC_SIZ)
    if at < 0 or len(data) < at + 4 + 38:
        return None
    # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz
    fields = struct.unpack(">HHIIIIIIIIH", data[at + 4 : at + 4 + 38])
    xsiz, ysiz, xosiz, yosiz, csiz = fields[2], fields[3], fields[4], fields[5], fields[10]
    return FrameSize(max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), csiz)


def _sof_size(data: bytes) -> FrameSize | None:
    """JPEG and JPEG-LS: walk the marker segments from SOI to the first SOFn (before SOS)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None  # not on a marker: a corrupt stream, which the decoder reports
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker == _SOS:
            return None
        if marker in _SOF:
            if len(data) < at + 10:
                return None
            height, width, components = struct.unpack(">HHB", data[at + 5 : at + 10])
            return FrameSize(height, width, components)
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return None
