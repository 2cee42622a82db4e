"""Format detection, spacing precedence and the inspect summary."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lmjax.data.datasets import detect_format, load_dataset
from lmjax.data.inspect import format_summary, summarize
from lmjax.data.tabular import write_csv
from lmjax.data.types import LandmarkDataError, LandmarkSet


def _dicom(path, pixel_spacing=None):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 6, 8, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    ds.PixelData = np.arange(48, dtype=np.uint16).reshape(6, 8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_detect_format(tmp_path, shared_data):
    assert detect_format(shared_data / "isbi2015") == "isbi2015"
    assert detect_format(shared_data / "hamedan_ceph_sample" / "labelme_farhadifar") == "labelme"
    assert detect_format(shared_data / "dicom") == "images"
    with pytest.raises(LandmarkDataError, match="no such file or folder"):
        detect_format(tmp_path / "nope")
    with pytest.raises(LandmarkDataError, match="no images or annotations found"):
        detect_format(tmp_path)
    with pytest.raises(LandmarkDataError, match="annotation folders inside: labelme_farhadifar"):
        detect_format(shared_data / "hamedan_ceph_sample")


def test_spacing_precedence_user_then_format_then_file(tmp_path):
    _dicom(tmp_path / "a.dcm", pixel_spacing=(0.2, 0.3))
    _dicom(tmp_path / "b.dcm")
    pts = np.zeros((2, 1, 2), np.float32)
    write_csv(
        tmp_path / "l.csv",
        ["a.dcm", "b.dcm"],
        pts,
        ("p",),
        spacing=np.array([[np.nan, np.nan], [0.5, 0.5]]),
    )
    ds = load_dataset(tmp_path / "l.csv")
    assert (ds.records[0].spacing, ds.records[0].spacing_source) == ((0.2, 0.3), "PixelSpacing")
    assert (ds.records[1].spacing, ds.records[1].spacing_source) == ((0.5, 0.5), "csv")
    user = load_dataset(tmp_path / "l.csv", spacing=(0.7, 0.7))
    assert {r.spacing_source for r in user.records} == {"user"}
    with pytest.raises(LandmarkDataError, match="not two positive finite numbers"):
        load_dataset(tmp_path / "l.csv", spacing=(0.0, 1.0))


def test_landmark_count_mismatch_is_named(shared_data):
    with pytest.raises(
        LandmarkDataError,
        match="point labels 'l1' \\(001.json\\).* not in landmark set 'x' \\(3 landmarks",
    ):
        load_dataset(
            shared_data / "hamedan_ceph_sample" / "labelme_farhadifar",
            landmark_set=LandmarkSet.numbered("x", 3),
        )


def test_inspect_isbi(shared_data):
    s = summarize(load_dataset(shared_data / "isbi2015"), read_images=False)
    assert (s["n_images"], s["n_landmarks"], s["missing"]) == (300, 19, 0)
    assert s["landmark_names"][0] == "sella"
    assert s["spacing"] == {"dataset": 300}
    assert s["splits"] == {"test1": 150, "train": 150}
    assert s["warnings"] == [] and s["errors"] == []


def test_inspect_dicom_folder_reports_each_problem_once(shared_data):
    s = summarize(load_dataset(shared_data / "dicom"))
    assert s["n_images"] == 3 and s["n_unreadable"] == 1
    assert s["spacing"] == {"ImagerPixelSpacing": 1, "none": 2}
    assert len(s["errors"]) == 1 and "chrJapMulti.dcm" in s["errors"][0]
    assert sum("RG1_UNCR.dcm: invalid PixelSpacing" in w for w in s["warnings"]) == 1
    assert s["bit_depths"] == {"10": 1, "15": 1}
    assert "errors       1" in format_summary(s)


def test_inspect_flags_landmarks_outside_the_image(tmp_path):
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "i.png")
    write_csv(
        tmp_path / "l.csv", ["i.png"], np.array([[[5, 5], [25, 3]]], np.float32), ("in", "out")
    )
    s = summarize(load_dataset(tmp_path))
    assert s["warnings"] == [f"{tmp_path / 'i.png'}: landmarks outside the 20x10 image: ['out']"]
    assert s["spacing"] == {"none": 1}


def test_inspect_labelme_sample(shared_data):
    with pytest.warns(UserWarning):
        ds = load_dataset(shared_data / "hamedan_ceph_sample" / "labelme_farhadifar")
    s = summarize(ds)
    assert s["image_sizes"] == {"1671x1340": 5} and s["bit_depths"] == {"8": 5}
    assert s["missing"] == 1 and s["missing_per_landmark"] == {"l18": 1}
    assert any("150.json: imagePath says '157.tif'" in w for w in s["warnings"])
