"""The import page applies the receiver's size limits: a deflate bomb and an image without
Pixel Data are refused with the reason, and nothing is stored."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from test_receiver_faults import encode_body, file_meta, write_raw
from test_receiver_limits import deflate_bomb
from test_web_import import store_of, upload
from test_web_import import tech as tech  # the signed-in technologist fixture

from appliance.samples import make_dataset


def test_the_import_page_refuses_a_deflate_bomb(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    bomb = deflate_bomb(tmp_path / "in" / "bomb.dcm", 64 * 2**20)
    response = upload(tech, [(bomb.read_bytes(), "bomb.dcm")])
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "inflates past" in page
    assert store_of(app).summary().instances == 0


def test_the_import_page_refuses_an_image_without_pixel_data(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    ds = make_dataset("cr", seed=31, rows=16, columns=16)
    del ds.PixelData
    path = write_raw(
        tmp_path / "in" / "empty.dcm",
        file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID)),
        encode_body(ds),
    )
    page = upload(tech, [(path.read_bytes(), "empty.dcm")]).get_data(as_text=True)
    assert "the image has no Pixel Data" in page
    assert store_of(app).summary().instances == 0
