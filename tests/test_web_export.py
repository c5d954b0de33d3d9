"""Export to USB from the study page: the places listed are the writable export folders (and
sticks mounted under them), the File-set written there holds the study's original and its
newest objects, the export is audited, and any other place (outside the folders, with "..",
not writable) is refused with a message and nothing written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from appliance.store import outbox
from appliance.store.audit import recent

from test_dicomout_fileset import read_fileset
from test_web_sending import Box, Template, add_outputs, make_template, open_box, plain_text


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("export"))


@pytest.fixture
def usb(tmp_path: Path) -> Path:
    folder = tmp_path / "media" / "STICK"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def box(template: Template, tmp_path: Path, usb: Path) -> Iterator[Box]:
    opened = open_box(template, tmp_path, export={"folders": [str(usb), "/proc"]})
    yield opened
    opened.store.close()


def export_to(box: Box, target: str, token: str | None = None) -> Any:
    return box.client.post(
        f"/study/{box.study_id}/export", data={"target": target, "csrf_token": token or box.token()}
    )


def targets_on(html: str) -> list[str]:
    return re.findall(r'<input type="hidden" name="target" value="([^"]+)">', html)


def test_the_page_lists_the_writable_places_and_the_files(box: Box, usb: Path) -> None:
    add_outputs(box)
    box.sign_in("clinician")
    html = box.page(f"/study/{box.study_id}/export")
    listed = targets_on(html)
    assert listed[0] == str(usb)
    assert set(listed) <= {str(usb), "/proc"}  # /proc only where root may write there
    text = plain_text(html)
    assert "The study's 4 file(s)" in text and f"Export to {usb}" in text
    assert "PÉREZ, ANA" in text


def test_clinicians_and_admins_only(box: Box, usb: Path) -> None:
    box.sign_in("technologist")
    assert box.client.get(f"/study/{box.study_id}/export").status_code == 403
    assert export_to(box, str(usb)).status_code == 403
    assert list(usb.iterdir()) == []
    assert box.client.get("/study/9999/export").status_code in (403, 404)


def test_exporting_writes_the_fileset_says_where_and_is_audited(box: Box, usb: Path) -> None:
    made = add_outputs(box)
    name = box.sign_in("admin")
    response = export_to(box, str(usb))
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/study/{box.study_id}#sending")
    folder = usb / "ACC_42"
    assert f"4 file(s) written to {folder}. The stick can be taken out." in box.text()
    with read_fileset(folder / "DICOMDIR") as fileset:
        uids = {str(instance.SOPInstanceUID) for instance in fileset}
        assert all(instance.load().PatientID == "EXP-001" for instance in fileset)
    original = dcmread(box.store.file_of(box.instance_id), stop_before_pixels=True)
    objects = {
        str(outbox.output_by_id(box.store.conn, i)["sop_instance_uid"])  # type: ignore[index]
        for i in made.values()
    }
    assert uids == {str(original.SOPInstanceUID), *objects}
    [entry] = recent(box.store.conn, "export")
    assert (entry["actor"], entry["subject"]) == (f"ui:{name}", f"study:{box.study_id}")
    assert entry["detail"]["folder"] == str(folder) and entry["detail"]["files"] == 4
    export_to(box, str(usb))  # again: a folder of its own
    assert sorted(p.name for p in usb.iterdir()) == ["ACC_42", "ACC_42_2"]


def test_places_not_listed_are_refused_and_nothing_is_written(
    box: Box, usb: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    box.sign_in("clinician")
    for target in (
        str(elsewhere),
        str(usb / ".." / ".." / "elsewhere"),
        str(usb) + "/",
        str(usb / "ACC_42"),
        "/",
        "",
        "../../etc",
    ):
        response = export_to(box, target)
        assert response.status_code == 302, target
        assert response.headers["Location"].endswith(f"/study/{box.study_id}/export")
        text = box.text(f"/study/{box.study_id}/export")
        assert f"“{target}” is not one of the export places listed: nothing was written." in text
    assert list(elsewhere.iterdir()) == [] and list(usb.iterdir()) == []
    assert len(recent(box.store.conn, "export.refused")) == 7
    assert recent(box.store.conn, "export") == []


def test_a_place_that_cannot_be_written_is_refused_with_the_reason(box: Box) -> None:
    """/proc is configured: listed only where root's permission bits let it through, and
    refused either way (nothing can be made there)."""
    box.sign_in("clinician")
    export_to(box, "/proc")
    text = box.text(f"/study/{box.study_id}/export")
    assert (
        "Cannot write to /proc" in text or "“/proc” is not one of the export places listed" in text
    )
    assert not Path("/proc/ACC_42").exists()
    assert recent(box.store.conn, "export") == []


def test_a_missing_spool_file_fails_the_export_with_a_message(box: Box, usb: Path) -> None:
    box.store.file_of(box.instance_id).unlink()
    box.sign_in("clinician")
    export_to(box, str(usb))
    text = box.text(f"/study/{box.study_id}/export")
    assert re.search(r"The file \w+\.dcm of this study cannot be read: nothing was written", text)
    assert list(usb.iterdir()) == []
    [failed] = recent(box.store.conn, "export.failed")
    assert failed["detail"]["target"] == str(usb)


def test_without_a_stick_the_page_says_what_to_do(template: Template, tmp_path: Path) -> None:
    box = open_box(template, tmp_path, export={"folders": [str(tmp_path / "media")]})
    try:
        box.sign_in("clinician")
        html = box.page(f"/study/{box.study_id}/export")
        assert targets_on(html) == []
        assert "Plug in a USB stick and look again" in plain_text(html)
    finally:
        box.store.close()


def test_the_export_needs_the_token(box: Box, usb: Path) -> None:
    box.sign_in("clinician")
    assert export_to(box, str(usb), token="forged").status_code == 400
    assert list(usb.iterdir()) == []


def test_read_first_keeps_the_findings_off_the_stick_until_the_impression(
    template: Template, tmp_path: Path, usb: Path
) -> None:
    box = open_box(template, tmp_path, export={"folders": [str(usb)]}, ui={"read_first": True})
    try:
        box.sign_in("clinician")
        page = box.client.get(f"/study/{box.study_id}/export", follow_redirects=True)
        assert "Record your own impression of this study first" in plain_text(page.get_data(True))
        assert export_to(box, str(usb)).status_code == 302
        assert list(usb.iterdir()) == []
    finally:
        box.store.close()
