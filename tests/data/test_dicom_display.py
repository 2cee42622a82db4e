"""DICOM display through pydicom's LUT functions: VOI LUT Sequences (US and OW data),
SIGMOID windows, rescaled LUT input, MONOCHROME1 and Presentation LUT Shape, on
files the tests write; and the real CR files."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from lmjax.data.image_io import read_radiograph, to_display_uint8
from tests.data.test_image_io import no_warnings, write_dicom

H, W = 32, 128
STORED = np.arange(H * W, dtype=np.uint16).reshape(H, W)  # every 12-bit value once
# A non-linear 16-bit VOI LUT over 3000 entries from input 100: sqrt-shaped.
FIRST, ENTRIES = 100, 3000
LUT = np.round(np.sqrt(np.arange(ENTRIES) / (ENTRIES - 1)) * 65535).astype(np.uint16)


def voi_lut(vr: str = "US", bits: int = 16) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [ENTRIES, FIRST, bits]
    item.add_new(0x00283006, vr, LUT.tolist() if vr == "US" else LUT.tobytes())  # LUTData
    return Sequence([item])


def expected_lut_display(modality: np.ndarray) -> np.ndarray:
    """What a viewer shows: the LUT at the modality value (clipped to its entries),
    its output range stretched to 0..255."""
    index = np.clip(np.rint(modality).astype(int) - FIRST, 0, ENTRIES - 1)
    return np.round(LUT[index] / 65535 * 255).astype(np.uint8)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_a_voi_lut_sequence_is_applied_before_the_window(tmp_path, vr):
    path = write_dicom(
        tmp_path / "lut.dcm", STORED, VOILUTSequence=voi_lut(vr), WindowCenter=2000,
        WindowWidth=400,
    )  # fmt: skip
    with no_warnings():
        rg = read_radiograph(path)
    np.testing.assert_array_equal(rg.pixels, STORED)  # the model's input is not windowed
    shown = to_display_uint8(rg)
    np.testing.assert_array_equal(shown, expected_lut_display(STORED))
    assert shown[0, 0] == 0 and shown[-1, -1] == 255 and 0 < shown.flat[600] < 255


def test_the_lut_reads_rescaled_values(tmp_path):
    path = write_dicom(
        tmp_path / "r.dcm", STORED, VOILUTSequence=voi_lut(), RescaleSlope=2,
        RescaleIntercept=-100,
    )  # fmt: skip
    rg = read_radiograph(path)
    np.testing.assert_array_equal(rg.pixels, 2.0 * STORED - 100)
    np.testing.assert_array_equal(to_display_uint8(rg), expected_lut_display(2.0 * STORED - 100))


def test_monochrome1_shows_its_minimum_white(tmp_path):
    plain = read_radiograph(write_dicom(tmp_path / "m2.dcm", STORED, VOILUTSequence=voi_lut()))
    path = write_dicom(
        tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", VOILUTSequence=voi_lut()
    )
    rg = read_radiograph(path)
    np.testing.assert_array_equal(rg.pixels, 4095.0 - STORED)  # bone bright for the model
    np.testing.assert_array_equal(to_display_uint8(rg), 255 - to_display_uint8(plain))
    # INVERSE is the shape the DX IOD gives MONOCHROME1: the same display, not inverted twice.
    path = write_dicom(
        tmp_path / "m1i.dcm", STORED, photometric="MONOCHROME1", VOILUTSequence=voi_lut(),
        PresentationLUTShape="INVERSE",
    )  # fmt: skip
    np.testing.assert_array_equal(to_display_uint8(read_radiograph(path)), to_display_uint8(rg))
    # On MONOCHROME2, INVERSE inverts.
    path = write_dicom(
        tmp_path / "m2i.dcm", STORED, VOILUTSequence=voi_lut(), PresentationLUTShape="INVERSE"
    )
    np.testing.assert_array_equal(to_display_uint8(read_radiograph(path)), to_display_uint8(rg))


def test_monochrome1_window_of_a_signed_image(tmp_path):
    stored = (STORED.astype(np.int16) - 2048).astype(np.int16)
    path = write_dicom(
        tmp_path / "s.dcm", stored, photometric="MONOCHROME1", signed=True, WindowCenter=0,
        WindowWidth=1001, VOILUTFunction="LINEAR",
    )  # fmt: skip
    rg = read_radiograph(path)
    # LINEAR (PS3.3 C.11.2.1.2.1) on the stored values, then low shown bright.
    c, w = -0.5, 1000.0
    linear = np.clip((stored - c) / w + 0.5, 0, 1)
    np.testing.assert_allclose(to_display_uint8(rg), np.round((1 - linear) * 255), atol=1)


def test_a_sigmoid_window(tmp_path):
    path = write_dicom(
        tmp_path / "sig.dcm", STORED, WindowCenter=1500, WindowWidth=600, VOILUTFunction="SIGMOID"
    )
    rg = read_radiograph(path)
    # PS3.3 C.11.2.1.3.1 over the output range, which 0..255 then spans.
    want = np.round(255 / (1 + np.exp(-4 * (STORED - 1500.0) / 600)))
    np.testing.assert_allclose(to_display_uint8(rg), want, atol=1)
    assert abs(int(to_display_uint8(rg).flat[1500]) - 128) <= 1


def test_a_lut_pydicom_cannot_apply_is_reported_and_the_window_used(tmp_path):
    path = write_dicom(
        tmp_path / "bad.dcm", STORED, VOILUTSequence=voi_lut(bits=9), WindowCenter=2048,
        WindowWidth=4096,
    )  # fmt: skip
    rg = read_radiograph(path)
    assert rg.display_lut is None and rg.window == (2048.0, 4096.0)
    assert any(
        "bad.dcm" in w and "VOI or Presentation LUT cannot be applied" in w for w in rg.warnings
    )
    np.testing.assert_allclose(to_display_uint8(rg), np.round(STORED / 4096 * 255), atol=1)


def test_without_voi_or_presentation_lut_the_range_is_stretched(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "p.dcm", STORED[:, :50] + 1000))
    assert rg.display_lut is None
    shown = to_display_uint8(rg)
    assert shown.min() == 0 and shown.max() == 255


def test_real_monochrome1_files_match_their_window(shared_data):
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        rg = read_radiograph(shared_data / "dicom" / name)
        assert rg.display_lut is not None and rg.photometric == "MONOCHROME1"
        shown = to_display_uint8(rg).astype(int)
        # The window on the inverted pixels, as lmjax showed these files before.
        center, width = rg.window
        linear = np.clip((rg.pixels - (center - width / 2)) / width, 0, 1) * 255
        assert shown.shape == rg.shape and np.abs(shown - linear).max() <= 1
