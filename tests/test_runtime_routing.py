"""Routing on content: colour as decoded, body part from the header or from keyword rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.config import Settings
from appliance.runtime.errors import ManifestError
from appliance.runtime.manifest import AppliesTo, parse_manifest
from appliance.runtime.package import load_package
from appliance.runtime.routing import ImageTags, body_part_of, dicom_tags, route

from imaging_fixtures import image_dataset, phantom, save

DEMO = Path(__file__).resolve().parent.parent / "models"
CHEST = AppliesTo(modalities=("CR", "DX"), body_parts=("CHEST",), colour="grey")


def cr(**tags: str) -> ImageTags:
    return ImageTags(**{"modality": "CR", "photometric": "MONOCHROME2", **tags})


@pytest.mark.parametrize(
    "photometric",
    ["RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "MONOCHROME2"],
)
def test_the_ultrasound_demo_takes_every_photometric(photometric: str) -> None:
    rules = load_package(DEMO / "demo-ultrasound-fluid").manifest.applies_to
    tags = ImageTags(
        modality="US", sop_class="1.2.840.10008.5.1.4.1.1.6.1", photometric=photometric
    )
    assert route(rules, tags).applies


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_ICT", "RGB"])
def test_a_grey_model_refuses_colour_in_plain_words(photometric: str) -> None:
    result = route(CHEST, cr(body_part="CHEST", photometric=photometric))
    assert not result.applies and result.failed_on == ("colour",)
    assert result.reasons == (
        f"the image is colour ({photometric}); the model takes grey images only",
    )


def test_a_colour_model_refuses_grey_and_either_takes_both() -> None:
    colour_only = AppliesTo(colour="colour")
    assert not route(colour_only, cr(photometric="MONOCHROME1")).applies
    assert route(colour_only, cr(photometric="YBR_FULL_422")).applies
    for photometric in ("MONOCHROME1", "PALETTE COLOR"):
        assert route(AppliesTo(), cr(photometric=photometric)).applies


def test_an_image_without_photometric_fails_a_colour_rule_saying_so() -> None:
    result = route(CHEST, cr(body_part="CHEST", photometric=""))
    assert result.reasons == (
        "colour unknown (PhotometricInterpretation missing); needs grey images",
    )


def test_the_old_photometric_list_is_refused_with_what_to_write() -> None:
    text = (DEMO / "demo-chest-xray" / "manifest.yaml").read_text()
    old = text.replace("  colour: grey\n", "  photometric: [MONOCHROME1, MONOCHROME2]\n")
    assert old != text
    with pytest.raises(ManifestError) as caught:
        parse_manifest(old, "m.yaml")
    line = 1 + old.splitlines().index("  photometric: [MONOCHROME1, MONOCHROME2]")
    message = str(caught.value)
    assert f"m.yaml:{line}: applies_to.photometric:" in message
    assert "write 'colour: grey'" in message and "'colour: either'" in message


def test_a_wrong_colour_value_is_named() -> None:
    text = (DEMO / "demo-chest-xray" / "manifest.yaml").read_text()
    with pytest.raises(ManifestError, match=r"applies_to\.colour.*'gray'"):
        parse_manifest(text.replace("colour: grey", "colour: gray"), "m.yaml")


# --- body part ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        {"study_description": "Rx Tórax PA"},
        {"series_description": "PECHO"},
        {"protocol_name": "chest pa erect"},
        {"study_description": "XR THORAX 2 VIEWS"},
    ],
)
def test_body_part_words_in_descriptions_route_to_the_chest_model(where: dict[str, str]) -> None:
    result = route(CHEST, cr(**where))
    assert result.applies
    assert any(note.startswith("body part CHEST from ") for note in result.reasons)


def test_a_local_word_in_body_part_examined_maps_to_the_models_name() -> None:
    found = body_part_of(cr(body_part="THORAX"))
    assert found.names == ("THORAX", "CHEST") and found.name == "CHEST"
    assert route(CHEST, cr(body_part="THORAX")).applies
    assert route(CHEST, cr(body_part="torax")).applies


def test_body_part_examined_wins_over_descriptions() -> None:
    result = route(CHEST, cr(body_part="HAND", study_description="CHEST PA"))
    assert not result.applies
    assert result.reasons == ("body part 'HAND' is not one of CHEST",)


def test_words_must_be_whole_words() -> None:
    assert body_part_of(cr(study_description="CHESTNUT ALLERGY")).names == ()
    assert body_part_of(cr(study_description="THORAXX")).names == ()


def test_descriptions_naming_two_body_parts_give_none_with_a_reason() -> None:
    found = body_part_of(cr(study_description="CHEST ABDOMEN"))
    assert found.names == ()
    assert "names more than one body part (CHEST and ABDOMEN)" in found.note


def test_no_body_part_anywhere_says_where_it_was_looked_for() -> None:
    result = route(CHEST, cr(study_description="Routine"))
    assert result.reasons == (
        "body part unknown (BodyPartExamined missing, and no body-part word in "
        "StudyDescription, SeriesDescription, ProtocolName); needs CHEST",
    )


def test_site_keywords_from_the_configuration_are_used() -> None:
    settings = Settings.model_validate({"routing": {"body_part_keywords": {"CHEST": ["BRUST"]}}})
    keywords = settings.routing.body_part_keywords
    assert route(CHEST, cr(series_description="Brust p.a."), keywords).applies
    assert not route(CHEST, cr(series_description="Brust p.a.")).applies  # not a default


def test_manifest_synonyms_still_match_the_header_word() -> None:
    rules = AppliesTo(body_parts=("CHEST", "TORSO"))
    assert route(rules, cr(body_part="TORSO")).applies


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"CHEST": ["THORAX"], "ABDOMEN": ["thorax"]}, "'THORAX' is listed under both"),
        ({"chest!": ["THORAX"]}, "'chest!' is not a DICOM code string"),
        ({"CHEST": ["TH*RAX"]}, "keyword 'TH*RAX' of CHEST"),
    ],
)
def test_bad_keyword_rules_are_refused_quoting_them(
    keywords: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("*", r"\*")):
        Settings.model_validate({"routing": {"body_part_keywords": keywords}})


def test_dicom_tags_read_the_descriptions(tmp_path: Path) -> None:
    ds = image_dataset(phantom().astype("uint16"), "MONOCHROME2", 12)
    ds.Modality, ds.SeriesDescription, ds.ProtocolName = "DX", "Torax PA", "RX TORAX"
    tags = dicom_tags(save(ds, tmp_path))
    assert (tags.series_description, tags.protocol_name) == ("Torax PA", "RX TORAX")
    assert body_part_of(tags).name == "CHEST"
