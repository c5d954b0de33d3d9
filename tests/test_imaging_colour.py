"""Every colour photometric and transfer syntax decodes to the RGB of the uncompressed original."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from appliance.imaging import DecodeError, colour_of, decode
from appliance.phantoms import make_ultrasound, ultrasound_dataset

from conftest import needs_dcmtk
from imaging_fixtures import (
    Variant,
    image_dataset,
    palette_variant,
    phantom,
    save,
    tinted,
    write_colour_variants,
)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, dict[str, Variant]]:
    scan = make_ultrasound(3, rows=120, columns=160, color=False, fluid=True)
    folder = tmp_path_factory.mktemp("colour")
    return scan.pixels, write_colour_variants(folder, ultrasound_dataset(scan), scan.pixels)


NAMES = [
    "rgb",
    "rgb-planar1",
    "ybr_full",
    "ybr_full-planar1",
    "ybr_full_422",
    "palette8-packed",
    "palette8-words",
    "palette16",
    "palette16-segmented",
    "rgb-rle",
    "ybr_full-rle",
    "palette16-rle",
    "palette8-words-rle",
    "rgb-jpegls",
    "rgb-jpegls-near",
    "rgb-j2k",
    "ybr_rct-j2k",
    "ybr_ict-j2k",
    "palette16-big-endian",
    "jpeg-baseline",
    "jpeg-lossless",
]


@needs_dcmtk
@pytest.mark.parametrize("name", NAMES)
def test_every_colour_variant_decodes_to_the_original_rgb(
    variants: tuple[np.ndarray, dict[str, Variant]], name: str
) -> None:
    grey, made = variants
    variant = made[name]
    header = dcmread(variant.path, stop_before_pixels=True)
    image = decode(variant.path)
    assert image.photometric == "RGB" and image.colour == "colour"
    assert colour_of(str(header.PhotometricInterpretation)) == image.colour
    error = np.abs(image.pixels[0].astype(int) - tinted(grey))
    assert error.max() <= variant.max_error, (name, error.max())
    assert error.mean() <= variant.mean_error, (name, error.mean())


@needs_dcmtk
def test_the_variants_cover_every_colour_photometric(
    variants: tuple[np.ndarray, dict[str, Variant]],
) -> None:
    _, made = variants
    written = {
        str(dcmread(v.path, stop_before_pixels=True).PhotometricInterpretation)
        for v in made.values()
    }
    expected = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR"}
    assert written == expected


def test_8_bit_palette_entries_one_to_a_word_are_not_shifted_away(tmp_path: Path) -> None:
    """Many scanners write 8-bit palette entries one to a 16-bit word: pydicom returns them
    as uint16 holding 0..255, which a 16-bit shift would turn black."""
    grey = phantom(32, 48, 0, 255).astype(np.uint8)
    ds = palette_variant(image_dataset(grey), grey, 8, "words")
    image = decode(save(ds, tmp_path))
    np.testing.assert_array_equal(image.pixels[0], tinted(grey))
    assert image.pixels.max() > 200


def test_8_bit_palette_with_16_bit_values_is_refused_saying_so(tmp_path: Path) -> None:
    grey = phantom(32, 48, 0, 255).astype(np.uint8)
    ds = palette_variant(image_dataset(grey), grey, 16)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 8])
    with pytest.raises(DecodeError, match=r"declares 8-bit palette entries.*up to 65535"):
        decode(save(ds, tmp_path))


def test_palette_descriptor_with_other_bits_is_refused_quoting_it(tmp_path: Path) -> None:
    grey = phantom(32, 48, 0, 255).astype(np.uint8)
    ds = palette_variant(image_dataset(grey), grey, 16)
    ds.RedPaletteColorLookupTableDescriptor = [256, 0, 12]
    with pytest.raises(DecodeError, match=r"must be 8 or 16"):
        decode(save(ds, tmp_path))


@pytest.mark.parametrize(
    ("photometric", "expected"),
    [
        ("MONOCHROME1", "grey"),
        ("monochrome2 ", "grey"),
        ("PALETTE COLOR", "colour"),
        ("RGB", "colour"),
        ("YBR_FULL_422", "colour"),
        ("YBR_ICT", "colour"),
        ("", None),
    ],
)
def test_colour_of_the_header(photometric: str, expected: str | None) -> None:
    assert colour_of(photometric) == expected


def test_grey_images_decode_as_grey(tmp_path: Path) -> None:
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        ds = image_dataset(phantom().astype(np.uint16), photometric, 12)
        image = decode(save(ds, tmp_path, f"{photometric}.dcm"))
        assert image.colour == "grey" == colour_of(photometric)
