"""The image plausibility check: the manifest's `quality` section, `check_quality` on phantoms
through the runtime's own `prepare` with the demo packages, and `appliance model profile`.

Phantom seeds 900000 and up, as the other package tests; the demo profiles were measured on
seeds 300000 and up (models/recipes/profile_demo.py).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import appliance.phantoms as phantoms
from appliance.cli import main
from appliance.imaging import DecodedImage, decode
from appliance.runtime import ManifestError, parse_manifest
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import InputSpec, Manifest
from appliance.runtime.package import load_package, sha256_of
from appliance.runtime.preprocess import prepare
from appliance.runtime.quality import QualityCheck, check_quality, display_content

REPO = Path(__file__).resolve().parent.parent
CHEST = REPO / "models" / "demo-chest-xray"
ULTRASOUND = REPO / "models" / "demo-ultrasound-fluid"
SEEDS = range(900_000, 900_040)


def chest_manifest() -> Manifest:
    return load_package(CHEST).manifest


def us_manifest() -> Manifest:
    return load_package(ULTRASOUND).manifest


def check(manifest: Manifest, image: DecodedImage) -> QualityCheck:
    return check_quality(manifest, prepare(image, manifest.input))


def chest_image(seed: int, rows: int = 512) -> DecodedImage:
    modality = "CR" if seed % 2 else "DX"
    return decode(phantoms.chest_dataset(phantoms.make_chest(seed, rows=rows), modality=modality))


def turned(image: DecodedImage, quarter_turns: int) -> DecodedImage:
    pixels = np.rot90(image.pixels, quarter_turns, axes=(1, 2))
    return dataclasses.replace(image, pixels=np.ascontiguousarray(pixels))


def upside_down(image: DecodedImage) -> DecodedImage:
    return dataclasses.replace(image, pixels=np.ascontiguousarray(image.pixels[:, ::-1]))


def near_blank(image: DecodedImage, seed: int) -> DecodedImage:
    """Uniform grey plus faint noise; a min-max window stretches the noise to full range."""
    noise = np.random.default_rng(seed).normal(0.0, 4.0, image.pixels.shape)
    pixels = (2000.0 + noise).astype(image.pixels.dtype)
    return dataclasses.replace(image, pixels=pixels, window=None, voi_lut=None)


@pytest.fixture(scope="module")
def chests() -> list[DecodedImage]:
    return [chest_image(seed, rows=(384, 512)[seed % 2]) for seed in SEEDS]


# --- the manifest section ------------------------------------------------------------------


def demo_text() -> str:
    return (CHEST / "manifest.yaml").read_text(encoding="utf-8")


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "m.yaml")
    return str(info.value)


def with_quality(**changes: object) -> str:
    """The demo chest manifest with its quality section changed (None deletes a field)."""
    data = yaml.safe_load(demo_text())
    for key, value in changes.items():
        if value is None:
            del data["quality"][key]
        else:
            data["quality"][key] = value
    return yaml.safe_dump(data, sort_keys=False)


def test_the_demo_packages_carry_a_profile() -> None:
    for manifest in (chest_manifest(), us_manifest()):
        assert manifest.quality is not None
        assert manifest.quality.method == "thumbnail-correlation"
        assert manifest.quality.images == 300
        assert len(manifest.quality.reference) == manifest.quality.size == 16
        assert 0.0 < manifest.quality.min_correlation < 1.0


def test_a_manifest_without_quality_stays_valid() -> None:
    data = yaml.safe_load(demo_text())
    del data["quality"]
    assert parse_manifest(yaml.safe_dump(data, sort_keys=False)).quality is None


def test_the_reference_is_written_one_row_per_line() -> None:
    text = demo_text()
    rows = [line for line in text.splitlines() if line.startswith("  - [")]
    assert len(rows) == 16
    assert all(line.count(",") == 15 for line in rows)


@pytest.mark.parametrize(
    ("changes", "where", "words"),
    [
        ({"reference": [[0.1] * 16 for _ in range(15)]}, "quality.reference:", "15 row(s)"),
        ({"reference": [[0.1, 0.2] * 8] * 15 + [[0.1] * 15]}, "quality.reference.15:", "15"),
        ({"min_correlation": None}, "quality.min_correlation:", "Field required"),
        ({"reference": None}, "quality.reference:", "Field required"),
        ({"images": None}, "quality.images:", "Field required"),
        ({"min_correlation": 1.5}, "quality.min_correlation:", "1.5"),
        ({"min_orientation_gap": 0.2}, "quality.min_orientation_gap:", "0.2"),
        ({"size": 2}, "quality.size:", "(got 2)"),
        ({"method": "histogram"}, "quality.method:", "'histogram'"),
        ({"colour": "grey"}, "quality.colour:", "unknown key"),
        ({"reference": [[0.3] * 16] * 16}, "quality.reference:", "constant"),
    ],
)
def test_a_bad_quality_section_names_the_field(
    changes: dict[str, object], where: str, words: str
) -> None:
    message = error_of(with_quality(**changes))
    assert where in message and words in message, message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5, -0.1])
def test_a_reference_value_outside_the_display_range_is_refused(bad: float) -> None:
    reference = [[(row + column) / 30 for column in range(16)] for row in range(16)]
    reference[3][5] = bad
    message = error_of(with_quality(reference=reference))
    assert "quality.reference.3.5:" in message, message


# --- check_quality on chest phantoms -------------------------------------------------------


def test_typical_chest_images_pass(chests: list[DecodedImage]) -> None:
    manifest = chest_manifest()
    assert manifest.quality is not None
    assert {image.source_photometric for image in chests} == {"MONOCHROME1", "MONOCHROME2"}
    for image in chests:
        result = check(manifest, image)
        assert result.passed, result.reasons
        assert result.reasons == () and result.notes == ()
        assert result.statistics["correlation"] >= manifest.quality.min_correlation
        assert result.statistics["orientation_gap"] > 0.0


@pytest.mark.parametrize("quarter_turns", [1, -1])
def test_chest_images_rotated_by_90_degrees_are_held_back(
    chests: list[DecodedImage], quarter_turns: int
) -> None:
    manifest = chest_manifest()
    for image in chests:
        result = check(manifest, turned(image, quarter_turns))
        assert not result.passed
        (reason,) = result.reasons
        assert "rotated by 90 degrees" in reason and "orientation" in reason, reason
        assert result.statistics["orientation_gap"] < 0.0


def test_upside_down_chest_images_are_held_back(chests: list[DecodedImage]) -> None:
    manifest = chest_manifest()
    for image in chests:
        for spoiled in (upside_down(image), turned(image, 2)):
            result = check(manifest, spoiled)
            assert not result.passed
            (reason,) = result.reasons
            assert "upside down" in reason and "orientation" in reason, reason


def test_a_near_blank_chest_image_is_held_back_as_blank(chests: list[DecodedImage]) -> None:
    manifest = chest_manifest()
    for seed, image in zip(SEEDS[:5], chests[:5], strict=True):
        blank = near_blank(image, seed)
        result = check(manifest, blank)
        assert not result.passed
        (reason,) = result.reasons
        assert reason.startswith("the image is almost blank (contrast ")
        assert "check the image" in reason and "retake" not in reason
        assert result.statistics["contrast"] < 0.02
        assert "correlation" not in result.statistics
        assert result.notes == ("the profile check did not run: the image is blank",)


def test_without_a_profile_only_the_blank_check_runs(chests: list[DecodedImage]) -> None:
    manifest = chest_manifest().model_copy(update={"quality": None})
    result = check(manifest, upside_down(chests[0]))
    assert result.passed and set(result.statistics) == {"contrast"}
    assert result.notes == ("the package has no input profile: only the blank-image check ran",)
    assert not check(manifest, near_blank(chests[0], 1)).passed


def test_an_ultrasound_image_is_not_a_typical_chest_image() -> None:
    manifest = chest_manifest()
    for seed in SEEDS[:4]:
        frame = decode(phantoms.ultrasound_dataset(phantoms.make_ultrasound(seed)))
        result = check(manifest, frame)
        assert not result.passed
        (reason,) = result.reasons
        assert "does not look like a typical input of this model" in reason, reason


def test_a_frame_position_outside_the_input_is_refused(chests: list[DecodedImage]) -> None:
    manifest = chest_manifest()
    with pytest.raises(InputError, match="frame position 1 is out of range"):
        check_quality(manifest, prepare(chests[0], manifest.input), position=1)


# --- check_quality on ultrasound phantoms --------------------------------------------------


def us_frame(seed: int, color: bool = True) -> DecodedImage:
    return decode(phantoms.ultrasound_dataset(phantoms.make_ultrasound(seed, color=color)))


def test_typical_ultrasound_frames_pass() -> None:
    manifest = us_manifest()
    for seed in SEEDS[:16]:
        result = check(manifest, us_frame(seed, color=seed % 4 != 0))
        assert result.passed, result.reasons


@pytest.mark.parametrize("value", [0, 90])
def test_a_black_or_uniform_ultrasound_frame_is_held_back(value: int) -> None:
    manifest = us_manifest()
    for color in (True, False):
        frame = us_frame(SEEDS[0], color=color)
        blank = dataclasses.replace(frame, pixels=np.full_like(frame.pixels, value))
        result = check(manifest, blank)
        assert not result.passed
        (reason,) = result.reasons
        assert "almost blank (contrast 0.0% of the display range" in reason, reason


def test_an_upside_down_ultrasound_frame_is_held_back() -> None:
    manifest = us_manifest()
    frame = us_frame(SEEDS[1])
    assert frame.region is not None
    rows = frame.pixels.shape[1]
    region = dataclasses.replace(
        frame.region, y0=rows - 1 - frame.region.y1, y1=rows - 1 - frame.region.y0
    )
    flipped = dataclasses.replace(upside_down(frame), region=region)
    result = check(manifest, flipped)
    assert not result.passed
    assert "upside down" in result.reasons[0], result.reasons


# --- appliance model profile ----------------------------------------------------------------


def profile_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for seed in range(910_000, 910_000 + count):
        phantom = phantoms.make_chest(seed, rows=320)
        ds = phantoms.chest_dataset(phantom, modality="CR" if seed % 2 else "DX")
        ds.save_as(folder / f"chest{seed}.dcm", enforce_file_format=True)
    return folder


def save_blank_chest(path: Path) -> None:
    """A chest file whose pixels are uniform plus faint noise, without a VOI window."""
    ds = phantoms.chest_dataset(phantoms.make_chest(910_999, rows=320))
    noise = np.random.default_rng(3).normal(0.0, 4.0, (ds.Rows, ds.Columns))
    ds.PixelData = np.rint(2000.0 + noise).astype("<u2").tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)


def test_profile_writes_a_section_that_loads_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "chest"
    shutil.copytree(CHEST, package)
    before = yaml.safe_load((package / "manifest.yaml").read_text())
    dataset = profile_images(tmp_path / "typical", 24)
    (dataset / "notes.txt").write_text("not an image")  # skipped with a warning
    save_blank_chest(dataset / "blank.dcm")  # skipped: it would flatten the reference
    code = main(["model", "profile", str(package), "--dataset", str(dataset)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning: skipped notes.txt: " in err
    assert "warning: skipped blank.dcm: the image is almost blank" in err
    assert "24 image(s) used, 2 skipped" in out and "min_correlation" in out

    loaded = load_package(package)  # checksums rewritten, manifest valid
    quality = loaded.manifest.quality
    assert quality is not None and quality.images == 24 and quality.size == 16
    after = yaml.safe_load((package / "manifest.yaml").read_text())
    assert list(after) == [*(k for k in before if k != "quality"), "quality"]
    assert {k: v for k, v in after.items() if k != "quality"} == {
        k: v for k, v in before.items() if k != "quality"
    }
    for name in ("model.onnx", "model.int8.onnx"):
        assert sha256_of(package / name) == sha256_of(CHEST / name)

    image = chest_image(SEEDS[0])
    assert check(loaded.manifest, image).passed
    assert "upside down" in check(loaded.manifest, upside_down(image)).reasons[0]


def test_profile_refuses_too_few_images_and_leaves_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "chest"
    shutil.copytree(CHEST, package)
    manifest = (package / "manifest.yaml").read_bytes()
    dataset = profile_images(tmp_path / "few", 3)
    code = main(["model", "profile", str(package), "--dataset", str(dataset)])
    assert code == 2
    assert "3 usable image(s) of 3 file(s); a profile needs at least 10" in capsys.readouterr().err
    assert (package / "manifest.yaml").read_bytes() == manifest


# --- what is measured ----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_the_content_box_is_measured_in_display_values(channels: int) -> None:
    """Padding left out, mean/std undone; an RGB picture counts by its luma (BT.601)."""
    spec = InputSpec(
        name="image",
        height=32,
        width=32,
        channels=channels,
        resize="letterbox",
        window="file",
        mean=(0.5, 0.4, 0.3)[:channels],
        std=(0.2, 0.25, 0.3)[:channels],
    )
    picture = np.zeros((20, 40, 3), dtype=np.uint8)
    picture[:, :, 0] = 255  # pure red: luma 0.299
    prepared = prepare(picture, spec)
    assert prepared.geometry.content == (0, 8, 32, 16)
    content = display_content(spec, prepared)
    assert content.shape == (16, 32)
    np.testing.assert_allclose(content, 0.299, atol=1e-3)
