"""The study view's pictures: one frame of a stored image rendered as 8-bit PNG, and the cache
of default renderings.

The default rendering of each frame is cached under the cache folder, named by the instance's
row id, its file's SHA-256 (a replaced image gets a new name) and the frame number: never by
any value from the DICOM file or the request. Renderings are remade on demand, so the cache is
trimmed by size now and then and a missing file is never an error.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.imaging import DecodedImage, Window, decode, to_display
from appliance.paths import write_atomically
from appliance.store import Store
from appliance.store.worklist import ImageRow

THUMB_PX = 160
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Rendered:
    png: Path
    meta: dict[str, Any]


def cached_render(store: Store, image: ImageRow, frame: int, thumb: bool) -> Rendered:
    """The default rendering of a frame, made once and kept in the cache folder."""
    folder = store.paths.cache_dir / "ui-images"
    name = _cache_name(image, frame, thumb)
    png, meta_path = folder / f"{name}.png", folder / f"{name}.json"
    if png.exists() and meta_path.exists():
        return Rendered(png, json.loads(meta_path.read_text(encoding="utf-8")))
    data, meta = render_frame(store, image, frame, None, thumb)
    folder.mkdir(parents=True, exist_ok=True)
    # two requests may render the same frame at once: a reader never sees half a PNG
    write_atomically(png, data)
    write_atomically(meta_path, json.dumps(meta).encode())
    _trim_now_and_then(folder)
    return Rendered(png, meta)


_CACHE_MAX_BYTES = 512 * 2**20  # renderings are remade on demand: the cache only saves time
_TRIM_EVERY = 50  # renderings between looks at the cache's size (a look lists the folder)
_renders = itertools.count(1)


def _trim_now_and_then(folder: Path) -> None:
    if next(_renders) % _TRIM_EVERY == 0:
        trim_cache(folder, _CACHE_MAX_BYTES)


def trim_cache(folder: Path, max_bytes: int) -> int:
    """Delete the least recently written renderings until the folder holds at most
    `max_bytes`; return how many files went. A file another request is reading stays
    readable (Linux keeps it until closed), and a missing rendering is simply made again."""
    files = []
    for path in folder.iterdir():
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed += 1
    return removed


def _cache_name(image: ImageRow, frame: int, thumb: bool) -> str:
    """Digits and hex only: the row id, the file's hash (ours, checked) and the frame."""
    digest = image.sha256 if _SHA256.match(image.sha256) else "0" * 64
    return f"{int(image.instance_id)}-{digest[:16]}-{int(frame)}{'-thumb' if thumb else ''}"


def render_frame(
    store: Store, image: ImageRow, frame: int, window: Window | None, thumb: bool
) -> tuple[bytes, dict[str, Any]]:
    """PNG bytes of one frame at `window` (None: the file's own, else its full range), and
    the window a viewer starts adjusting from."""
    decoded = _decoded(store.file_of(image.instance_id), image.sha256, frame)
    shown = to_display(decoded, window)[0]
    pixels = np.rint(shown * np.float32(255.0)).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if thumb:
        pixels = _shrink(pixels, THUMB_PX)
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes(), _window_meta(decoded, pixels.shape[0], pixels.shape[1])


@lru_cache(maxsize=2)
def _decoded(path: Path, sha256: str, frame: int) -> DecodedImage:
    """The last frames decoded: dragging the window re-renders one frame many times, and
    decoding (not windowing) is the slow part. The hash keys out a replaced file."""
    return decode(path, index=frame)


def _window_meta(decoded: DecodedImage, rows: int, columns: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"grayscale": decoded.photometric != "RGB", "rows": rows}
    meta["columns"] = columns
    if decoded.photometric == "RGB":
        return meta
    low, high = float(np.min(decoded.pixels)), float(np.max(decoded.pixels))
    if decoded.window is not None:
        centre, width = decoded.window.centre, decoded.window.width
    else:
        centre, width = (low + high) / 2.0, max(high - low, 1.0)
    meta.update(centre=round(centre, 3), width=round(width, 3), low=low, high=high)
    return meta


def _shrink(pixels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    rows, columns = pixels.shape[:2]
    scale = size / max(rows, columns)
    if scale >= 1:
        return pixels
    target = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return np.asarray(cv2.resize(pixels, target, interpolation=cv2.INTER_AREA), dtype=np.uint8)
