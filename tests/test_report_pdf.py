"""The printed report: rendered with fpdf2 and read back by poppler (pdftotext for the words,
pdffonts for the embedded fonts, pdfinfo for the page size); names with accents, the findings
in plain words, the caution, the models, the impression and its signer; the same content gives
the same bytes; a missing font is a clear error."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.domain import Impression, ReportContent, ReportHeader, ReportPictures
from appliance.errors import ApplianceError
from appliance.report import fonts
from appliance.report.fonts import ReportFontError
from appliance.report.pdf import render_report

from report_samples import (
    CAUTION,
    SHA,
    SIGNED_AT,
    chest_source,
    clinical,
    content,
    header_of,
    held_back,
    overlay,
    png,
    renamed,
)

needs_poppler = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="poppler-utils is not installed (.ci/run does)"
)
pytestmark = needs_poppler

PICTURES = ReportPictures(png(overlay()), (("pleural_effusion", png(overlay(40, 40))),))


def header(patient_name: str = "Müller^Jürgen") -> ReportHeader:
    return replace(header_of(chest_source()), patient_name=patient_name, birth_date="19580214")


def poppler(tool: str, path: Path, *options: str) -> str:
    done = subprocess.run(
        [tool, *options, str(path), *(["-"] if tool == "pdftotext" else [])],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout.decode("utf-8")


def rendered(
    tmp_path: Path,
    report: ReportContent | None = None,
    pictures: ReportPictures = PICTURES,
    name: str = "Müller^Jürgen",
    **kwargs: object,
) -> tuple[Path, str]:
    """The PDF written to a file and its text as laid out, runs of spaces and lines joined."""
    data = render_report(report or content(), header(name), pictures, **kwargs)  # type: ignore[arg-type]
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    return path, " ".join(poppler("pdftotext", path, "-layout").split())


def test_the_report_names_the_patient_and_study(tmp_path: Path) -> None:
    _, text = rendered(tmp_path)
    assert "Klinik Süd" in text and "Findings report" in text
    assert "Patient Müller, Jürgen" in text
    assert "Patient ID SYNCXR0001" in text
    assert "Birth date 1958-02-14" in text
    assert "Study date 2026-11-01 09:30 (modality's clock)" in text  # every other time is UTC
    assert "Accession CXR000007" in text


def test_the_caution_comes_first_in_a_box(tmp_path: Path) -> None:
    _, text = rendered(tmp_path)
    assert f"Caution: {CAUTION}" in text
    assert text.index("Caution:") < text.index("Patient and study")
    _, cleared = rendered(tmp_path, clinical(content()))
    assert "Caution" not in cleared


def test_the_findings_are_in_plain_words(tmp_path: Path) -> None:
    _, text = rendered(tmp_path)
    assert (
        "Findings above the operating thresholds: Pleural effusion, Pneumothorax, Consolidation."
        in text
    )
    assert re.search(r"Pleural effusion 0\.91 0\.50 above threshold", text)
    assert re.search(r"Lung nodule 0\.12 0\.45 below threshold", text)
    assert "Pneumothorax marked; area 33.5 mm²" in text
    # A long result wraps in its cell, around the finding's name on the middle line.
    assert re.search(
        r"marked in 2 regions; area not (measurable: )?Consolidation (measurable: )?"
        r"no calibrated pixel spacing",
        text,
    )
    assert "Free fluid nothing marked" in text
    # A model's output is never worded as a diagnosis, whatever model made it.
    assert not re.search(r"(?<!\w)(not )?found(?!\w)", text)
    assert "none of this is a diagnosis" in text


def test_the_models_are_named_with_their_hashes(tmp_path: Path) -> None:
    _, text = rendered(tmp_path)
    assert "Chest X-ray demo" in text
    assert "chest-demo, version 1.4.2" in text
    assert f"SHA-256 {SHA[:12]}" in text and f"SHA-256 {SHA}" in text
    assert "onnxruntime, int8" in text
    assert "Not for clinical use." in text


def test_the_feedback_and_the_signed_impression(tmp_path: Path) -> None:
    _, text = rendered(tmp_path)
    assert "Pleural effusion: agree: Clear meniscus on the right." in text
    assert "Dr Ana Łukasik (radiologist), 2026-03-04 10:40 UTC" in text
    assert "Right pleural effusion; no pneumothorax on review." in text
    assert "Signed by Łukasik, Ana (radiologist) on 2026-03-04 11:00 UTC." in text


def test_a_draft_or_missing_impression_says_there_is_no_final_one(tmp_path: Path) -> None:
    draft = Impression("Maybe effusion.", "Dr Berg", "resident", "2026-03-04T10:00:00Z", False)
    _, text = rendered(tmp_path, content(impression=draft))
    assert "Draft by Dr Berg (resident) on 2026-03-04 10:00 UTC, not signed." in text
    assert "No final impression yet." in text
    _, none = rendered(tmp_path, content(impression=None, feedback=()))
    assert "No final impression yet." in none and "No feedback on these findings yet." in none


def test_a_held_back_image_says_why(tmp_path: Path) -> None:
    _, text = rendered(tmp_path, held_back())
    assert (
        "The image was held back: it did not pass the plausibility check, so no model result "
        "is reported: the image looks like a lateral view; the model reads PA chest "
        "radiographs." in text
    )
    assert "Threshold" not in text  # no findings table


def test_the_pictures_are_shown_or_their_absence_said(tmp_path: Path) -> None:
    path, text = rendered(tmp_path)
    assert "The image" in text and "With heatmap: Pleural effusion" in text
    images = subprocess.run(
        ["pdfimages", "-list", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert len(images.strip().splitlines()) - 2 >= 2  # two header lines, then one per image
    _, bare = rendered(tmp_path, pictures=ReportPictures(None))
    assert "No pictures are available for this image." in bare


def test_a_revision_names_the_report_it_replaces(tmp_path: Path) -> None:
    _, text = rendered(tmp_path, content(revision=3, replaces={"report": "1.2.826.0.1.9.8"}))
    assert "Revision 3. This report replaces report 1.2.826.0.1.9.8." in text
    _, first = rendered(tmp_path)
    assert "Revision" not in first


def test_every_page_is_numbered_and_dated(tmp_path: Path) -> None:
    path, text = rendered(tmp_path)
    pages = int(re.search(r"Pages:\s+(\d+)", poppler("pdfinfo", path)).group(1))  # type: ignore[union-attr]
    for page in range(1, pages + 1):
        assert (
            f"Generated by the appliance on 2026-03-04 11:05 UTC · page {page} of {pages}" in text
        )
    assert "595.28 x 841.89 pts (A4)" in poppler("pdfinfo", path)


@pytest.mark.parametrize(
    ("name", "shown"),
    [("Διονυσιος^Ελένη", "Διονυσιος, Ελένη"), ("Люксембург^Анна", "Люксембург, Анна")],
)
def test_greek_and_cyrillic_names_print(tmp_path: Path, name: str, shown: str) -> None:
    _, text = rendered(tmp_path, name=name)
    assert f"Patient {shown}" in text


def test_a_name_in_several_forms_prints_the_forms_the_font_can_show(tmp_path: Path) -> None:
    _, text = rendered(tmp_path, name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert "Patient Yamada, Tarou Patient ID" in text


def test_a_name_the_font_cannot_show_says_so(tmp_path: Path) -> None:
    _, text = rendered(tmp_path, name="山田^太郎")
    assert (
        "(the report's font cannot show U+5C71, U+7530, U+592A, U+90CE: see outputs.report_font)"
        in text
    )


def test_text_the_font_cannot_show_is_marked_never_silently_lost(tmp_path: Path) -> None:
    """A site name or an impression in a script the font lacks would print as nothing (a
    blank title, an impression missing its words): each such character prints as the
    replacement character, and the report says why."""
    japanese = Impression("右側胸水 on the right.", "Łukasik, Ana", "radiologist", SIGNED_AT, True)
    _, text = rendered(tmp_path, content(site_name="北病院", impression=japanese))
    assert text.startswith("��� Findings report")
    assert "���� on the right. Signed by Łukasik, Ana" in text
    assert "Characters printed as � cannot be shown by the report's font" in text
    _, latin = rendered(tmp_path)
    assert "�" not in latin and "cannot be shown" not in latin


def test_a_name_from_a_dicom_file_prints_readably(tmp_path: Path) -> None:
    source = renamed("CT_small.dcm", "Müller^Jürgen^Karl")
    data = render_report(content(), header_of(source), PICTURES)
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    assert "Müller, Jürgen, Karl" in poppler("pdftotext", path)


def test_the_fonts_are_embedded_truetype_and_no_core_font(tmp_path: Path) -> None:
    path, _ = rendered(tmp_path)
    listing = poppler("pdffonts", path).splitlines()[2:]
    assert len(listing) == 2
    assert all("TrueType" in line and " yes yes " in line for line in listing)
    assert any("DejaVuSans-Bold" in line or "DejaVuSansBold" in line for line in listing)


def test_a_font_given_is_the_one_embedded(tmp_path: Path) -> None:
    serif = fonts.DEJAVU / "DejaVuSerif.ttf"
    path, text = rendered(tmp_path, font=serif)
    assert "Müller, Jürgen" in text
    assert all("DejaVuSerif" in line for line in poppler("pdffonts", path).splitlines()[2:])


def test_the_same_content_gives_the_same_bytes() -> None:
    first = render_report(content(), header(), PICTURES)
    assert first == render_report(content(), header(), PICTURES)
    later = render_report(content(made_at="2026-03-05T09:00:00Z"), header(), PICTURES)
    assert later != first


def test_a_missing_font_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "NotoSans.ttf"
    with pytest.raises(ReportFontError, match=re.escape(str(missing))) as raised:
        render_report(content(), header(), PICTURES, font=missing)
    assert isinstance(raised.value, ApplianceError)


def test_a_missing_system_font_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "DejaVuSans.ttf"
    monkeypatch.setattr(fonts, "DEJAVU_REGULAR", gone)
    with pytest.raises(ReportFontError, match="fonts-dejavu-core") as raised:
        render_report(content(), header(), PICTURES)
    assert str(gone) in str(raised.value)


def test_a_file_that_is_not_a_font_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "font.ttf"
    fake.write_text("not a font")
    with pytest.raises(ReportFontError, match="not a TrueType"):
        render_report(content(), header(), PICTURES, font=fake)
