"""The study view: images rendered from the spool, findings with bars and plain sentences, the
demo banner, heatmaps only for those who may see them, feedback, impressions, "read first" and
the audit of who viewed which patient. The store is the one test_web_worklist seeds: real
findings from the real worker and the demo models."""

from __future__ import annotations

import html as html_lib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.store import feedback, held_back, open_store
from appliance.store.audit import recent

from test_web_worklist import (
    EXPECTED_ORDER,
    PATIENTS,
    Seeded,
    Template,
    make_template,
    open_seeded,
    page,
)
from worker_fixtures import drain, open_worker


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("seeded-study"))


@pytest.fixture
def seeded(template: Template, tmp_path: Path) -> Iterator[Seeded]:
    opened = open_seeded(template, tmp_path)
    yield opened
    opened.store.close()


@pytest.fixture
def read_first(template: Template, tmp_path: Path) -> Iterator[Seeded]:
    opened = open_seeded(template, tmp_path, ui={"read_first": True})
    yield opened
    opened.store.close()


def study_url(seeded: Seeded, name: str) -> str:
    return f"/study/{seeded.studies[name]}"


def image_url(seeded: Seeded, name: str, **params: Any) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    url = f"{study_url(seeded, name)}/image/{seeded.instances[name]}.png"
    return f"{url}?{query}" if query else url


def token_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match
    return match.group(1)


def findings_in(html: str) -> list[tuple[str, str]]:
    """(finding id, label) of each `li.finding`, in page order."""
    pattern = r'<li class="finding[^"]*"\s+id="[^"]+"\s+data-finding-id="(\d+)" data-label="(\w+)"'
    return re.findall(pattern, html)


def finding_ids(seeded: Seeded, name: str) -> list[int]:
    rows = seeded.store.conn.execute(
        "SELECT id FROM findings WHERE instance_ref = ? ORDER BY id", (seeded.instances[name],)
    )
    return [int(row[0]) for row in rows]


def artifact_ids(seeded: Seeded, name: str, kind: str | None = None) -> list[int]:
    rows = seeded.store.conn.execute(
        "SELECT a.id, a.kind FROM artifacts a JOIN findings f ON f.id = a.finding_ref"
        " WHERE f.instance_ref = ? ORDER BY a.id",
        (seeded.instances[name],),
    )
    return [int(row[0]) for row in rows if kind is None or row[1] == kind]


def split_details(html: str) -> tuple[str, str]:
    """The page without its <details> elements (what shows before a tap), and their insides."""
    pattern = re.compile(r"<details\b.*?</details>", re.S)
    return pattern.sub("", html), "\n".join(pattern.findall(html))


def words(html: str) -> str:
    """The text of some HTML, tags left out (attribute values are not words on the screen)."""
    return re.sub(r"<[^>]+>", " ", html)


def png_of(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture is not None
    return picture


# --- access ----------------------------------------------------------------------------------


def test_signed_out_every_study_route_redirects_to_sign_in(seeded: Seeded) -> None:
    artifact = artifact_ids(seeded, "effusion")[0]
    for path in (
        study_url(seeded, "effusion"),
        image_url(seeded, "effusion"),
        f"/artifact/{artifact}.png",
    ):
        response = seeded.client.get(path)
        assert response.status_code == 302, path
        assert "/signin" in response.headers["Location"]
    for path in ("feedback", "impression"):
        response = seeded.client.post(f"{study_url(seeded, 'effusion')}/{path}", data={})
        assert response.status_code == 302 and "/signin" in response.headers["Location"]


def test_unknown_studies_images_and_pictures_are_404(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    effusion, other = seeded.studies["effusion"], seeded.instances["normal"]
    assert seeded.client.get("/study/9999").status_code == 404
    assert seeded.client.get(f"/study/{effusion}/image/{other}.png").status_code == 404
    assert seeded.client.get("/study/9999/image/1.png").status_code == 404
    assert seeded.client.get("/artifact/9999.png").status_code == 404
    assert seeded.client.get("/artifact/..%2F..%2Fappliance.sqlite3.png").status_code == 404
    assert seeded.client.get("/artifact/-1.png").status_code == 404
    huge = "9" * 25  # past SQLite's integers
    for path in (f"/study/{huge}", f"/study/{effusion}/image/{huge}.png", f"/artifact/{huge}.png"):
        assert seeded.client.get(path).status_code == 404, path
    superscript = seeded.client.get(
        f"/study/{effusion}/image/{seeded.instances['effusion']}.png?frame=\u00b2"
    )
    assert superscript.status_code == 400


# --- the page --------------------------------------------------------------------------------


def test_a_chest_shows_every_label_with_bar_sentence_model_and_demo_banner(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    html = page(seeded, study_url(seeded, "effusion"))
    [finding_id] = finding_ids(seeded, "effusion")
    labels = findings_in(html)
    assert {label for _, label in labels} == {
        "pleural_effusion",
        "lung_nodule",
        "consolidation",
        "pneumothorax",
        "cardiomegaly",
    }
    assert labels[0] == (str(finding_id), "pleural_effusion")  # positives first
    text = html_lib.unescape(html)
    visible, details = split_details(text)
    assert '<p class="explanation">Pleural effusion: flagged urgent</p>' in visible
    assert '<p class="explanation">Cardiomegaly: not flagged</p>' in visible
    assert "threshold" not in words(visible) and "score 0" not in words(visible)
    assert re.search(
        r"Pleural effusion: score \d\.\d\d, above the operating threshold 0\.45", details
    )
    assert re.search(r"Cardiomegaly: score 0\.\d\d, below the operating threshold 0\.25", details)
    assert len(re.findall(r'<svg class="score-bar"', html)) == 5
    bar = re.search(r'<rect class="score" x="0" y="2" width="([\d.]+)"', html)
    line = re.search(r'<line class="threshold" x1="([\d.]+)"', html)
    assert bar and float(bar.group(1)) > 90 and line and float(line.group(1)) == 44.7
    assert 'class="demo-banner"' in html
    assert "Demo model trained on synthetic images only. Not for clinical use." in text
    assert "Model demo-chest-xray, version 0.1.0" in details
    assert "Chest X-ray findings (demo)" in visible


def test_the_viewer_dom_contract(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    html = page(seeded, study_url(seeded, "effusion"))
    assert re.search(r'<img id="image" src="[^"]+/image/\d+\.png\?frame=0"', html)
    [heatmap] = artifact_ids(seeded, "effusion", "heatmap")
    assert re.search(rf'<img class="heatmap-layer" src="/artifact/{heatmap}\.png"', html)
    assert re.search(r'<button type="button" id="toggle-heatmap"[^>]*aria-pressed="true"', html)
    assert re.search(r'<input type="range" id="heatmap-opacity"', html)
    for verdict in ("agree", "disagree", "unsure"):
        assert html.count(f'data-verdict="{verdict}"') == 5
    assert html.count('<textarea class="feedback-comment"') == 5
    assert '<form id="impression"' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html and "<style" not in html
    for asset in ("viewer.js", "study.css"):
        assert seeded.client.get(f"/static/{asset}").status_code == 200


def test_an_ultrasound_clip_shows_its_outline_area_and_frames(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    html = page(seeded, study_url(seeded, "ultrasound"))
    text = html_lib.unescape(html)
    assert re.search(r"Anechoic fluid: outlined area \d+ mm²: flagged for review", text)
    assert 'id="play-pause"' in html and 'data-fps="25' in html  # the file's cine rate
    outline = re.search(r'<polygon class="outline" points="([\d, ]+)"', html)
    assert outline and len(outline.group(1).split()) > 10
    assert 'viewBox="0 0 640 480"' in html
    assert "Frame 1 of 4" in text
    assert 'id="next-frame"' in html and 'id="prev-frame"' in html
    [overlay] = artifact_ids(seeded, "ultrasound", "overlay")
    assert f'src="/artifact/{overlay}.png"' in html  # no heatmap: the overlay is the layer
    assert "Frame 3 of 4" in html_lib.unescape(
        page(seeded, study_url(seeded, "ultrasound") + "?frame=2")
    )
    assert "window-tools" not in html  # colour: no window/level


@pytest.mark.parametrize(
    ("name", "outcome", "headline", "shown", "detail"),
    [
        ("blank", "held_back", "Held back", ["Check the image", "Analyse anyway"], "input of this"),
        ("failed", "failed", "Analysis failed", [], "test-broken"),
        ("hand", "no_model", "No AI model", ["reviews it without AI"], "no model for this"),
        ("effusion", "findings", "Findings", ["Urgent: Pleural effusion"], ""),
        ("normal", "no_findings", "No findings", ["flagged nothing"], ""),
    ],
)
def test_each_image_state_is_told_apart_in_plain_words(
    seeded: Seeded, name: str, outcome: str, headline: str, shown: list[str], detail: str
) -> None:
    """Findings, no findings, held back, no model, failed: each its own headline and what to
    do; the stored reason (technical) only inside the collapsed Details."""
    seeded.sign_in("technologist")
    state = image_state_of(page(seeded, study_url(seeded, name)))
    assert f'data-outcome="{outcome}"' in state
    visible, details = split_details(state)
    assert f'<span class="state-label">{headline}</span>' in visible
    for wanted in shown:
        assert wanted in visible, wanted
    if detail:
        assert detail in details and detail not in words(visible)
    for word in ("threshold", "correlation", "pixels", "UID"):
        assert word not in words(visible)


def test_a_normal_chest_shows_its_scores_and_no_heatmap(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    html = page(seeded, study_url(seeded, "normal"))
    assert len(findings_in(html)) == 5 and "heatmap-layer" not in html
    assert re.search(r'id="toggle-heatmap"[^>]*aria-pressed="false"\s+disabled', html)
    text = html_lib.unescape(html)
    assert not re.search(r"flagged (urgent|for review|as routine)", text)
    assert 'data-outcome="no_findings"' in text


def test_viewing_a_study_is_audited_with_the_patient(seeded: Seeded) -> None:
    user = seeded.sign_in("technologist")
    page(seeded, study_url(seeded, "ultrasound"))
    row = seeded.store.conn.execute(
        "SELECT actor, subject, detail, at FROM audit WHERE action = 'study.viewed'"
    ).fetchone()
    assert row["actor"] == f"ui:{user}"
    assert row["subject"] == f"study:{seeded.studies['ultrasound']}"
    assert json.loads(row["detail"]) == {"patient_id": PATIENTS["ultrasound"][0]}
    assert row["at"].endswith("+00:00")


def test_every_worklist_link_opens_its_study(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    html = page(seeded)
    links = re.findall(r'<a class="open-study" href="([^"]+)"', html)
    assert len(links) == len(EXPECTED_ORDER)
    for link in links:
        assert seeded.client.get(link).status_code == 200


# --- images ----------------------------------------------------------------------------------


def test_an_image_renders_at_full_size_and_its_default_is_cached(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    response = seeded.client.get(image_url(seeded, "effusion"))
    assert response.status_code == 200 and response.mimetype == "image/png"
    picture = png_of(response.get_data())
    rows, columns = seeded.store.conn.execute(
        "SELECT rows, columns FROM instances WHERE id = ?", (seeded.instances["effusion"],)
    ).fetchone()
    assert picture.shape == (rows, columns) and picture.dtype == np.uint8
    cached = list((seeded.root / "cache" / "ui-images").glob("*.png"))
    assert [p.name.split("-")[0] for p in cached] == [str(seeded.instances["effusion"])]
    assert re.fullmatch(r"\d+-[0-9a-f]{16}-0\.png", cached[0].name)
    again = seeded.client.get(image_url(seeded, "effusion"))
    assert again.get_data() == response.get_data()


def test_a_window_asked_for_changes_the_rendering(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    default = png_of(seeded.client.get(image_url(seeded, "effusion")).get_data())
    html = page(seeded, study_url(seeded, "effusion"))
    centre_found = re.search(r'data-wc="([-\d.]+)"', html)
    width_found = re.search(r'data-ww="([-\d.]+)"', html)
    assert centre_found is not None and width_found is not None, html
    centre, width = float(centre_found.group(1)), float(width_found.group(1))
    same = seeded.client.get(image_url(seeded, "effusion", wc=centre, ww=width))
    assert np.abs(png_of(same.get_data()).astype(int) - default).max() <= 1
    narrow = seeded.client.get(image_url(seeded, "effusion", wc=centre, ww=max(width / 8, 1)))
    assert narrow.status_code == 200
    narrow_picture = png_of(narrow.get_data())
    assert narrow_picture.std() > default.std()  # more contrast
    cached = list((seeded.root / "cache" / "ui-images").glob("*.png"))
    assert len(cached) == 1  # only the default rendering is kept


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"ww": "0", "wc": "100"}, 400),
        ({"ww": "nan", "wc": "100"}, 400),
        ({"ww": "inf", "wc": "100"}, 400),
        ({"ww": "100"}, 400),
        ({"wc": "x", "ww": "100"}, 400),
        ({"frame": "abc"}, 400),
        ({"frame": "-1"}, 400),
        ({"frame": "1"}, 404),
        ({"frame": "../../x"}, 400),
    ],
)
def test_bad_image_parameters_are_refused(
    seeded: Seeded, params: dict[str, str], status: int
) -> None:
    seeded.sign_in("technologist")
    assert seeded.client.get(image_url(seeded, "effusion", **params)).status_code == status


def test_frames_and_thumbnails_of_a_colour_clip(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    frames = [
        png_of(seeded.client.get(image_url(seeded, "ultrasound", frame=n)).get_data())
        for n in (0, 3)
    ]
    assert frames[0].shape == (480, 640, 3)
    assert np.any(frames[0] != frames[1])  # the clip moves
    assert seeded.client.get(image_url(seeded, "ultrasound", frame=4)).status_code == 404
    thumb = png_of(seeded.client.get(image_url(seeded, "ultrasound", thumb=1)).get_data())
    assert max(thumb.shape[:2]) == 160
    # A window on a colour image is ignored rather than refused.
    windowed = seeded.client.get(image_url(seeded, "ultrasound", wc=10, ww=20))
    assert np.array_equal(png_of(windowed.get_data()), frames[0])


# --- stored pictures -------------------------------------------------------------------------


def test_heatmaps_and_overlays_are_served_from_the_results(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    conn = seeded.store.conn
    for artifact in artifact_ids(seeded, "effusion") + artifact_ids(seeded, "ultrasound"):
        response = seeded.client.get(f"/artifact/{artifact}.png")
        assert response.status_code == 200 and response.mimetype == "image/png"
        name, width, height = conn.execute(
            "SELECT file_name, width, height FROM artifacts WHERE id = ?", (artifact,)
        ).fetchone()
        assert response.get_data() == seeded.store.results.path_of(name).read_bytes()
        assert png_of(response.get_data()).shape[:2] == (height, width)


# --- feedback --------------------------------------------------------------------------------


def post_feedback(seeded: Seeded, name: str, token: str | None, **body: Any) -> Any:
    headers = {"X-CSRF-Token": token} if token else {}
    return seeded.client.post(f"{study_url(seeded, name)}/feedback", json=body, headers=headers)


def test_feedback_is_saved_with_user_and_time_and_shown(seeded: Seeded) -> None:
    user = seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    [finding] = finding_ids(seeded, "effusion")
    before = seeded.store.conn.execute("SELECT * FROM findings ORDER BY id").fetchall()
    body = {"finding_id": finding, "label": "pleural_effusion", "verdict": "agree"}
    response = post_feedback(seeded, "effusion", token, **body, comment="Clear meniscus.")
    assert response.status_code == 200, response.get_data(as_text=True)
    saved = response.json["feedback"]
    assert (saved["verdict"], saved["user"], saved["label"]) == ("agree", user, "pleural_effusion")
    assert 'class="feedback-recorded" data-verdict="agree"' in response.json["html"]
    [entry] = feedback.feedback_for(seeded.store.conn, [finding])
    assert (entry.username, entry.verdict, entry.comment) == (user, "agree", "Clear meniscus.")
    assert entry.at.endswith("+00:00")
    html = page(seeded, study_url(seeded, "effusion"))
    recorded = html[html.index('class="feedback-recorded"') :]
    assert "Agreed" in recorded[:400] and "by Doc1" in recorded[:400]
    assert re.search(r'<time datetime="[^"]+" data-when>', recorded[:400])
    after = seeded.store.conn.execute("SELECT * FROM findings ORDER BY id").fetchall()
    assert [tuple(r) for r in after] == [tuple(r) for r in before]  # the model's rows stay


def test_the_newest_feedback_counts_and_the_history_stays(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    [finding] = finding_ids(seeded, "effusion")
    for verdict in ("agree", "disagree"):
        body = {"finding_id": finding, "label": "cardiomegaly", "verdict": verdict}
        assert post_feedback(seeded, "effusion", token, **body).status_code == 200
    entries = feedback.feedback_for(seeded.store.conn, [finding])
    assert [e.verdict for e in entries] == ["agree", "disagree"]
    assert feedback.newest_feedback(entries)[(finding, "cardiomegaly")].verdict == "disagree"
    html = page(seeded, study_url(seeded, "effusion"))
    assert html.count('class="feedback-recorded"') == 1
    assert 'data-verdict="disagree">' in html
    with pytest.raises(Exception, match="append-only"):
        seeded.store.conn.execute("UPDATE feedback SET verdict = 'agree'")
    [audit_row] = seeded.store.conn.execute(
        "SELECT subject, detail FROM audit WHERE action = 'feedback.recorded' ORDER BY id DESC"
    ).fetchall()[:1]
    assert audit_row["subject"] == f"finding:{finding}"


def test_feedback_by_plain_form_redirects_back_to_the_finding(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    [finding] = finding_ids(seeded, "effusion")
    form = {
        "csrf_token": token,
        "finding_id": finding,
        "label": "pneumothorax",
        "verdict": "unsure",
    }
    response = seeded.client.post(f"{study_url(seeded, 'effusion')}/feedback", data=form)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"#finding-{finding}-pneumothorax")
    [entry] = feedback.feedback_for(seeded.store.conn, [finding])
    assert (entry.verdict, entry.comment) == ("unsure", "")


def test_feedback_without_csrf_token_is_refused(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    [finding] = finding_ids(seeded, "effusion")
    body = {"finding_id": finding, "label": "pleural_effusion", "verdict": "agree"}
    assert post_feedback(seeded, "effusion", None, **body).status_code == 400
    assert post_feedback(seeded, "effusion", "forged", **body).status_code == 400
    assert feedback.feedback_for(seeded.store.conn, [finding]) == []


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"verdict": "maybe"}, 400),
        ({"label": "not_a_label"}, 400),
        ({"finding_id": "x"}, 400),
        ({"finding_id": 9999}, 404),
        ({"finding_id": 1e30}, 400),
        ({"finding_id": 2**64}, 400),
        ({"finding_id": True}, 400),
        ({"comment": "x" * 1001}, 400),
        ({"comment": ["a list"]}, 400),
    ],
)
def test_bad_feedback_is_refused(seeded: Seeded, change: dict[str, Any], status: int) -> None:
    seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    [finding] = finding_ids(seeded, "effusion")
    body = {"finding_id": finding, "label": "pleural_effusion", "verdict": "agree", **change}
    assert post_feedback(seeded, "effusion", token, **body).status_code == status
    assert feedback.feedback_for(seeded.store.conn, [finding]) == []


def test_feedback_on_another_studys_finding_is_404(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "normal")))
    [finding] = finding_ids(seeded, "effusion")
    body = {"finding_id": finding, "label": "pleural_effusion", "verdict": "agree"}
    assert post_feedback(seeded, "normal", token, **body).status_code == 404


# --- impressions -----------------------------------------------------------------------------


def post_impression(seeded: Seeded, name: str, token: str | None, **form: str) -> Any:
    data = {**form, **({"csrf_token": token} if token else {})}
    return seeded.client.post(f"{study_url(seeded, name)}/impression", data=data)


def test_a_clinicians_final_impression_is_saved_and_shown(seeded: Seeded) -> None:
    user = seeded.sign_in("clinician")
    html = page(seeded, study_url(seeded, "effusion"))
    assert 'name="final"' in html
    response = post_impression(
        seeded, "effusion", token_of(html), text="Right effusion.", final="1"
    )
    assert response.status_code == 302 and response.headers["Location"].endswith("#impression")
    saved = page(seeded, response.headers["Location"])
    button = saved.index('<button type="submit" class="button primary">Save impression')
    assert saved.index('id="impression-saved" role="status"') > button  # beside the button
    [entry] = feedback.impressions_for(seeded.store.conn, seeded.studies["effusion"])
    assert (entry.text, entry.final, entry.username) == ("Right effusion.", True, user)
    assert entry.at.endswith("+00:00")
    text = html_lib.unescape(page(seeded, study_url(seeded, "effusion")))
    assert "Right effusion." in text and "Final" in text and "by Doc1" in text
    with pytest.raises(Exception, match="append-only"):
        seeded.store.conn.execute("UPDATE impressions SET final = 0")


def test_only_clinicians_and_admins_may_mark_final(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    html = page(seeded, study_url(seeded, "effusion"))
    assert 'name="final"' not in html
    token = token_of(html)
    refused = post_impression(seeded, "effusion", token, text="Looks wet.", final="1")
    assert refused.status_code == 403
    assert post_impression(seeded, "effusion", token, text="Looks wet.").status_code == 302
    [entry] = feedback.impressions_for(seeded.store.conn, seeded.studies["effusion"])
    assert entry.final is False


def test_impressions_need_text_and_a_csrf_token(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    assert post_impression(seeded, "effusion", None, text="No token.").status_code == 400
    empty = post_impression(seeded, "effusion", token, text="   ")
    assert empty.status_code == 302 and empty.headers["Location"].endswith("#impression")
    html = page(seeded, empty.headers["Location"])
    # Beside the field, inside its form, not among the messages at the top of the page.
    form = html[html.index('<form id="impression"') :]
    form = form[: form.index("</form>")]
    assert re.search(r'id="impression-error" role="alert"[^>]*>Write your impression', form)
    assert 'aria-invalid="true" aria-describedby="impression-error" data-focus-now' in form
    assert '<p class="message' not in html
    assert "Write your impression" not in page(seeded, study_url(seeded, "effusion"))  # once
    assert feedback.impressions_for(seeded.store.conn, seeded.studies["effusion"]) == []
    json_empty = seeded.client.post(
        f"{study_url(seeded, 'effusion')}/impression",
        json={"text": ""},
        headers={"X-CSRF-Token": token},
    )
    assert json_empty.status_code == 400


def test_line_breaks_count_once_and_a_too_long_impression_says_so(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    # 4,000 characters as the textarea counts them; the browser sends each break as CR LF.
    text = "\r\n".join(["x" * 99] * 40)
    assert post_impression(seeded, "effusion", token, text=text).status_code == 302
    [entry] = feedback.impressions_for(seeded.store.conn, seeded.studies["effusion"])
    assert entry.text == text.replace("\r\n", "\n") and len(entry.text) == 3999
    assert post_impression(seeded, "effusion", token, text="y" * 4001).status_code == 302
    assert "too long to save" in html_lib.unescape(page(seeded, study_url(seeded, "effusion")))
    assert len(feedback.impressions_for(seeded.store.conn, seeded.studies["effusion"])) == 1
    listed = seeded.client.post(
        f"{study_url(seeded, 'effusion')}/impression",
        json={"text": ["a"]},
        headers={"X-CSRF-Token": token},
    )
    assert listed.status_code == 400


def test_the_newest_impression_comes_first(seeded: Seeded) -> None:
    seeded.sign_in("admin")
    token = token_of(page(seeded, study_url(seeded, "normal")))
    post_impression(seeded, "normal", token, text="First reading.")
    post_impression(seeded, "normal", token, text="Second reading.", final="on")
    entries = feedback.impressions_for(seeded.store.conn, seeded.studies["normal"])
    assert [(e.text, e.final) for e in entries] == [
        ("Second reading.", True),
        ("First reading.", False),
    ]
    html = page(seeded, study_url(seeded, "normal"))
    assert html.index("Second reading.") < html.index("First reading.")


# --- read first ------------------------------------------------------------------------------


def test_read_first_hides_findings_and_pictures_until_an_impression(read_first: Seeded) -> None:
    seeded = read_first
    seeded.sign_in("clinician")
    html = page(seeded, study_url(seeded, "effusion"))
    text = html_lib.unescape(html)
    assert findings_in(html) == [] and "heatmap-layer" not in html
    for secret in ("Pleural effusion", "/artifact/", "demo-chest-xray", "threshold"):
        assert secret not in text, secret
    assert "stay hidden until you record your own impression" in text
    assert '<img id="image"' in html  # the image itself is always there
    heatmap = artifact_ids(seeded, "effusion", "heatmap")[0]
    assert seeded.client.get(f"/artifact/{heatmap}.png").status_code == 403
    [finding] = finding_ids(seeded, "effusion")
    body = {"finding_id": finding, "label": "pleural_effusion", "verdict": "agree"}
    assert post_feedback(seeded, "effusion", token_of(html), **body).status_code == 403

    assert post_impression(seeded, "effusion", token_of(html), text="Effusion.").status_code == 302
    html = page(seeded, study_url(seeded, "effusion"))
    assert (str(finding), "pleural_effusion") in findings_in(html)
    assert seeded.client.get(f"/artifact/{heatmap}.png").status_code == 200
    assert post_feedback(seeded, "effusion", token_of(html), **body).status_code == 200


def test_read_first_is_per_user(read_first: Seeded) -> None:
    seeded = read_first
    seeded.sign_in("clinician")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    post_impression(seeded, "effusion", token, text="Effusion.")
    seeded.client.post("/signout", data={"csrf_token": token})
    seeded.sign_in("technologist")
    html = page(seeded, study_url(seeded, "effusion"))
    assert findings_in(html) == []
    assert "Effusion." in html  # the other user's impression is not an AI finding


def test_the_rendering_cache_is_trimmed_oldest_first(tmp_path: Path) -> None:
    from appliance.web.pictures import trim_cache

    folder = tmp_path / "ui-images"
    folder.mkdir()
    for age, name in enumerate(["old", "middle", "new"]):
        path = folder / f"{name}.png"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + age, 1000 + age))
    assert trim_cache(folder, max_bytes=250) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["middle.png", "new.png"]
    assert trim_cache(folder, max_bytes=250) == 0


# --- held back: check the image, or analyse it anyway ----------------------------------------


def analyse_anyway_url(seeded: Seeded, name: str) -> str:
    return f"{study_url(seeded, name)}/image/{seeded.instances[name]}/analyse-anyway"


def post_anyway(seeded: Seeded, name: str, token: str | None) -> Any:
    data = {"csrf_token": token} if token else {}
    return seeded.client.post(analyse_anyway_url(seeded, name), data=data)


def anyway_jobs(seeded: Seeded, name: str) -> list[tuple[str, int]]:
    rows = seeded.store.conn.execute(
        "SELECT state, skip_plausibility FROM jobs WHERE instance_ref = ? AND kind = 'analyse'"
        " AND skip_plausibility = 1 ORDER BY id",
        (seeded.instances[name],),
    )
    return [(row[0], row[1]) for row in rows]


def run_the_worker(seeded: Seeded) -> None:
    """The real worker, on its own handle on the same store, as its own role would be."""
    worker = open_worker(open_store(seeded.settings), seeded.settings)
    try:
        drain(worker)
    finally:
        worker.close()


def image_state_of(html: str) -> str:
    """The image-state block (it ends where the first model's result begins)."""
    text = html_lib.unescape(html)
    state = text[text.index('<div class="image-state') :]
    ends = [state.find(mark) for mark in ('<section class="model-result', '<section class="impr')]
    return state[: min(end for end in ends if end > 0)]


def test_a_held_back_xray_asks_to_check_the_image_never_to_retake(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    state = image_state_of(page(seeded, study_url(seeded, "blank")))
    assert "held back" in state.lower() and "check the image" in state.lower()
    assert "retake" not in state.lower() and "exposure again" not in state.lower()
    assert f'action="{analyse_anyway_url(seeded, "blank")}"' in state
    assert "analyse-anyway" not in page(seeded, study_url(seeded, "effusion"))


def test_analyse_anyway_by_a_technologist_is_audited_and_marks_the_findings(
    seeded: Seeded,
) -> None:
    user = seeded.sign_in("technologist")
    token = token_of(page(seeded, study_url(seeded, "blank")))
    response = post_anyway(seeded, "blank", token)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(
        f"{study_url(seeded, 'blank')}?image={seeded.instances['blank']}#image-state"
    )
    queued = html_lib.unescape(page(seeded, response.headers["Location"]))
    assert "will be analysed anyway" in queued
    assert 'data-state="received"' in queued and "analyse-anyway" not in queued
    again = post_anyway(seeded, "blank", token)  # a second tap while it waits: harmless
    assert again.status_code == 302
    assert "being analysed already" in html_lib.unescape(page(seeded, study_url(seeded, "blank")))
    assert anyway_jobs(seeded, "blank") == [("queued", 1)]
    [request] = recent(seeded.store.conn, held_back.REQUESTED)
    assert (request["actor"], request["subject"]) == (
        f"ui:{user}",
        f"instance:{seeded.instances['blank']}",
    )
    assert [m["model"] for m in request["detail"]["held_back_by"]] == ["demo-chest-xray"]

    run_the_worker(seeded)
    assert anyway_jobs(seeded, "blank") == [("done", 1)]
    html = page(seeded, study_url(seeded, "blank"))
    text = html_lib.unescape(html)
    assert "Analysed on request: this image is unlike the images the model knows." in text
    visible, details = split_details(text)
    assert "What the check saw: the image does not look like a typical input" in details
    assert "What the check saw" not in visible
    assert len(findings_in(html)) == 5 and "analyse-anyway" not in html
    [finding] = seeded.store.conn.execute(
        "SELECT f.result FROM findings f JOIN analyses a ON a.job_ref = f.job_ref"
        " WHERE a.instance_ref = ? AND a.state = 'findings'",
        (seeded.instances["blank"],),
    ).fetchall()
    assert json.loads(finding[0])["outside_typical_input"] is True
    assert 'data-state="findings"' in page(seeded)  # the worklist's triage uses the findings


def test_analyse_anyway_needs_a_csrf_token(seeded: Seeded) -> None:
    seeded.sign_in("clinician")
    page(seeded, study_url(seeded, "blank"))
    assert post_anyway(seeded, "blank", None).status_code == 400
    assert post_anyway(seeded, "blank", "forged").status_code == 400
    assert anyway_jobs(seeded, "blank") == []
    assert recent(seeded.store.conn, held_back.REQUESTED) == []


def test_analyse_anyway_only_for_a_held_back_image_of_that_study(seeded: Seeded) -> None:
    seeded.sign_in("admin")
    token = token_of(page(seeded, study_url(seeded, "effusion")))
    assert post_anyway(seeded, "effusion", token).status_code == 302
    text = html_lib.unescape(page(seeded, study_url(seeded, "effusion")))
    assert "no longer held back" in text
    other = f"{study_url(seeded, 'effusion')}/image/{seeded.instances['blank']}/analyse-anyway"
    assert seeded.client.post(other, data={"csrf_token": token}).status_code == 404
    assert anyway_jobs(seeded, "effusion") == anyway_jobs(seeded, "blank") == []
    assert recent(seeded.store.conn, held_back.REQUESTED) == []
