"""DICOM -> pixels: pydicom's bundled files and generated images, decoded and checked by value."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from appliance.errors import ApplianceError
from appliance.imaging import (
    DecodedImage,
    DecodeError,
    Region,
    SpacingSource,
    Window,
    apply_window,
    crop_to_region,
    decode,
    select_frames,
    supported_transfer_syntaxes,
    to_display,
)
from appliance.samples import write_sample

from imaging_fixtures import (
    bundled,
    image_dataset,
    phantom,
    read,
    rgb_phantom,
    save,
    ultrasound_dataset,
    ultrasound_region,
)

# --- compressed files against their uncompressed twins (pydicom's test files) ---------------


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_twins_of_mr_small_decode_to_the_same_values(name: str) -> None:
    reference = decode(bundled("MR_small.dcm"))
    image = decode(bundled(name))
    assert image.photometric == "MONOCHROME"
    assert image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, reference.pixels)
    assert image.spacing_mm == reference.spacing_mm == (0.3125, 0.3125)
    assert image.window == reference.window == Window(600.0, 1600.0)


def test_mr_small_values_are_the_signed_stored_values() -> None:
    image = decode(bundled("MR_small.dcm"))
    stored = read("MR_small.dcm").pixel_array
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(image.pixels[0], stored.astype(np.float32))
    assert image.signed and image.bits_stored == 16


@pytest.mark.parametrize(
    "name", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_rle_16bit.dcm"]
)
def test_lossless_rgb_twins_match_the_rle_original(name: str) -> None:
    """JPEG lossless SV1, JPEG 2000, and 16-bit RLE (reduced to its top 8 bits)."""
    reference = decode(bundled("SC_rgb_rle.dcm"))
    image = decode(bundled(name))
    assert image.photometric == "RGB"
    assert image.pixels.shape == (1, 100, 100, 3)
    np.testing.assert_array_equal(image.pixels, reference.pixels)


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG baseline, stored as RGB
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
        "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS near-lossless
    ],
)
def test_lossy_and_ybr_twins_come_out_as_rgb_close_to_the_original(name: str) -> None:
    reference = decode(bundled("SC_rgb_rle.dcm")).pixels.astype(np.int16)
    image = decode(bundled(name))
    assert image.photometric == "RGB"
    assert image.pixels.dtype == np.uint8
    difference = np.abs(image.pixels.astype(np.int16) - reference)
    # Unconverted YBR differs from RGB by tens of levels on average; compression noise by ~1.
    assert difference.mean() < 4.0


def test_big_endian_rgb_matches_little_endian() -> None:
    little = decode(bundled("SC_rgb_small_odd.dcm"))
    big = decode(bundled("SC_rgb_small_odd_big_endian.dcm"))
    np.testing.assert_array_equal(big.pixels, little.pixels)
    assert big.pixels.shape == (1, 3, 3, 3)


def test_ybr_rct_jpeg2000_decodes_as_rgb() -> None:
    image = decode(bundled("examples_jpeg2k.dcm"))
    assert image.source_photometric == "YBR_RCT"
    assert image.photometric == "RGB"
    assert image.pixels.shape == (1, 480, 640, 3)
    # An ultrasound picture is mostly grey: R, G and B agree where it is.
    grey = (image.pixels[..., 0] == image.pixels[..., 1]) & (
        image.pixels[..., 1] == image.pixels[..., 2]
    )
    assert grey.mean() > 0.5


def test_multi_frame_rle_equals_native_and_every_nth_is_selected() -> None:
    native = decode(bundled("rtdose.dcm"))
    rle = decode(bundled("rtdose_rle.dcm"), every=5)
    assert native.frame_count == rle.frame_count == 15
    assert rle.frame_indices == (0, 5, 10)
    np.testing.assert_array_equal(rle.pixels, native.pixels[::5])


def test_single_frame_of_a_multi_frame_rle_image() -> None:
    original = decode(bundled("SC_rgb_rle.dcm")).pixels[0]
    second = decode(bundled("SC_rgb_rle_2frame.dcm"), index=1)
    assert second.frame_indices == (1,)
    assert second.pixels.shape == (1, 100, 100, 3)
    np.testing.assert_array_equal(second.pixels[0], 255 - original)  # frame 2 is the negative


def test_ct_rescale_gives_hounsfield_units() -> None:
    ds = read("CT_small.dcm")
    image = decode(ds)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(image.pixels[0], expected.astype(np.float32))
    assert image.spacing_source is SpacingSource.PIXEL_SPACING


# --- generated images: bit depths, sign, LUTs, photometric interpretations ------------------


def test_signed_16_bit_with_rescale(tmp_path: Path) -> None:
    stored = phantom(low=-2000, high=3000).astype(np.int16)
    ds = image_dataset(stored, "MONOCHROME2", 16, RescaleSlope="2", RescaleIntercept="-1024")
    image = decode(save(ds, tmp_path))
    assert image.signed
    np.testing.assert_array_equal(image.pixels[0], stored * 2.0 - 1024.0)


def test_signed_12_bit_big_endian_ignores_unused_high_bits(tmp_path: Path) -> None:
    values = np.array([[-5, 2047], [-2048, 0]], dtype=np.int16)
    ds = image_dataset(values, "MONOCHROME2", 12)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    # Writers may leave the 4 unused bits zero instead of extending the sign.
    ds.PixelData = (values.astype(np.uint16) & 0x0FFF).astype(">u2").tobytes()
    image = decode(save(ds, tmp_path))
    assert image.bits_stored == 12
    np.testing.assert_array_equal(image.pixels[0], values)


def test_unsigned_8_bit(tmp_path: Path) -> None:
    stored = phantom(low=0, high=255).astype(np.uint8)
    image = decode(save(image_dataset(stored, "MONOCHROME2", 8), tmp_path))
    assert not image.signed and image.bits_stored == 8
    np.testing.assert_array_equal(image.pixels[0], stored)


def test_modality_lut_sequence_maps_stored_values(tmp_path: Path) -> None:
    stored = phantom(low=0, high=255).astype(np.uint8)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.ModalityLUTType = "HU"
    lut.add_new("LUTData", "US", [1000 + 3 * i for i in range(256)])
    ds = image_dataset(stored, "MONOCHROME2", 8, ModalityLUTSequence=[lut])
    image = decode(save(ds, tmp_path))
    np.testing.assert_array_equal(image.pixels[0], 1000.0 + 3.0 * stored)


def _monochrome_twins(tmp_path: Path, with_window: bool) -> tuple[DecodedImage, DecodedImage]:
    """The same 12-bit picture as MONOCHROME2 and as the inverted MONOCHROME1 a CR would send."""
    values = phantom(low=100, high=3900).astype(np.uint16)
    mono2 = image_dataset(values, "MONOCHROME2", 12)
    mono1 = image_dataset((4095 - values).astype(np.uint16), "MONOCHROME1", 12)
    if with_window:
        mono2.WindowCenter, mono2.WindowWidth = "1500", "2000"
        # Inverting x -> 4095 - x maps the window's lower edge c - 0.5 to 4096 - c - 0.5.
        mono1.WindowCenter, mono1.WindowWidth = "2596", "2000"
    return decode(save(mono2, tmp_path, "m2.dcm")), decode(save(mono1, tmp_path, "m1.dcm"))


@pytest.mark.parametrize("with_window", [False, True])
def test_monochrome1_displays_like_its_monochrome2_twin(tmp_path: Path, with_window: bool) -> None:
    mono2, mono1 = _monochrome_twins(tmp_path, with_window)
    assert mono1.inverted and not mono2.inverted
    assert not np.array_equal(mono1.pixels, mono2.pixels)  # modality values keep their meaning
    shown2, shown1 = to_display(mono2), to_display(mono1)
    np.testing.assert_allclose(shown1, shown2, atol=1e-6)
    assert shown2.min() == 0.0 and shown2.max() == 1.0


def test_file_window_is_used_and_an_explicit_window_overrides_it(tmp_path: Path) -> None:
    mono2, _ = _monochrome_twins(tmp_path, with_window=True)
    assert mono2.window == Window(1500.0, 2000.0)
    np.testing.assert_array_equal(to_display(mono2), apply_window(mono2.pixels, 1500, 2000))
    narrow = to_display(mono2, Window(200.0, 50.0))
    np.testing.assert_array_equal(narrow, apply_window(mono2.pixels, 200, 50))
    assert not np.array_equal(narrow, to_display(mono2))


def test_voi_lut_sequence_wins_over_window(tmp_path: Path) -> None:
    stored = np.arange(0, 200, dtype=np.uint8).reshape(10, 20)
    voi = Dataset()
    voi.LUTDescriptor = [50, 100, 8]
    ramp = np.array([255 - 5 * i for i in range(50)], dtype="<u2")  # decreasing over 100..149
    voi.add_new("LUTData", "OW", ramp.tobytes())
    ds = image_dataset(stored, "MONOCHROME2", 8, VOILUTSequence=[voi])
    ds.WindowCenter, ds.WindowWidth = "50", "10"
    image = decode(save(ds, tmp_path))
    assert image.voi_lut is not None and image.voi_lut.first_mapped == 100
    index = np.clip(stored.astype(int) - 100, 0, 49)
    expected = (255 - 5 * index) / 255.0
    np.testing.assert_allclose(to_display(image)[0], expected, atol=1e-6)


def test_window_functions_follow_the_standard() -> None:
    x = np.array([-200.0, -160.5, 39.5, 239.0, 239.5, 300.0], dtype=np.float32)
    linear = apply_window(x, 40, 400)
    # PS3.3 C.11.2.1.2: 0 at or below c-0.5-(w-1)/2, 1 above c-0.5+(w-1)/2, 0.5 at c-0.5.
    np.testing.assert_allclose(linear, [0, 0, 0.5, 1.0, 1.0, 1.0], atol=1e-6)
    exact = apply_window(np.array([-160.0, 40.0, 240.0]), 40, 400, "LINEAR_EXACT")
    np.testing.assert_allclose(exact, [0.0, 0.5, 1.0], atol=1e-6)
    sigmoid = apply_window(np.array([40.0, 1e6]), 40, 400, "sigmoid")
    np.testing.assert_allclose(sigmoid, [0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    ("centre", "width", "function"), [(40, 0, "LINEAR"), (40, 0.5, "LINEAR"), (40, 10, "CUBIC")]
)
def test_unusable_windows_are_refused(centre: float, width: float, function: str) -> None:
    with pytest.raises(ValueError, match=str(width) if function != "CUBIC" else "CUBIC"):
        Window(centre, width, function)


def test_invalid_window_in_file_is_noted_not_applied(tmp_path: Path) -> None:
    ds = image_dataset(phantom().astype(np.uint16), "MONOCHROME2", 12)
    ds.WindowCenter, ds.WindowWidth = "100", "0"
    image = decode(save(ds, tmp_path))
    assert image.window is None
    assert any("WindowWidth" in note for note in image.notes)


def test_palette_color_becomes_rgb(tmp_path: Path) -> None:
    indices = phantom(low=0, high=255).astype(np.uint8)
    ds = image_dataset(indices, "MONOCHROME2", 8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    entries = np.arange(256)
    for colour, table in (("Red", entries), ("Green", 255 - entries), ("Blue", entries // 2)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (table * 257).astype("<u2").tobytes())
    image = decode(save(ds, tmp_path))
    assert image.photometric == "RGB" and image.source_photometric == "PALETTE COLOR"
    expected = np.stack([indices, 255 - indices, indices // 2], axis=-1)
    np.testing.assert_array_equal(image.pixels[0], expected)


def test_bundled_palette_ultrasound_is_rgb() -> None:
    image = decode(bundled("examples_palette.dcm"))
    assert image.pixels.shape == (1, 350, 800, 3)
    assert image.pixels.dtype == np.uint8
    assert len(np.unique(image.pixels.reshape(-1, 3), axis=0)) > 10


def test_native_ybr_full_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = rgb_phantom()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    image = decode(save(image_dataset(ybr, "YBR_FULL", 8), tmp_path))
    assert image.source_photometric == "YBR_FULL" and image.photometric == "RGB"
    assert np.abs(image.pixels[0].astype(int) - rgb).max() <= 2


# --- generated images compressed with the installed encoders --------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_signed_multi_frame_round_trips_exactly(tmp_path: Path, syntax: str) -> None:
    frames = np.stack([phantom(64, 64, -1500, 2000) + 7 * k for k in range(3)]).astype(np.int16)
    ds = image_dataset(frames, "MONOCHROME2", 12, RescaleSlope="1", RescaleIntercept="-1024")
    ds.compress(syntax)
    image = decode(save(ds, tmp_path), every=2)
    assert image.transfer_syntax == syntax
    assert image.frame_indices == (0, 2)
    np.testing.assert_array_equal(image.pixels, frames[::2] - 1024.0)


@pytest.mark.parametrize(
    ("syntax", "photometric"),
    [(RLELossless, "RGB"), (JPEGLSLossless, "RGB"), (JPEG2000Lossless, "YBR_RCT")],
)
def test_compressed_rgb_round_trips_exactly(tmp_path: Path, syntax: str, photometric: str) -> None:
    rgb = rgb_phantom(64, 64)
    ds = image_dataset(rgb, "RGB", 8)
    ds.PhotometricInterpretation = photometric  # YBR_RCT: the encoder applies the colour transform
    ds.compress(syntax)
    image = decode(save(ds, tmp_path))
    assert image.source_photometric == photometric
    np.testing.assert_array_equal(image.pixels[0], rgb)


def test_lossy_jpeg2000_ybr_ict_comes_back_close_to_rgb(tmp_path: Path) -> None:
    rgb = rgb_phantom(64, 64)
    ds = image_dataset(rgb, "RGB", 8)
    ds.PhotometricInterpretation = "YBR_ICT"
    ds.compress(JPEG2000, j2k_psnr=[60])
    image = decode(save(ds, tmp_path))
    assert image.source_photometric == "YBR_ICT"
    assert np.abs(image.pixels[0].astype(int) - rgb).max() <= 4


def test_installed_decoders_cover_the_accepted_compressions() -> None:
    supported = supported_transfer_syntaxes()
    for syntax in (JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless):
        assert syntax in supported
    assert MPEG2MPML not in supported


# --- ultrasound regions, spacing, cropping ---------------------------------------------------


def test_ultrasound_region_gives_spacing_and_crops_burned_in_text(tmp_path: Path) -> None:
    doppler = ultrasound_region(0, 0, 159, 9, 0.5, spatial_format=3, units=4)
    scan = ultrasound_region(20, 10, 139, 109, 0.01)
    ds, original = ultrasound_dataset([doppler, scan])
    ds.PixelSpacing = [9.0, 9.0]  # the calibrated region wins over a generic spacing
    image = decode(save(ds, tmp_path))
    assert image.spacing_source is SpacingSource.ULTRASOUND_REGION
    assert image.spacing_mm == pytest.approx((0.1, 0.1))
    assert image.region is not None and (image.region.x0, image.region.y1) == (20, 109)
    cropped = crop_to_region(image)
    assert cropped.pixels.shape == (1, 100, 120)
    np.testing.assert_array_equal(cropped.pixels[0], original[10:110, 20:140])
    assert cropped.pixels.max() < 255  # annotation and ruler are gone
    assert cropped.region == Region(0, 0, 119, 99, units_x=3, units_y=3, delta_x=0.01, delta_y=0.01)
    assert cropped.spacing_mm == image.spacing_mm


def test_region_one_pixel_past_the_edge_is_clipped_with_a_note(tmp_path: Path) -> None:
    ds, _ = ultrasound_dataset([ultrasound_region(20, 10, 160, 120, 0.01)])
    image = decode(save(ds, tmp_path))
    assert image.region is not None and (image.region.x1, image.region.y1) == (159, 119)
    assert any("clipped" in note for note in image.notes)


def test_region_that_does_not_fit_is_ignored_with_a_note() -> None:
    """pydicom's example cine was resized after its regions were written."""
    image = decode(bundled("examples_ybr_color.dcm"), every=10)
    assert image.pixels.shape == (3, 240, 320, 3)
    assert image.region is None and image.spacing_mm is None
    assert image.spacing_source is SpacingSource.NONE
    assert any("does not fit" in note for note in image.notes)


def test_region_missing_a_corner_is_noted(tmp_path: Path) -> None:
    region = ultrasound_region(20, 10, 139, 109, 0.01)
    del region.RegionLocationMaxY1
    ds, _ = ultrasound_dataset([region])
    image = decode(save(ds, tmp_path))
    assert image.region is None
    assert any("RegionLocationMaxY1 (0018,601E)" in note for note in image.notes)


def test_crop_without_a_region_is_refused() -> None:
    image = decode(bundled("MR_small.dcm"))
    with pytest.raises(ValueError, match="no ultrasound region"):
        crop_to_region(image)


def test_spacing_prefers_pixel_spacing_then_imager_pixel_spacing(tmp_path: Path) -> None:
    values = phantom().astype(np.uint16)
    both = image_dataset(values, "MONOCHROME2", 12, PixelSpacing=[0.2, 0.3])
    both.ImagerPixelSpacing = [0.25, 0.35]
    image = decode(save(both, tmp_path, "both.dcm"))
    assert (image.spacing_mm, image.spacing_source) == ((0.2, 0.3), SpacingSource.PIXEL_SPACING)
    imager = image_dataset(values, "MONOCHROME2", 12, PixelSpacing=["0", "0"])
    imager.ImagerPixelSpacing = [0.25, 0.35]
    image = decode(save(imager, tmp_path, "imager.dcm"))
    assert image.spacing_mm == (0.25, 0.35)
    assert image.spacing_source is SpacingSource.IMAGER_PIXEL_SPACING
    assert any("PixelSpacing (0028,0030)" in note for note in image.notes)
    none = decode(save(image_dataset(values, "MONOCHROME2", 12), tmp_path, "none.dcm"))
    assert (none.spacing_mm, none.spacing_source) == (None, SpacingSource.NONE)


def test_enhanced_image_reads_spacing_and_rescale_from_functional_groups(tmp_path: Path) -> None:
    frames = np.stack([phantom(high=4000), phantom(high=4000) + 10]).astype(np.uint16)
    ds = image_dataset(frames, "MONOCHROME2", 12)
    measures, transform, per_frame = Dataset(), Dataset(), []
    measures.PixelSpacing = [0.5, 0.4]
    transform.RescaleSlope, transform.RescaleIntercept = "1", "-1000"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    for intercept in ("-1000", "-500"):  # per-frame groups override the shared one
        own = Dataset()
        own.RescaleSlope, own.RescaleIntercept = "1", intercept
        group = Dataset()
        group.PixelValueTransformationSequence = [own]
        per_frame.append(group)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    image = decode(save(ds, tmp_path))
    assert (image.spacing_mm, image.spacing_source) == ((0.5, 0.4), SpacingSource.PIXEL_SPACING)
    np.testing.assert_array_equal(image.pixels[0], frames[0] - 1000.0)
    np.testing.assert_array_equal(image.pixels[1], frames[1] - 500.0)


# --- frame selection -------------------------------------------------------------------------


def test_select_frames() -> None:
    assert select_frames(4) == (0, 1, 2, 3)
    assert select_frames(10, every=4) == (0, 4, 8)
    assert select_frames(5, index=2) == (2,)
    assert select_frames(5, index=-1) == (4,)
    with pytest.raises(ValueError, match="out of range"):
        select_frames(3, index=3)
    with pytest.raises(ValueError, match="every"):
        select_frames(3, every=0)
    with pytest.raises(ValueError, match="not both"):
        select_frames(3, index=1, every=2)


def test_selected_frame_matches_the_same_frame_of_all_frames() -> None:
    every = decode(bundled("examples_ybr_color.dcm"), every=10)
    one = decode(bundled("examples_ybr_color.dcm"), index=10)
    assert one.frame_count == 30 and one.frame_indices == (10,)
    np.testing.assert_array_equal(one.pixels[0], every.pixels[1])


# --- files that cannot be decoded ------------------------------------------------------------


def test_decode_error_is_an_appliance_error() -> None:
    assert issubclass(DecodeError, ApplianceError)


def test_truncated_native_pixel_data() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode(bundled("MR_truncated.dcm"))


def test_truncated_jpeg_ls_stream_is_detected(tmp_path: Path) -> None:
    ds = read("MR_small_jpeg_ls_lossless.dcm")
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    with pytest.raises(DecodeError, match=r"truncated.*JPEG-LS.*end marker"):
        decode(save(ds, tmp_path))


def test_corrupt_rle_stream() -> None:
    ds = read("MR_small_RLE.dcm")
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    with pytest.raises(DecodeError, match="corrupt, truncated"):
        decode(ds)


@pytest.mark.parametrize(
    ("uid", "named"),
    [("1.2.3.4.5", "1.2.3.4.5 (unknown UID)"), (MPEG2MPML, "MPEG2 Main Profile / Main Level")],
)
def test_unsupported_transfer_syntax_is_named(uid: str, named: str) -> None:
    ds = read("MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = UID(uid)
    with pytest.raises(DecodeError, match="unsupported transfer syntax") as caught:
        decode(ds)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("keyword", "named"),
    [
        ("Rows", "Rows (0028,0010)"),
        ("BitsStored", "BitsStored (0028,0101)"),
        ("PhotometricInterpretation", "PhotometricInterpretation (0028,0004)"),
        ("PixelData", "PixelData (7FE0,0010)"),
    ],
)
def test_missing_required_attribute_is_named(tmp_path: Path, keyword: str, named: str) -> None:
    ds = read("MR_small.dcm")
    delattr(ds, keyword)
    with pytest.raises(DecodeError, match="missing required attribute") as caught:
        decode(save(ds, tmp_path))
    assert named in str(caught.value)


def test_missing_transfer_syntax_is_named() -> None:
    ds = copy.deepcopy(read("MR_small.dcm"))
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(DecodeError, match=r"TransferSyntaxUID \(0002,0010\)"):
        decode(ds)


def test_samples_per_pixel_must_match_photometric() -> None:
    ds = read("MR_small.dcm")
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(DecodeError, match=r"SamplesPerPixel .* RGB needs 3"):
        decode(ds)


def test_not_a_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not an image" * 20)
    with pytest.raises(DecodeError, match="not a readable DICOM file"):
        decode(path)


def test_decoded_image_refuses_inconsistent_pixels() -> None:
    with pytest.raises(ValueError, match="MONOCHROME pixels must be 3-D float32"):
        DecodedImage(
            pixels=np.zeros((1, 4, 4), dtype=np.uint16),
            photometric="MONOCHROME",
            source_photometric="MONOCHROME2",
            transfer_syntax="1.2.840.10008.1.2.1",
            frame_count=1,
            frame_indices=(0,),
            bits_stored=16,
            signed=False,
        )


def test_a_value_of_the_wrong_length_is_a_decode_error_in_plain_words(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "odd.dcm", "us", rows=16, columns=16)
    raw = path.read_bytes()
    at = raw.index(b"\x28\x00\x01\x01US\x02\x00")  # Bits Stored, 2 bytes as US must be
    path.write_bytes(raw[: at + 6] + b"\x03\x00" + raw[at + 8 : at + 10] + b"\x00" + raw[at + 10 :])
    with pytest.raises(DecodeError) as caught:
        decode(path)
    assert "cannot be decoded" in str(caught.value)
    assert "To replace this error" not in str(caught.value)  # pydicom's advice to developers


def test_a_file_that_cannot_be_opened_is_a_disk_error_not_a_broken_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):  # the worker retries these; a DecodeError it does not
        decode(tmp_path / "gone.dcm")
