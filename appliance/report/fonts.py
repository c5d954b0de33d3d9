"""The TrueType fonts the printed report embeds: a patient's name must print as written, in any
script the font covers, on a box that has no network and must not fall back to the PDF core
fonts (Latin-1 only).

By default DejaVu Sans and DejaVu Sans Bold from the system (Debian: fonts-dejavu-core, which
covers Latin, Greek and Cyrillic); a site whose patients' names need other scripts sets
`outputs.report_font` to a font that covers them, used for both weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont  # type: ignore[import-untyped]  # ships no type hints

from appliance.errors import ApplianceError

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
DEJAVU_REGULAR = DEJAVU / "DejaVuSans.ttf"
DEJAVU_BOLD = DEJAVU / "DejaVuSans-Bold.ttf"
DEJAVU_PACKAGE = "fonts-dejavu-core"
_TRUETYPE = (b"\x00\x01\x00\x00", b"true", b"OTTO")  # sfnt versions: TrueType, Apple, CFF
UNSHOWN = "\ufffd"  # printed for a character the font has no glyph for


class ReportFontError(ApplianceError):
    """The report's font is missing or is not a TrueType font; the message names the file."""


@dataclass(frozen=True)
class ReportFonts:
    regular: Path
    bold: Path

    def missing(self, text: str, *, bold: bool = False) -> str:
        """The characters of `text` that the regular (or bold) font has no glyph for (they
        would print as nothing), in order, each once."""
        covered = _code_points(self.bold if bold else self.regular)
        return "".join(dict.fromkeys(c for c in text if not c.isspace() and ord(c) not in covered))

    def stand_in(self) -> str:
        """What a character the fonts cannot show is printed as: the replacement character
        where both fonts have it, else a question mark."""
        covered = _code_points(self.regular) & _code_points(self.bold)
        return UNSHOWN if ord(UNSHOWN) in covered else "?"


@lru_cache(maxsize=4)
def _code_points(path: Path) -> frozenset[int]:
    font = TTFont(str(path), lazy=True)
    try:
        return frozenset(font.getBestCmap() or {})
    finally:
        font.close()


def report_fonts(font: Path | None = None) -> ReportFonts:
    """The fonts to embed: `font` for both weights when given, else DejaVu Sans and Bold.

    Raises ReportFontError naming the missing file (and, for DejaVu, the package to install).
    """
    if font is not None:
        _check(font, f"the report font {font} (outputs.report_font) is missing")
        return ReportFonts(font, font)
    for path in (DEJAVU_REGULAR, DEJAVU_BOLD):
        _check(
            path,
            f"the report font {path} is missing: install the Debian package {DEJAVU_PACKAGE}"
            " or set outputs.report_font to a TrueType font",
        )
    return ReportFonts(DEJAVU_REGULAR, DEJAVU_BOLD)


def _check(path: Path, missing: str) -> None:
    if not path.is_file():
        raise ReportFontError(missing)
    with path.open("rb") as handle:
        if handle.read(4) not in _TRUETYPE:
            raise ReportFontError(f"the report font {path} is not a TrueType or OpenType font")
