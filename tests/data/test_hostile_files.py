"""Hostile and broken input: path traversal, decompression bombs, huge files, truncated
and inconsistent images, non-finite values. Each is refused with a one-line
`LandmarkDataError` naming the file, before anything large is decoded or parsed."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from lmjax.data import limits
from lmjax.data.coco import load_coco
from lmjax.data.image_io import read_radiograph
from lmjax.data.isbi2015 import read_isbi_annotation
from lmjax.data.labelme import load_labelme, read_labelme_file
from lmjax.data.tabular import load_csv
from lmjax.data.types import LandmarkDataError
from tests.data.test_image_io import write_dicom


def refused(fn, *names: str, match: str | None = None) -> str:
    """The one-line message of the LandmarkDataError `fn()` raises; it names `names`."""
    with pytest.raises(LandmarkDataError, match=match) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in names), message
    return message


def _coco(tmp_path, file_name: str):
    doc = {
        "images": [{"id": 1, "file_name": file_name}],
        "categories": [{"id": 1, "name": "c", "keypoints": ["a"]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2]}],
    }
    path = tmp_path / "data" / "k.json"
    (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("file_name", ["../secret.png", "images/../../secret.png", "ABSOLUTE"])
def test_coco_file_name_outside_the_folder_is_refused(tmp_path, file_name):
    (tmp_path / "secret.png").write_bytes(b"")
    file_name = str(tmp_path / "secret.png") if file_name == "ABSOLUTE" else file_name
    path = _coco(tmp_path, file_name)
    message = refused(lambda: load_coco(path), "k.json", "annotation 1", match="outside")
    assert "LMJAX_ALLOW_OUTSIDE_PATHS=1" in message
    with limits.changed(allow_outside_paths=True):  # the explicit opt-in reads it
        assert load_coco(path).records[0].image.endswith("secret.png")


def test_csv_image_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"")
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "t.csv"
    path.write_text("image,a_x,a_y\n../secret.png,1,2\n")
    refused(lambda: load_csv(path), "t.csv:2", "'../secret.png'", match="outside")


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims `width x height` with one row of data: a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data))


def test_decompression_bomb_and_oversized_headers_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 60_000, 60_000)  # 3.6 G pixels from a few kB
    started = time.perf_counter()
    refused(lambda: read_radiograph(bomb), "bomb.png")  # by Pillow's own limit
    _png_header_only(bomb, 9_000, 9_000)  # 81 M pixels: under Pillow's, over lmjax's
    refused(lambda: read_radiograph(bomb), "bomb.png", match="refused before decoding")
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, np.zeros((20, 24), np.uint16))
    dicom = write_dicom(tmp_path / "rows.dcm", Rows=60_000, Columns=60_000)
    refused(lambda: read_radiograph(dicom), "rows.dcm", match="60000 x 60000 .* over the limit")
    with limits.changed(max_image_pixels=100):
        refused(lambda: read_radiograph(tif), "big.tif", match="20 x 24 = 480 pixels")
        png = tmp_path / "small.png"
        Image.fromarray(np.zeros((20, 24), np.uint8)).save(png)
        refused(lambda: read_radiograph(png), "small.png", match="LMJAX_MAX_IMAGE_PIXELS")
    assert time.perf_counter() - started < 5


def test_huge_files_are_refused_by_size_without_reading(tmp_path):
    big_json = tmp_path / "huge.json"
    with open(big_json, "wb") as f:
        f.truncate(300 * 2**20)  # sparse: 300 MB that cost no disk and no reading
    started = time.perf_counter()
    message = refused(lambda: read_labelme_file(big_json, ("a",)), "huge.json")
    assert "314,572,800 bytes is over the limit of 134,217,728" in message
    assert "LMJAX_MAX_ANNOTATION_BYTES" in message
    refused(lambda: load_coco(big_json), "huge.json", match="over the limit")
    big_dicom = tmp_path / "huge.dcm"
    with open(big_dicom, "wb") as f:
        f.truncate(600 * 2**20)
    refused(lambda: read_radiograph(big_dicom), "huge.dcm", match="LMJAX_MAX_IMAGE_BYTES")
    assert time.perf_counter() - started < 2


def test_limits_come_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"shapes": []}))
    monkeypatch.setenv("LMJAX_MAX_ANNOTATION_BYTES", "10")
    refused(lambda: read_labelme_file(path, ("a",)), "a.json", match="limit of 10 ")
    monkeypatch.setenv("LMJAX_MAX_ANNOTATION_BYTES", "1e3")
    assert limits.current().max_annotation_bytes == 1000
    monkeypatch.setenv("LMJAX_MAX_ANNOTATION_BYTES", "lots")
    with pytest.raises(ValueError, match="LMJAX_MAX_ANNOTATION_BYTES='lots'"):
        limits.current()


def test_truncated_images_are_one_line_errors_naming_the_file(tmp_path):
    array = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(64, 48)
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        refused(lambda p=path: read_radiograph(p), f"cut{suffix}", match="unreadable image")
    whole = write_dicom(tmp_path / "whole.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-50])
    refused(lambda: read_radiograph(tmp_path / "cut.dcm"), "cut.dcm")


def test_dicom_header_that_disagrees_with_its_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "lies.dcm", Rows=30, Columns=30)  # data is 16 x 12
    message = refused(lambda: read_radiograph(path), "lies.dcm", match="header says 30 x 30")
    assert "holds 384 bytes" in message


def test_non_finite_pixels_are_refused_at_read_time(tmp_path):
    pixels = np.ones((8, 8), np.float32)
    pixels[2, 3] = np.nan
    pixels[4, 4] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", pixels)
    refused(lambda: read_radiograph(tmp_path / "nan.tif"), "nan.tif", match="2 pixels are NaN")


def test_labelme_point_of_three_numbers_and_non_finite_points(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    shape = {"label": "a", "points": [[1.0, 2.0, 3.0]], "shape_type": "point"}
    (folder / "three.json").write_text(json.dumps({"shapes": [shape]}))
    refused(
        lambda: read_labelme_file(folder / "three.json", ("a",)),
        "three.json",
        match=r"'a' points have shape \(1, 3\)",
    )
    shape["points"] = [[float("nan"), 2.0]]
    (folder / "three.json").write_text(json.dumps({"shapes": [shape]}))
    refused(lambda: read_labelme_file(folder / "three.json", ("a",)), "three.json", match="NaN")
    dataset = load_labelme(folder, strict=False)  # the folder reader lists it as an error
    assert len(dataset.errors) == 1 and "three.json" in dataset.errors[0]


@pytest.mark.parametrize("line", ["nan,nan", "1e400,2", "3e38,4e38", "1,inf"])
def test_isbi_coordinates_must_be_finite(tmp_path, line):
    path = tmp_path / "001.txt"
    path.write_text(f"1,2\n{line}\n")
    refused(lambda: read_isbi_annotation(path, 2), "001.txt", match="line 2")
