"""The format registry: a new format in one function and one call, detection order, table."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

import lmjax.data
from lmjax.data import datasets, formats
from lmjax.data.datasets import load_dataset
from lmjax.data.formats import (
    ReadOptions,
    detect_format,
    get_format,
    list_formats,
    markdown_table,
    register_format,
    unregister_format,
)
from lmjax.data.tabular import write_csv
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
OLD_FORMATS = (
    "phantom",
    "pelvis_phantom",
    "isbi2015",
    "labelme",
    "csv",
    "coco",
    "dicom",
    "images",
)


def _png(path, h=12, w=16):
    Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
    return path


# A toy format: `points.txt` starts with "names a b ..." then one line per image,
# "file x y x y ...". Written as a user would: one reader and one registration.


def _read_toy(path: pathlib.Path, options: ReadOptions) -> Dataset:
    lines = (path / "points.txt").read_text().split("\n")
    names = tuple(lines[0].split()[1:])
    records = []
    for line in filter(None, lines[1:]):
        file, *xy = line.split()
        pts = np.asarray(xy, np.float32).reshape(-1, 2)
        records.append(Record(image=str(path / file), landmarks=pts, visible=None))
    return Dataset(LandmarkSet(name="toy", names=names), records, name=path.name)


@pytest.fixture
def toy_format():
    spec = register_format(
        "toy",
        read=_read_toy,
        detect=lambda p: (p / "points.txt").is_file(),
        description="points.txt beside its images",
        layout="`points.txt`: `names a b ...`, then `file x y x y ...` per image",
    )
    yield spec
    if "toy" in list_formats():
        unregister_format("toy")


@pytest.fixture
def toy_folder(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "points.txt").write_text("names tip base\na.png 1 2 3 4\nb.png 5 6 7.5 8\n")
    return tmp_path


def test_new_format_is_detected_and_read(toy_format, toy_folder):
    assert detect_format(toy_folder) == "toy"
    ds = load_dataset(toy_folder)
    assert ds.landmark_set.names == ("tip", "base")
    assert [r.name for r in ds.records] == ["a.png", "b.png"]
    np.testing.assert_array_equal(ds.records[1].landmarks, [[5, 6], [7.5, 8]])
    # load_dataset's own steps run on any format: spacing and the landmark check.
    ds = load_dataset(toy_folder, format="toy", spacing=(0.2, 0.2))
    assert {r.spacing_source for r in ds.records} == {"user"}
    with pytest.raises(LandmarkDataError, match="expected 3 of landmark set 'x'"):
        load_dataset(toy_folder, format="toy", landmark_set=LandmarkSet.numbered("x", 3))


def test_new_format_is_listed_then_removed(toy_format):
    assert list_formats()[-1] == "toy" and "toy" in lmjax.data.FORMATS
    assert "toy" in datasets.FORMATS
    assert "`toy`" in markdown_table()
    unregister_format("toy")
    assert "toy" not in list_formats() and "toy" not in datasets.FORMATS
    assert "toy" not in markdown_table()


def test_without_the_new_format_its_folder_is_an_images_folder(toy_folder):
    assert detect_format(toy_folder) == "images"


def test_unknown_format_is_one_line_listing_the_known():
    with pytest.raises(LandmarkDataError) as err:
        get_format("nope")
    message = str(err.value)
    assert "\n" not in message
    assert message == f"unknown format 'nope'; known: {', '.join(OLD_FORMATS)}"
    with pytest.raises(LandmarkDataError, match="unknown format 'nope'; known: phantom, "):
        load_dataset(".", format="nope")


def test_taken_name_and_bad_signatures_are_errors(toy_format):
    def other(path, options):
        return _read_toy(path, options)

    kwargs = dict(detect=None, description="d", layout=None)
    with pytest.raises(ValueError, match="'toy' is already registered; pass override=True"):
        register_format("toy", read=other, **kwargs)
    with pytest.raises(ValueError, match="'csv' is already registered"):
        register_format("csv", read=other, **kwargs)
    # Registering the same reader again (a re-imported module) is not a clash.
    register_format("toy", read=_read_toy, detect=toy_format.detect, description="d", layout="l")
    spec = register_format("toy", read=other, override=True, **kwargs)
    assert get_format("toy") is spec and spec.order == toy_format.order
    with pytest.raises(TypeError, match=r"reader for format 'bad' must take \(path, options\)"):
        register_format("bad", read=lambda path: None, **kwargs)
    with pytest.raises(TypeError, match=r"detector for format 'bad' must take \(path\)"):
        register_format("bad", read=other, detect=lambda: True, description="d", layout=None)
    with pytest.raises(ValueError, match="format name 'a b'"):
        register_format("a b", read=other, **kwargs)
    assert "bad" not in list_formats()


def test_builtins_keep_their_order():
    assert tuple(list_formats()) == OLD_FORMATS
    assert tuple(lmjax.data.FORMATS) == OLD_FORMATS
    assert formats.file_formats() == list(OLD_FORMATS[2:])
    assert get_format("dicom").read is get_format("images").read


def _coco(path):
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "keypoints": ["p"]}]}
    path.write_text(json.dumps(doc))
    return path


def test_detection_order_of_the_builtins(tmp_path):
    def folder(name, *files):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            if f.endswith(".png"):
                _png(d / f)
            elif f == "coco.json":
                _coco(d / f)
            else:
                (d / f).write_text("{}")
        return d

    # Files: by suffix alone, a bad .json included (the COCO reader reports it).
    write_csv(tmp_path / "l.csv", ["x.png"], np.zeros((1, 1, 2)), ("p",))
    assert detect_format(tmp_path / "l.csv") == "csv"
    assert detect_format(folder("f", "x.json") / "x.json") == "coco"
    png = _png(tmp_path / "x.png")
    with pytest.raises(LandmarkDataError, match="x.png: no format reads this file"):
        detect_format(png)
    # Folders: ISBI 2015 layout, one CSV, one COCO JSON, other JSONs, images.
    isbi = folder("isbi", "RawImage/TrainingData/001.png", "AnnotationsByMD/x", "l.csv")
    assert detect_format(isbi) == "isbi2015"
    assert detect_format(folder("csv", "l.csv", "a.json", "b.json", "a.png")) == "csv"
    assert detect_format(folder("coco", "l.csv", "m.csv", "coco.json", "a.png")) == "coco"
    assert detect_format(folder("labelme1", "x.json", "a.png")) == "labelme"
    assert detect_format(folder("labelme2", "coco.json", "x.json")) == "labelme"
    assert detect_format(folder("images", "a.png", "notes.txt")) == "images"
    empty = folder("empty", "sub/a.json")
    with pytest.raises(LandmarkDataError) as err:
        detect_format(empty)
    assert str(err.value) == (
        f"{empty}: no images or annotations found "
        "(formats: isbi2015, labelme, csv, coco, dicom, images); annotation folders inside: sub"
    )


def test_phantom_without_a_folder_whatever_the_format():
    ds = load_dataset(None, format="csv", phantom_size=3, seed=1)
    assert ds.name == "phantom" and len(ds) == 3
    assert len(load_dataset("/nonexistent", format="phantom", phantom_size=2)) == 2
    pelvis = load_dataset(None, format="pelvis_phantom", phantom_size=4, seed=1)
    assert pelvis.name != "phantom" and len(pelvis) == 4 and pelvis.landmark_set.kinds


def test_readme_format_table_is_the_registry():
    lines = README.read_text().splitlines()
    start = lines.index("Formats:") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert "\n".join(table) == markdown_table()
