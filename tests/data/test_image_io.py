"""Tests for lmjax.data.image_io: DICOM and image reading, spacing, display mapping."""

from __future__ import annotations

import io
import os
import pathlib
import warnings

import numpy as np
import pydicom
import pydicom.pixels
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)

from lmjax.data.image_io import (
    SUPPORTED_EXTENSIONS,
    is_image_file,
    read_radiograph,
    to_display_uint8,
)
from lmjax.data.types import LandmarkDataError, Radiograph

H, W = 16, 12
STORED = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7  # 0..1337, fits 12 bits


def no_warnings() -> warnings.catch_warnings:
    """A context in which any warning fails the test."""
    return warnings.catch_warnings(action="error")


def write_dicom(
    path: pathlib.Path,
    pixels: np.ndarray | None = STORED,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    preamble: bool = True,
    **tags,
) -> pathlib.Path:
    """Write a small CR DICOM; `tags` are set by keyword (invalid DS values allowed)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if pixels.ndim == 3 else pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
        if pixels.ndim == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 8 * pixels.dtype.itemsize
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the invalid DS values we want
        for key, value in tags.items():
            setattr(ds, key, value)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta = FileMetaDataset()
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


# ---------------------------------------------------------------- real DICOM files


@pytest.fixture(scope="module")
def dicom_dir(shared_data: pathlib.Path) -> pathlib.Path:
    return shared_data / "dicom"


def test_rg1_monochrome1_15_bits_and_invalid_spacing(dicom_dir):
    path = dicom_dir / "RG1_UNCR.dcm"
    raw = pydicom.dcmread(path)
    rg = read_radiograph(path)
    assert (raw.Rows, raw.Columns) == (1955, 1841)
    assert rg.pixels.shape == (1955, 1841) and rg.pixels.dtype == np.float32
    assert rg.bit_depth == 15 and rg.photometric == "MONOCHROME1"
    # Inverted: bone bright, so the result runs against the stored values.
    assert np.corrcoef(rg.pixels.ravel(), raw.pixel_array.ravel())[0, 1] < -0.99
    np.testing.assert_array_equal(rg.pixels, 2**15 - 1 - raw.pixel_array.astype(np.float32))
    assert len(np.unique(rg.pixels)) > 256 and rg.pixels.max() > 255
    assert rg.spacing is None and rg.spacing_source == "none"
    assert any(
        "RG1_UNCR.dcm" in w and "invalid PixelSpacing (0028,0030)" in w and "0.000" in w
        for w in rg.warnings
    )
    assert rg.window == (2**15 - 1 - 15000, 30000)


def test_rg3_no_spacing_tag(dicom_dir):
    path = dicom_dir / "RG3_UNCR.dcm"
    rg = read_radiograph(path)
    raw = pydicom.dcmread(path).pixel_array
    assert rg.pixels.shape == (1760, 1760) and rg.pixels.dtype == np.float32
    assert rg.bit_depth == 10 and rg.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(rg.pixels, 1023 - raw.astype(np.float32))
    assert rg.spacing is None and rg.spacing_source == "none"
    assert rg.warnings == []
    assert read_radiograph(path, spacing=(0.1, 0.2)).spacing == (0.1, 0.2)
    assert read_radiograph(path, spacing=(0.1, 0.2)).spacing_source == "user"


def test_dicom_without_pixel_data_names_the_file(dicom_dir):
    with pytest.raises(LandmarkDataError, match=r"chrJapMulti\.dcm.*no pixel data"):
        read_radiograph(dicom_dir / "chrJapMulti.dcm")


# ---------------------------------------------------------------- written DICOM files


@pytest.mark.parametrize(
    ("tags", "spacing", "source", "warned"),
    [
        ({"PixelSpacing": [0.1, 0.2]}, (0.1, 0.2), "PixelSpacing", None),
        (
            {"PixelSpacing": [0.1, 0.2], "ImagerPixelSpacing": [0.3, 0.3]},
            (0.1, 0.2),
            "PixelSpacing",
            None,
        ),
        (
            {"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.25]},
            (0.15, 0.25),
            "ImagerPixelSpacing",
            "PixelSpacing (0028,0030)",
        ),
        (
            {"PixelSpacing": [-0.1, 0.1], "ImagerPixelSpacing": [0.15, 0.25]},
            (0.15, 0.25),
            "ImagerPixelSpacing",
            "PixelSpacing (0028,0030)",
        ),
        (
            {"PixelSpacing": ["nan", 0.1], "ImagerPixelSpacing": [0.15, 0.25]},
            (0.15, 0.25),
            "ImagerPixelSpacing",
            "PixelSpacing (0028,0030)",
        ),
        ({"PixelSpacing": ["inf", "inf"]}, None, "none", "PixelSpacing (0028,0030)"),
        ({"PixelSpacing": 0.1}, None, "none", "PixelSpacing (0028,0030)"),
        (
            {"ImagerPixelSpacing": [0.15, 0.3], "EstimatedRadiographicMagnificationFactor": 1.2},
            (0.125, 0.25),
            "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
            None,
        ),
        ({"ImagerPixelSpacing": [0.15, 0.3]}, (0.15, 0.3), "ImagerPixelSpacing", None),
        (
            {"ImagerPixelSpacing": [0.15, 0.3], "EstimatedRadiographicMagnificationFactor": 0},
            (0.15, 0.3),
            "ImagerPixelSpacing",
            "EstimatedRadiographicMagnificationFactor",
        ),
        ({"ImagerPixelSpacing": [0.0, 0.0]}, None, "none", "ImagerPixelSpacing (0018,1164)"),
        ({}, None, "none", None),
    ],
)
def test_dicom_spacing_precedence(tmp_path, tags, spacing, source, warned):
    rg = read_radiograph(write_dicom(tmp_path / "s.dcm", **tags))
    assert rg.spacing == (None if spacing is None else pytest.approx(spacing))
    assert rg.spacing_source == source
    if warned is None:
        assert rg.warnings == []
    else:
        assert any("s.dcm" in w and f"invalid {warned}" in w for w in rg.warnings), rg.warnings


def test_dicom_spacing_is_row_first(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "r.dcm", PixelSpacing="0.3\\0.1"))
    assert rg.spacing == (0.3, 0.1)
    rg = read_radiograph(write_dicom(tmp_path / "i.dcm", ImagerPixelSpacing="0.4\\0.2"))
    assert rg.spacing == (0.4, 0.2)


def test_user_spacing_overrides_file(tmp_path):
    path = write_dicom(tmp_path / "u.dcm", PixelSpacing=[0.1, 0.1])
    rg = read_radiograph(path, spacing=(0.2, 0.3))
    assert (rg.spacing, rg.spacing_source) == ((0.2, 0.3), "user")
    with pytest.raises(LandmarkDataError, match=r"u\.dcm.*spacing"):
        read_radiograph(path, spacing=(0.0, 0.1))


def test_dicom_rescale_is_applied_exactly(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", RescaleSlope=2, RescaleIntercept=-100)
    rg = read_radiograph(path)
    assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (H, W)
    np.testing.assert_array_equal(rg.pixels, 2.0 * STORED - 100)
    assert (rg.bit_depth, rg.photometric, rg.window) == (12, "MONOCHROME2", None)


def test_dicom_monochrome1_is_inverted_in_stored_range(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1"))
    np.testing.assert_array_equal(rg.pixels, 4095.0 - STORED)
    assert rg.photometric == "MONOCHROME1"
    # Inversion first, then rescale.
    path = write_dicom(
        tmp_path / "m1r.dcm", photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100
    )
    np.testing.assert_array_equal(read_radiograph(path).pixels, 2.0 * (4095 - STORED) - 100)


def test_dicom_signed_monochrome1(tmp_path):
    stored = (STORED.astype(np.int16) - 600).astype(np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored, photometric="MONOCHROME1", signed=True)
    np.testing.assert_array_equal(read_radiograph(path).pixels, -1.0 - stored)


def test_dicom_window_recorded_and_follows_inversion(tmp_path):
    rg = read_radiograph(
        write_dicom(tmp_path / "w.dcm", WindowCenter=[600, 40], WindowWidth=[800, 80])
    )
    assert rg.window == (600.0, 800.0)
    assert rg.pixels.max() == STORED.max()  # the window is not baked into the pixels
    path = write_dicom(
        tmp_path / "w1.dcm",
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=1000,
        WindowWidth=800,
    )
    rg = read_radiograph(path)
    # The stored value at the centre, (1000 + 100) / 2 = 550, inverts to 3545 -> 6990.
    assert rg.window == (2 * 3545 - 100, 800)
    # A MONOCHROME1 viewer windows the rescaled values, then shows low as bright.
    rescaled = 2.0 * STORED - 100
    viewer = 255 - np.clip((rescaled - 600) / 800, 0, 1) * 255
    np.testing.assert_allclose(to_display_uint8(rg), viewer, atol=1)


def test_dicom_invalid_window_is_reported(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "w.dcm", WindowCenter=100, WindowWidth=0))
    assert rg.window is None
    assert any("w.dcm" in w and "WindowWidth" in w for w in rg.warnings)


def test_dicom_multi_frame_is_refused(tmp_path):
    frames = np.stack([STORED, STORED])
    path = write_dicom(tmp_path / "mf.dcm", STORED, pixel_data=frames.tobytes(), NumberOfFrames=2)
    with pytest.raises(LandmarkDataError, match=r"mf\.dcm.*multi-frame.*2 frames"):
        read_radiograph(path)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "empty.dcm", None, PixelSpacing=[0.1, 0.1])
    with pytest.raises(LandmarkDataError, match=r"empty\.dcm.*no pixel data"):
        read_radiograph(path)


def test_dicom_compressed_without_decoder(tmp_path):
    if pydicom.pixels.get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip(reason="a JPEG Lossless decoder plugin is installed")
    path = write_dicom(
        tmp_path / "jl.dcm",
        syntax=JPEGLosslessSV1,
        pixel_data=encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"]),
    )
    with pytest.raises(LandmarkDataError, match=r"jl\.dcm") as info:
        read_radiograph(path)
    message = str(info.value)
    assert "JPEG Lossless" in message and JPEGLosslessSV1 in message
    assert "lmjax[dicom-codecs]" in message and "pylibjpeg" in message and "gdcm" in message


def test_dicom_compressed_decodes_with_plugin(tmp_path):
    if not pydicom.pixels.get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip(reason="no JPEG Baseline decoder plugin is installed")
    grey = (np.add.outer(np.arange(H), np.arange(W)) * 8).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
    path = write_dicom(
        tmp_path / "jb.dcm",
        grey,
        bits_stored=8,
        syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([buffer.getvalue()]),
    )
    rg = read_radiograph(path)
    assert rg.pixels.shape == (H, W) and rg.bit_depth == 8
    np.testing.assert_allclose(rg.pixels, grey, atol=8)


def test_dicom_corrupt_compressed_data_names_syntax(tmp_path):
    if not pydicom.pixels.get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip(reason="no JPEG Baseline decoder plugin is installed")
    path = write_dicom(
        tmp_path / "bad.dcm",
        STORED.astype(np.uint8),
        bits_stored=8,
        syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"]),
    )
    with pytest.raises(
        LandmarkDataError, match=r"bad\.dcm.*JPEG Baseline.*1\.2\.840\.10008\.1\.2\.4\.50"
    ):
        read_radiograph(path)


def test_dicom_truncated_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", pixel_data=STORED.tobytes()[:100])
    with pytest.raises(
        LandmarkDataError, match=r"t\.dcm: DICOM header says 16 x 12 .* holds 100 bytes"
    ):
        read_radiograph(path)


def test_dicom_colour_is_converted_to_luminance(tmp_path):
    rgb = np.stack([STORED % 256, STORED // 7 % 256, np.full_like(STORED, 9)], -1).astype(np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8)
    with pytest.warns(UserWarning, match=r"rgb\.dcm.*colour"):
        rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, rgb @ [0.299, 0.587, 0.114], rtol=1e-5)
    assert rg.photometric == "RGB" and rg.pixels.shape == (H, W)


def test_garbage_dcm_is_refused(tmp_path):
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(LandmarkDataError, match=r"noise\.dcm.*not a DICOM"):
        read_radiograph(path)


def test_corrupt_file_with_dicm_preamble(tmp_path):
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(8))
    with pytest.raises(LandmarkDataError, match=r"corrupt\.dcm"):
        read_radiograph(path)


def test_dicom_found_by_content_and_without_preamble(tmp_path):
    no_ext = write_dicom(tmp_path / "IM0001", PixelSpacing=[0.2, 0.2])
    assert is_image_file(no_ext)
    assert read_radiograph(no_ext).spacing == (0.2, 0.2)
    bare = write_dicom(tmp_path / "bare.dcm", preamble=False, PixelSpacing=[0.2, 0.1])
    assert bare.read_bytes()[128:132] != b"DICM"
    rg = read_radiograph(bare)
    np.testing.assert_array_equal(rg.pixels, STORED)
    assert rg.spacing == (0.2, 0.1)


# ---------------------------------------------------------------- other image formats


def save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_png_8_bit(tmp_path):
    grey = (STORED % 256).astype(np.uint8)
    rg = read_radiograph(save(tmp_path / "g.png", grey))
    assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (H, W)
    np.testing.assert_array_equal(rg.pixels, grey)
    assert (rg.bit_depth, rg.photometric, rg.spacing, rg.spacing_source) == (
        8,
        "MONOCHROME2",
        None,
        "none",
    )


def test_png_16_bit_keeps_values(tmp_path):
    deep = STORED * 40  # up to 53480
    rg = read_radiograph(save(tmp_path / "g16.png", deep))
    assert rg.bit_depth == 16 and rg.pixels.max() > 255
    np.testing.assert_array_equal(rg.pixels, deep)


def test_grey_jpeg(tmp_path):
    grey = (np.add.outer(np.arange(H), np.arange(W)) * 8).astype(np.uint8)
    with no_warnings():
        rg = read_radiograph(save(tmp_path / "g.jpg", grey, quality=95))
    assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (H, W) and rg.bit_depth == 8
    np.testing.assert_allclose(rg.pixels, grey, atol=8)


def test_bmp(tmp_path):
    grey = (STORED % 256).astype(np.uint8)
    rg = read_radiograph(save(tmp_path / "g.bmp", grey))
    np.testing.assert_array_equal(rg.pixels, grey)
    assert rg.pixels.dtype == np.float32 and rg.bit_depth == 8


def test_tiff_16_bit(tmp_path):
    deep = STORED * 40
    path = tmp_path / "g16.tif"
    tifffile.imwrite(path, deep, resolution=(300, 300))  # DPI is not a spacing
    rg = read_radiograph(path)
    np.testing.assert_array_equal(rg.pixels, deep)
    assert (rg.bit_depth, rg.spacing, rg.photometric) == (16, None, "MONOCHROME2")


def test_tiff_min_is_white_is_inverted(tmp_path):
    path = tmp_path / "mw.tiff"
    tifffile.imwrite(path, STORED * 40, photometric="miniswhite")
    rg = read_radiograph(path)
    np.testing.assert_array_equal(rg.pixels, 65535.0 - STORED * 40)
    assert rg.photometric == "MONOCHROME1"


def test_tiff_16_bit_rgb_with_identical_channels(tmp_path):
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, np.stack([STORED * 40] * 3, -1), photometric="rgb")
    with no_warnings():
        rg = read_radiograph(path)
    np.testing.assert_array_equal(rg.pixels, STORED * 40)
    assert rg.bit_depth == 16


def test_tiff_lzw_16_bit(tmp_path):
    deep = STORED * 40
    rg = read_radiograph(save(tmp_path / "lzw.tif", deep, compression="tiff_lzw"))
    np.testing.assert_array_equal(rg.pixels, deep)
    assert rg.bit_depth == 16


def test_tiff_multi_page_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([STORED, STORED]))
    with pytest.raises(LandmarkDataError, match=r"stack\.tif.*multi-page"):
        read_radiograph(path)


def test_identical_channels_become_one_silently(tmp_path):
    grey = (STORED % 256).astype(np.uint8)
    with no_warnings():
        rg = read_radiograph(save(tmp_path / "rgb.png", np.stack([grey] * 3, -1)))
    np.testing.assert_array_equal(rg.pixels, grey)
    assert rg.warnings == [] and rg.pixels.shape == (H, W)


def test_true_colour_becomes_luminance_with_warning(tmp_path):
    rgb = np.stack([STORED % 256, STORED // 7 % 256, np.full_like(STORED, 200)], -1).astype(
        np.uint8
    )
    with pytest.warns(UserWarning, match=r"colour\.png.*luminance"):
        rg = read_radiograph(save(tmp_path / "colour.png", rgb))
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(rg.pixels, expected, rtol=1e-5)
    assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (H, W)
    assert any("colour.png" in w for w in rg.warnings)


def test_alpha_is_dropped(tmp_path):
    grey = (STORED % 256).astype(np.uint8)
    alpha = np.full_like(grey, 128)
    with no_warnings():
        rgba = read_radiograph(save(tmp_path / "rgba.png", np.stack([grey] * 3 + [alpha], -1)))
        la = read_radiograph(save(tmp_path / "la.png", np.stack([grey, alpha], -1)))
    np.testing.assert_array_equal(rgba.pixels, grey)
    np.testing.assert_array_equal(la.pixels, grey)


def test_exif_orientation_is_reported(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "rot.jpg", (STORED % 256).astype(np.uint8), exif=exif)
    rg = read_radiograph(path)
    assert rg.pixels.shape == (H, W)
    assert any("rot.jpg" in w and "Orientation 6" in w for w in rg.warnings)


def test_isbi_jpeg_reads_as_grey(shared_data):
    path = shared_data / "isbi2015" / "RawImage" / "TrainingData" / "001.jpg"
    with no_warnings():
        rg = read_radiograph(path)
    assert rg.pixels.shape == (2400, 1935) and rg.pixels.dtype == np.float32
    assert rg.warnings == [] and rg.bit_depth == 8 and rg.spacing is None


def test_user_spacing_on_image(tmp_path):
    rg = read_radiograph(save(tmp_path / "g.png", STORED.astype(np.uint8)), spacing=[0.1, 0.1])
    assert (rg.spacing, rg.spacing_source) == ((0.1, 0.1), "user")


# ---------------------------------------------------------------- bad paths, helpers


def test_missing_file(tmp_path):
    with pytest.raises(LandmarkDataError, match=r"nowhere\.png.*no such file"):
        read_radiograph(tmp_path / "nowhere.png")


def test_unsupported_extension_lists_supported(tmp_path):
    path = save(tmp_path / "anim.gif", STORED.astype(np.uint8))
    with pytest.raises(LandmarkDataError, match=r"anim\.gif.*'\.gif'.*\.dcm.*\.png.*\.tiff"):
        read_radiograph(path)


def test_corrupt_png(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(LandmarkDataError, match=r"broken\.png.*unreadable"):
        read_radiograph(path)


def test_corrupt_tiff(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + bytes(40))
    with pytest.raises(LandmarkDataError, match=r"broken\.tif.*unreadable"):
        read_radiograph(path)


def test_is_image_file(tmp_path):
    assert set(SUPPORTED_EXTENSIONS) >= {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".bmp"}
    assert {".tif", ".tiff"} <= set(SUPPORTED_EXTENSIONS)
    assert all(e == e.lower() for e in SUPPORTED_EXTENSIONS)
    upper = save(tmp_path / "A.PNG", STORED.astype(np.uint8))
    text = tmp_path / "notes.txt"
    text.write_text("landmarks")
    plain = tmp_path / "README"
    plain.write_text("no extension, no DICOM")
    assert is_image_file(upper) and is_image_file(os.fspath(upper))
    assert not is_image_file(text) and not is_image_file(plain)
    assert not is_image_file(tmp_path / "missing.png")


def test_to_display_uint8():
    pixels = np.array([[100.0, 150.0], [200.0, 300.0]], np.float32)
    plain = to_display_uint8(Radiograph(pixels, None))
    assert plain.dtype == np.uint8 and plain.shape == (2, 2)
    assert plain.min() == 0 and plain.max() == 255
    windowed = to_display_uint8(Radiograph(pixels, None, window=(150.0, 100.0)))
    np.testing.assert_array_equal(windowed, [[0, 128], [255, 255]])
    flat = to_display_uint8(Radiograph(np.full((2, 3), 7.0, np.float32), None))
    np.testing.assert_array_equal(flat, np.zeros((2, 3), np.uint8))
