"""Preprocessing: tensors as the manifest says, and geometry that maps back to the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom import dcmread

from appliance.imaging import decode, to_display
from appliance.runtime import InputError, parse_manifest, prepare, read_picture
from appliance.runtime.manifest import InputSpec
from appliance.runtime.preprocess import array_display, single_frame

from imaging_fixtures import image_dataset, save, ultrasound_dataset, ultrasound_region
from runtime_models import blob_image, classifier_manifest, dicom_file


def spec(**changes: Any) -> InputSpec:
    manifest = classifier_manifest()
    manifest["input"].update(changes)
    return parse_manifest(__import__("yaml").safe_dump(manifest)).input


@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (64, 64), (37, 1000)])
@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_points_map_to_the_model_and_back_within_a_pixel(
    shape: tuple[int, int], resize: str
) -> None:
    rows, columns = shape
    prepared = prepare(np.zeros(shape, dtype=np.uint8), spec(resize=resize))
    geometry = prepared.geometry
    rng = np.random.default_rng(3)
    for x, y in zip(rng.uniform(0, columns - 1, 50), rng.uniform(0, rows - 1, 50), strict=True):
        mx, my = geometry.to_model(x, y)
        assert -0.5 <= mx <= 63.5 and -0.5 <= my <= 63.5
        back = geometry.to_image(mx, my)
        assert abs(back[0] - x) < 1 and abs(back[1] - y) < 1


def test_letterbox_keeps_the_aspect_and_centres_the_picture() -> None:
    prepared = prepare(np.full((300, 600), 255, dtype=np.uint8), spec(window="file"))
    geometry = prepared.geometry
    assert geometry.content == (0, 16, 64, 32)
    assert geometry.scale == pytest.approx((64 / 600, 32 / 300))
    tensor = prepared.tensor[0, 0]
    assert tensor.dtype == np.float32
    assert np.all(tensor[:16] == pytest.approx((0 - 0.5) / 0.25))  # black padding, normalised
    assert np.all(tensor[16:48] == pytest.approx((1 - 0.5) / 0.25))


def test_a_bright_spot_lands_where_geometry_says() -> None:
    image = np.zeros((400, 200), dtype=np.uint8)
    image[300:310, 40:50] = 255  # centre (44.5, 304.5)
    prepared = prepare(image, spec())
    row, column = np.unravel_index(np.argmax(prepared.tensor[0, 0]), (64, 64))
    mx, my = prepared.geometry.to_model(44.5, 304.5)
    assert abs(column - mx) <= 1 and abs(row - my) <= 1


def test_model_maps_come_back_to_image_coordinates() -> None:
    prepared = prepare(np.zeros((300, 600), dtype=np.uint8), spec())
    low = np.zeros((1, 16, 16), dtype=np.float32)  # a quarter-resolution map, like a CAM
    low[0, 8, 4] = 1.0  # model pixels 16..19 x 32..35
    back = prepared.geometry.map_to_image(low)
    assert back.shape == (1, 300, 600)
    row, column = np.unravel_index(np.argmax(back[0]), back.shape[1:])
    x, y = prepared.geometry.to_image(4 * 4 + 1.5, 8 * 4 + 1.5)
    assert abs(column - x) <= 1.5 * 600 / 64 and abs(row - y) <= 1.5 * 300 / 32


def test_monochrome1_and_monochrome2_give_the_same_tensor(tmp_path: Path) -> None:
    pixels = blob_image(120, 160, (60, 40), 20, low=300, high=3500)
    plain = dicom_file(tmp_path, pixels, "m2.dcm")
    inverted = dicom_file(
        tmp_path, (4095 - pixels).astype(np.uint16), "m1.dcm", photometric="MONOCHROME1"
    )
    for window in ("minmax", "file"):
        a = prepare(decode(plain), spec(window=window)).tensor
        b = prepare(decode(inverted), spec(window=window)).tensor
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_file_window_is_used_when_asked(tmp_path: Path) -> None:
    pixels = blob_image(64, 64, (32, 32), 10, low=1000, high=3000)
    path = dicom_file(tmp_path, pixels, WindowCenter=1000, WindowWidth=2)
    file_window = prepare(decode(path), spec(window="file", mean=[0.0], std=[1.0])).tensor
    minmax = prepare(decode(path), spec(window="minmax", mean=[0.0], std=[1.0])).tensor
    assert file_window.max() == pytest.approx(1.0) and file_window[0, 0, 0, 0] > 0.4
    assert minmax[0, 0, 0, 0] == pytest.approx(0.0)


def test_rgb_pictures_feed_gray_and_colour_models() -> None:
    picture = np.zeros((32, 32, 3), dtype=np.uint8)
    picture[..., 0] = 255  # pure red
    gray = prepare(picture, spec(mean=[0.0], std=[1.0])).tensor
    assert gray.shape == (1, 1, 64, 64)
    assert gray[0, 0, 10, 10] == pytest.approx(0.299, abs=1e-3)
    colour = prepare(picture, spec(channels=3, mean=[0, 0, 0], std=[1, 1, 1])).tensor
    assert colour.shape == (1, 3, 64, 64)
    assert colour[0, :, 10, 10] == pytest.approx([1.0, 0.0, 0.0])


def test_a_gray_picture_is_repeated_for_a_colour_model() -> None:
    gray = np.full((16, 16), 128, np.uint8)
    tensor = prepare(gray, spec(channels=3, mean=[0] * 3, std=[1] * 3, window="file"))
    assert tensor.tensor[0, :, 5, 5] == pytest.approx([128 / 255] * 3)


def test_the_ultrasound_region_is_cropped_and_mapped_back(tmp_path: Path) -> None:
    ds, _ = ultrasound_dataset([ultrasound_region(20, 10, 139, 109, 0.01)])
    image = decode(save(ds, tmp_path))
    prepared = prepare(image, spec(crop_to_ultrasound_region=True))
    assert prepared.geometry.crop == (20, 10, 120, 100)
    assert prepared.spacing_mm == pytest.approx((0.1, 0.1))
    x, y = prepared.geometry.to_image(*prepared.geometry.to_model(20.0, 10.0))
    assert (x, y) == pytest.approx((20.0, 10.0))
    back = prepared.geometry.map_to_image(np.ones((1, 64, 64), dtype=np.float32))
    assert back[0, 5, 5] == 0 and back[0, 50, 50] == pytest.approx(1.0)


@pytest.mark.parametrize("photometric", ["RGB", "MONOCHROME2"])
def test_the_whole_frame_display_is_made_once_when_asked(tmp_path: Path, photometric: str) -> None:
    gray = blob_image(40, 60, (20, 30), 8).astype(np.uint8)
    pixels = np.dstack([gray, gray // 2, 255 - gray]) if photometric == "RGB" else gray
    ds = image_dataset(pixels, photometric, 8, Modality="US")
    image = decode(save(ds, tmp_path))
    prepared = prepare(image, spec())
    assert prepared._displays == {}  # preparing the tensor did not make it
    shown = prepared.display(0)
    assert prepared.display(0) is shown and list(prepared._displays) == [0]
    expected = np.rint(to_display(single_frame(image, 0, "file"))[0] * 255.0).astype(np.uint8)
    assert shown.dtype == np.uint8 and np.array_equal(shown, expected)
    if photometric == "RGB":
        assert np.array_equal(shown, pixels)  # 8-bit RGB is its own display


def test_no_region_to_crop_is_a_note_not_a_failure(tmp_path: Path) -> None:
    image = decode(dicom_file(tmp_path, blob_image(40, 40, (20, 20), 5)))
    prepared = prepare(image, spec(crop_to_ultrasound_region=True))
    assert prepared.geometry.crop == (0, 0, 40, 40)
    assert "no ultrasound region" in prepared.notes[0]


def test_frames_every_n_feed_one_sample_per_frame(tmp_path: Path) -> None:
    frames = np.stack([blob_image(32, 32, (16, 16), 4 + i) for i in range(5)])
    image = decode(dicom_file(tmp_path, frames, NumberOfFrames=5))
    prepared = prepare(image, spec(frames="every:2"))
    assert prepared.frames == (0, 2, 4)
    assert prepared.tensor.shape == (3, 1, 64, 64)
    assert len(prepared.displays) == 3 and prepared.displays[0].shape == (32, 32)


def test_pictures_are_read_with_opencv_as_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((10, 20, 3), dtype=np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "p.png"), bgr)
    picture = read_picture(tmp_path / "p.png")
    assert picture.shape == (10, 20, 3) and picture[0, 0].tolist() == [200, 0, 0]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(InputError, match="not a readable PNG or JPEG"):
        read_picture(tmp_path / "bad.png")


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((4, 4, 4), np.uint8), "HxW (gray) or HxWx3"),
        (np.full((4, 4), 2.0, np.float32), "values in [0, 1], got 2.0..2.0"),
        (np.zeros((4, 4), np.int64), "uint8, uint16 or float, got int64"),
    ],
)
def test_unusable_arrays_are_refused_saying_why(array: np.ndarray, words: str) -> None:
    with pytest.raises(InputError) as info:
        array_display(array)
    assert words in str(info.value)


def test_the_tensor_matches_the_demo_models_training_reference(tmp_path: Path) -> None:
    """The demo packages were trained on `appliance.phantoms.preprocess`; the runtime must feed
    them the same numbers (chest: whole image; ultrasound: scan region, min-max inside it)."""
    reference = pytest.importorskip("appliance.phantoms.preprocess")
    chest = dicom_file(
        tmp_path, blob_image(300, 240, (100, 120), 40), WindowCenter=1500, WindowWidth=2800
    )
    expected, _ = reference.chest_model_input(dcmread(chest), size=64)
    np.testing.assert_allclose(
        prepare(decode(chest), spec(window="file")).tensor, expected, atol=1e-4
    )
    ds, _ = ultrasound_dataset([ultrasound_region(20, 10, 139, 109, 0.01)])
    ultrasound = save(ds, tmp_path, "us.dcm")
    expected, _ = reference.ultrasound_model_input(dcmread(ultrasound), size=64)
    actual = prepare(decode(ultrasound), spec(window="file", crop_to_ultrasound_region=True))
    np.testing.assert_allclose(actual.tensor, expected, atol=1e-4)
