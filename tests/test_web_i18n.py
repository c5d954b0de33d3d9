"""The second language: every catalogue has the same keys and placeholders, each user picks their
language on the account page (stored in users.language, audited), and the screen's language
(`ui.language`) shows before sign-in and for users who have not chosen."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.store import preferences
from appliance.store.audit import recent
from appliance.web import create_app, i18n

from conftest import add_user, csrf_of, make_settings, sign_in


def catalogue_differences(reference: dict[str, str], other: dict[str, str], name: str) -> list[str]:
    """What keeps `other` from standing in for `reference`: keys only one of them has, and
    texts whose placeholders ({name}) differ (the other would fail to format, or lose a value)."""
    problems = [f"{name} lacks {key}" for key in sorted(reference.keys() - other.keys())]
    problems += [f"{name} has {key}, English does not" for key in sorted(other.keys() - reference)]
    for key in sorted(reference.keys() & other.keys()):
        want, got = placeholders(reference[key]), placeholders(other[key])
        if want != got:
            problems.append(f"{name} {key}: placeholders {sorted(got)}, English {sorted(want)}")
    return problems


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


# --- the catalogues --------------------------------------------------------------------------


def test_the_check_finds_a_missing_key_an_extra_key_and_different_placeholders() -> None:
    english = {"a.one": "One {n}", "a.two": "Two", "a.three": "{name} and {count}"}
    other = {"a.one": "Un {n}", "a.three": "{nom} et {count}", "a.four": "Quatre"}

    assert catalogue_differences(english, other, "fr") == [
        "fr lacks a.two",
        "fr has a.four, English does not",
        "fr a.three: placeholders ['count', 'nom'], English ['count', 'name']",
    ]
    assert catalogue_differences(english, dict(english), "fr") == []


@pytest.mark.parametrize("language", [lang for lang in i18n.LANGUAGES if lang != i18n.FALLBACK])
def test_every_language_has_every_key_with_the_same_placeholders(language: str) -> None:
    english = i18n.load_catalogue("en")
    translated = i18n.load_catalogue(language)

    assert len(english) > 100  # the catalogue was found at all
    assert catalogue_differences(english, translated, language) == []


def test_every_area_file_exists_in_every_language() -> None:
    areas = {path.name for path in (i18n.STRINGS / "en").glob("*.yaml")}
    for language in i18n.LANGUAGES:
        assert {path.name for path in (i18n.STRINGS / language).glob("*.yaml")} == areas


def test_the_french_catalogue_is_french() -> None:
    """Not a copy of the English one left untranslated: most texts differ."""
    english, french = i18n.load_catalogue("en"), i18n.load_catalogue("fr")
    same = [key for key in english.keys() & french.keys() if english[key] == french[key]]
    assert len(same) < len(english) // 8, sorted(same)
    assert french["worklist.title"] == "Liste de travail"


# --- the language of a request ---------------------------------------------------------------


@pytest.fixture
def french_screen(tmp_path: Path) -> Iterator[Flask]:
    """A UI whose screen speaks French (`ui.language: fr`), with the account page."""
    app = create_app(make_settings(tmp_path, ui={"language": "fr"}), TESTING=True)
    add_user(app, "admin0", "admin")  # without an administrator, sign-in leads to set-up
    yield app
    app.extensions["appliance.store"].close()


def html_lang(page: str) -> str:
    match = re.search(r'<html lang="([a-z-]+)"', page)
    assert match, "no <html lang=...>"
    return match.group(1)


def text_of(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def test_before_sign_in_the_screen_language_shows(french_screen: Flask) -> None:
    page = text_of(french_screen.test_client(), "/signin")

    assert "Se connecter" in page and "Sign in" not in page
    assert html_lang(page) == "fr"


def test_a_user_without_a_choice_sees_the_screen_language(french_screen: Flask) -> None:
    add_user(french_screen, "tech1", "technologist")
    client = french_screen.test_client()
    sign_in(client, "tech1")

    page = text_of(client, "/")
    assert "Liste de travail" in page and html_lang(page) == "fr"


def test_a_user_who_chose_english_sees_english_on_a_french_screen(french_screen: Flask) -> None:
    user_id = add_user(french_screen, "tech1", "technologist")
    preferences.set_language(french_screen.extensions["appliance.store"].conn, user_id, "en", "t")
    client = french_screen.test_client()
    sign_in(client, "tech1")

    page = text_of(client, "/")
    assert "Worklist" in page and "Liste de travail" not in page
    assert html_lang(page) == "en"
    client.post("/signout", data={"csrf_token": csrf_of(client, "/")})
    assert "Se connecter" in text_of(client, "/signin")  # signed out: the screen's again


def test_the_account_page_sets_the_language_with_csrf_and_audits_it(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), TESTING=True)  # an English screen
    add_user(app, "admin0", "admin")
    conn = app.extensions["appliance.store"].conn
    user_id = add_user(app, "doc1", "clinician")
    client = app.test_client()
    sign_in(client, "doc1")
    page = text_of(client, "/account/")
    assert 'value="fr"' in page and "Français" in page and 'aria-pressed="true"' in page

    refused = client.post("/account/language", data={"language": "fr"})
    assert refused.status_code == 400 and preferences.get_language(conn, user_id) == ""
    token = csrf_of(client, "/account/")
    bad = client.post("/account/language", data={"language": "xx", "csrf_token": token})
    assert bad.status_code == 400 and preferences.get_language(conn, user_id) == ""

    chosen = client.post(
        "/account/language", data={"language": "fr", "csrf_token": token}, follow_redirects=True
    )
    assert "Votre langue est enregistrée." in chosen.get_data(as_text=True)
    assert preferences.get_language(conn, user_id) == "fr"
    assert "Liste de travail" in text_of(client, "/")
    entry = recent(conn, "user.language")[0]
    assert (entry["actor"], entry["subject"]) == ("ui:doc1", "user:doc1")
    assert entry["detail"] == {"language": "fr", "before": "screen"}

    client.post("/account/language", data={"language": "screen", "csrf_token": token})
    assert preferences.get_language(conn, user_id) == ""
    assert "Worklist" in text_of(client, "/")


def test_the_account_page_needs_sign_in(french_screen: Flask) -> None:
    response = french_screen.test_client().get("/account/")
    assert response.status_code == 302 and "/signin" in response.headers["Location"]


def test_a_missing_or_outdated_translation_falls_back_to_english(french_screen: Flask) -> None:
    french = french_screen.extensions["appliance.strings"]["fr"]
    french.pop("base.product")
    french["auth.locked"] = "Compte bloqué {minute} min."  # behind a renamed placeholder
    with french_screen.test_request_context("/signin"):
        assert i18n.current_language() == "fr"
        assert i18n.t("base.product") == "Appliance"
        assert i18n.t("auth.locked", minutes=5).startswith("Too many wrong PINs")
        assert i18n.t("worklist.title") == "Liste de travail"
        with pytest.raises(KeyError):
            i18n.t("base.no_such_key")


# --- the stored choice -----------------------------------------------------------------------


def test_a_language_is_stored_per_user_and_checked(app: Flask) -> None:
    conn = app.extensions["appliance.store"].conn
    first, second = add_user(app, "tech1", "technologist"), add_user(app, "doc1", "clinician")
    assert preferences.get_language(conn, first) == ""

    preferences.set_language(conn, first, "fr", "ui:tech1")
    assert (preferences.get_language(conn, first), preferences.get_language(conn, second)) == (
        "fr",
        "",
    )
    with pytest.raises(preferences.PreferenceError, match="one of en, fr"):
        preferences.set_language(conn, first, "de", "ui:tech1")
    with pytest.raises(preferences.PreferenceError, match="no user"):
        preferences.set_language(conn, 999, "fr", "ui:tech1")
    assert preferences.get_language(conn, first) == "fr"
    assert preferences.get_language(conn, 999) == ""
