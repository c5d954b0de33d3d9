"""How the printed report is drawn: an A4 page with a footer, and the handful of blocks the
report is made of (headings, label-value lines, the caution box, tables, pictures side by
side). Each block is a small function of the page, so that `pdf` reads as the report's outline.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence

from fpdf import FPDF, FontFace
from fpdf.enums import XPos, YPos

from appliance.report.fonts import ReportFonts

FAMILY = "Report"
BODY, SMALL, TITLE, HEADING = 10.0, 7.5, 16.0, 12.0  # font sizes in points
LINE = 5.0  # body line height in mm
MARGIN = 15.0
GAP = 6.0  # between pictures side by side
PICTURE_HEIGHT = 85.0  # the tallest a picture may be drawn, mm
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CAUTION_INK, _CAUTION_FILL = (160, 0, 0), (255, 236, 230)
_RULE_GREY, _TEXT_GREY = 170, 90


class Page(FPDF):
    """A4 portrait with the report's fonts and a footer: who generated it, when, the page.

    A character the fonts have no glyph for would print as nothing, so that an impression in
    a script the font lacks would lose letters without a trace: each is printed as the fonts'
    stand-in instead, and `unshown` says that it happened, for the report to say why.
    """

    def __init__(self, fonts: ReportFonts, footer_text: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.report_fonts = fonts
        self.unshown = False
        self.footer_text = footer_text
        self.add_font(FAMILY, "", str(fonts.regular))
        self.add_font(FAMILY, "B", str(fonts.bold))
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(auto=True, margin=MARGIN + 5)
        self.alias_nb_pages()

    def normalize_text(self, text: str) -> str:
        missing = self.report_fonts.missing(text, bold="B" in self.font_style)
        if missing:
            self.unshown = True
            mark = self.report_fonts.stand_in()
            text = "".join(mark if c in missing else c for c in text)
        return super().normalize_text(text)

    def footer(self) -> None:
        self.set_y(-MARGIN)
        self.set_font(FAMILY, "", SMALL)
        self.set_text_color(_TEXT_GREY)
        text = f"{self.footer_text} · page {self.page_no()} of {{nb}}"
        self.cell(0, 4, text, align="C")
        self.set_text_color(0)


def title(page: Page, site: str, heading: str) -> None:
    page.set_font(FAMILY, "B", TITLE)
    page.multi_cell(0, 8, site or heading, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if site:
        page.set_font(FAMILY, "", HEADING)
        page.multi_cell(0, 6, heading, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    rule(page)


def rule(page: Page) -> None:
    page.set_draw_color(_RULE_GREY)
    page.set_line_width(0.2)
    y = page.get_y() + 1.5
    page.line(MARGIN, y, page.w - MARGIN, y)
    page.set_y(y + 2.5)
    page.set_draw_color(0)


def heading(page: Page, text: str, room: float = 3 * LINE) -> None:
    """A section heading, moved to the next page unless `room` mm of its section fit below."""
    if page.will_page_break(8 + room):
        page.add_page()
    page.ln(2)
    page.set_font(FAMILY, "B", HEADING)
    page.multi_cell(0, 7, text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    page.set_font(FAMILY, "", BODY)


def paragraph(page: Page, text: str, *, bold: bool = False, size: float = BODY) -> None:
    page.set_font(FAMILY, "B" if bold else "", size)
    page.multi_cell(0, LINE * size / BODY, text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    page.set_font(FAMILY, "", BODY)


def small(page: Page, text: str) -> None:
    page.set_text_color(_TEXT_GREY)
    paragraph(page, text, size=SMALL)
    page.set_text_color(0)


def key_values(page: Page, rows: Sequence[tuple[str, str]], key_width: float = 38.0) -> None:
    """Label: value lines, the labels in bold in a column of their own."""
    for key, value in rows:
        page.set_font(FAMILY, "B", BODY)
        page.cell(key_width, LINE, key)
        page.set_font(FAMILY, "", BODY)
        page.multi_cell(0, LINE, value, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def caution_box(page: Page, text: str) -> None:
    """The caution in a red-bordered box: what must be read before anything else."""
    page.set_draw_color(*_CAUTION_INK)
    page.set_fill_color(*_CAUTION_FILL)
    page.set_text_color(*_CAUTION_INK)
    page.set_line_width(0.6)
    page.set_font(FAMILY, "B", BODY + 1)
    page.multi_cell(
        0, LINE + 1, f"Caution: {text}", border=1, fill=True, padding=3, align="L",
        new_x=XPos.LMARGIN, new_y=YPos.NEXT,
    )  # fmt: skip
    page.set_draw_color(0)
    page.set_fill_color(255)
    page.set_text_color(0)
    page.set_line_width(0.2)
    page.set_font(FAMILY, "", BODY)
    page.ln(2)


def table(
    page: Page,
    headings: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[float],
    align: Sequence[str],
) -> None:
    """A bordered table with a bold heading row (repeated on a new page)."""
    page.set_font(FAMILY, "", BODY)
    with page.table(
        col_widths=tuple(widths),
        text_align=tuple(align),
        headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
        line_height=LINE + 0.5,
        padding=1,
        width=page.epw,
    ) as grid:
        head = grid.row()
        for text in headings:
            head.cell(text)
        for values in rows:
            row = grid.row()
            for text in values:
                row.cell(text)
    page.ln(2)


def row_height(page: Page, pair: Sequence[tuple[str, bytes]]) -> float:
    """The height a row of pictures takes, caption and gap included."""
    width = (page.epw - GAP) / 2
    return min(PICTURE_HEIGHT, max(_fitted_height(data, width) for _, data in pair)) + 2 * LINE


def pictures(page: Page, items: Sequence[tuple[str, bytes]]) -> None:
    """Pictures (caption, PNG) two by two across the page, each fitted into its half."""
    width = (page.epw - GAP) / 2
    for start in range(0, len(items), 2):
        pair = items[start : start + 2]
        height = row_height(page, pair) - 2 * LINE
        if page.will_page_break(height + 2 * LINE):
            page.add_page()
        top = page.get_y()
        for n, (caption, data) in enumerate(pair):
            x = MARGIN + n * (width + GAP)
            page.set_xy(x, top)
            page.set_font(FAMILY, "B", BODY)
            page.cell(width, LINE, caption)
            _picture(page, data, x, top + LINE, width, height)
        page.set_xy(MARGIN, top + LINE + height + 2)


def _picture(page: Page, data: bytes, x: float, y: float, width: float, height: float) -> None:
    if not data.startswith(_PNG_SIGNATURE):
        page.set_xy(x, y)
        page.set_font(FAMILY, "", BODY)
        page.multi_cell(
            width, LINE, "(this picture is not a PNG image and cannot be shown)", align="L"
        )
        return
    page.image(io.BytesIO(data), x=x, y=y, w=width, h=height, keep_aspect_ratio=True)


def _fitted_height(data: bytes, width: float) -> float:
    """The height a PNG takes at `width` (from its header), PICTURE_HEIGHT if unknown."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 24:
        return PICTURE_HEIGHT / 3
    columns, rows = struct.unpack(">II", data[16:24])
    return width * rows / columns if columns else PICTURE_HEIGHT
