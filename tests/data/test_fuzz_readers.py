"""Seeded fuzzing of every reader: mutated LabelMe, COCO, ISBI, CSV, DICOM and image
files are either read or refused with lmjax's `LandmarkDataError`, in one line that
names the file; never another exception, and never an infinite coordinate.

Seeds are the real sample files (`shared_data`: the Hamedan LabelMe files, ISBI
annotations, the DICOM headers) shrunk to small images, plus COCO, CSV, PNG, JPEG and
TIFF files written from them. Mutations: bit flips, truncation, byte runs, and for
JSON wrong types, huge numbers, NaN and Infinity, deleted keys, duplicated labels and
points of three numbers. The image limit is lowered so that a flipped size field
costs a refusal, not a large allocation.
"""

from __future__ import annotations

import copy
import io
import json
import pathlib
import random
import time
import warnings

import numpy as np
import pydicom
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

SEED = 20260
CASES = {"labelme": 1200, "coco": 800, "isbi": 500, "csv": 300, "dicom": 800, "image": 600}
ODD_VALUES = [
    None, True, "", "text", "../../etc/passwd", "/etc/passwd", -1, 0, 2**70, 1e39, 1e308,
    float("nan"), float("inf"), float("-inf"), [], {}, [1.0, 2.0, 3.0], [[1.0, 2.0, 3.0]],
    [["x", "y"]], [[[[[]]]]], {"points": 1},
]  # fmt: skip


# ---------------------------------------------------------------- seeds


def _labelme_seeds(shared: pathlib.Path) -> list[dict]:
    folder = shared / "hamedan_ceph_sample" / "labelme_mollabashi"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _coco_seed(labelme: dict) -> dict:
    """The LabelMe points as one COCO keypoint annotation, plus a polygon patch."""
    points = [s for s in labelme["shapes"] if s.get("shape_type") == "point"]
    keypoints = [v for s in points for v in (*s["points"][0], 2)]
    return {
        "images": [{"id": 1, "file_name": "images/001.png", "width": 64, "height": 64}],
        "categories": [
            {"id": 1, "name": "ceph", "keypoints": [s["label"] for s in points]},
            {"id": 2, "name": "chin"},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "keypoints": keypoints,
             "bbox": [10, 10, 40, 40]},
            {"id": 8, "image_id": 1, "category_id": 2,
             "segmentation": [[10.0, 10.0, 30.0, 10.0, 20.0, 30.0]]},
        ],
    }  # fmt: skip


def _small_dicoms(shared: pathlib.Path, out: pathlib.Path) -> list[bytes]:
    """The real files' headers with a 24 x 20 crop of their pixels (fast to decode)."""
    seeds = []
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        ds = pydicom.dcmread(shared / "dicom" / name)
        crop = np.ascontiguousarray(ds.pixel_array[100:124, 200:220])
        ds.Rows, ds.Columns = crop.shape
        ds.PixelData = crop.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        seeds.append(buffer.getvalue())
    seeds.append((shared / "dicom" / "chrJapMulti.dcm").read_bytes())  # no pixel data
    return seeds


def _image_seeds() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(SEED)
    grey8 = rng.integers(0, 255, (20, 24), dtype=np.uint8)
    grey16 = rng.integers(0, 4095, (20, 24), dtype=np.uint16)
    seeds = []
    for suffix, array, kw in (
        (".png", grey8, {}),
        (".png", grey16, {}),
        (".jpg", grey8, {"quality": 90}),
        (".bmp", grey8, {}),
    ):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format={".jpg": "JPEG"}.get(suffix, suffix[1:]), **kw)
        seeds.append((suffix, buffer.getvalue()))
    for array in (grey16, grey16.astype(np.float32) / 7):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array)
        seeds.append((".tif", buffer.getvalue()))
    return seeds


# ---------------------------------------------------------------- mutations


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    how = rng.randrange(5)
    if how == 0 or not b:  # truncation
        return bytes(b[: rng.randrange(len(b) + 1)])
    if how == 1:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == 2:  # a run of one byte value
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 16)] = bytes([rng.choice((0, 0xFF, 0x7F))]) * rng.randint(1, 16)
    elif how == 3:  # bytes inserted
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    else:  # bytes deleted
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 12)]
    return bytes(b)


def _nodes(doc, path=()):
    """`(path, value)` of every node of a JSON document."""
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*path, i))


def mutate_json(doc, rng: random.Random):
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        nodes = [p for p, _ in _nodes(doc) if p]
        if not nodes:
            return rng.choice(ODD_VALUES)
        path = rng.choice(nodes)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key, how = path[-1], rng.randrange(6)
        if how <= 2:  # a value of another type, a huge number, NaN or Infinity
            parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif how == 3 and isinstance(parent, dict):
            del parent[key]
        elif how == 3:  # a list entry duplicated: duplicate labels, second annotations
            parent.insert(key, copy.deepcopy(parent[key]))
        elif how == 4 and isinstance(parent[key], list) and parent[key]:
            parent[key].append(copy.deepcopy(parent[key][-1]))  # e.g. a third number
        elif isinstance(parent[key], int | float) and not isinstance(parent[key], bool):
            parent[key] = parent[key] * rng.choice((-1, 1e30, 1e300, float("nan")))
        else:
            parent[key] = str(parent[key])
    return doc


def mutate_text(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    how = rng.randrange(4)
    if how == 0 and lines:
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(("nan,nan", "inf,1", "1e40,2", "1,2,3", "a,b", "", "1;2", "1e-999,0"))
    elif how == 1 and lines:
        del lines[rng.randrange(len(lines)) :]
    elif how == 2:
        return mutate_bytes(text.encode(), rng).decode("latin-1")
    else:
        lines.insert(rng.randrange(len(lines) + 1), ",".join(["9" * rng.randint(1, 400)] * 2))
    return "\n".join(lines)


# ---------------------------------------------------------------- the check


class Outcomes:
    """Counts reads and refusals; collects anything that breaks the contract."""

    def __init__(self) -> None:
        self.cases = self.read = self.refused = 0
        self.bad: list[str] = []

    def run(self, path: pathlib.Path, fn) -> None:
        self.cases += 1
        try:
            result = fn()
        except LandmarkDataError as e:
            self.refused += 1
            message = str(e)
            if path.name not in message or "\n" in message:
                self.bad.append(f"{path.name}: error not one line naming the file: {message!r}")
            return
        except Exception as e:  # the contract under test: nothing else escapes
            self.bad.append(f"{path.name}: {type(e).__name__}: {e}")
            return
        self.read += 1
        for problem in _result_problems(result, path):
            self.bad.append(f"{path.name}: {problem}")


def _result_problems(result, path: pathlib.Path) -> list[str]:
    arrays = []
    if hasattr(result, "records"):  # a Dataset: its own error lines must name the file
        arrays = [r.landmarks for r in result.records]
        return [f"unnamed error line {e!r}" for e in result.errors if path.name not in e] + [
            "infinite landmark" for a in arrays if np.isinf(a).any()
        ]
    if hasattr(result, "pixels"):
        return [] if np.isfinite(result.pixels).all() else ["non-finite pixels"]
    first = result[0] if isinstance(result, tuple) else result
    return ["infinite landmark"] if np.isinf(np.asarray(first, np.float64)).any() else []


@pytest.fixture(scope="module")
def seeds(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    labelme = _labelme_seeds(shared_data)
    isbi = shared_data / "isbi2015" / "AnnotationsByMD" / "400_senior"
    return {
        "labelme": labelme,
        "coco": [_coco_seed(doc) for doc in labelme],
        "isbi": [p.read_text() for p in sorted(isbi.glob("*.txt"))[:5]],
        "dicom": _small_dicoms(shared_data, out),
        "image": _image_seeds(),
    }


def test_the_seeds_read(seeds, tmp_path):
    names = tuple(s["label"] for s in seeds["labelme"][0]["shapes"])
    for i, doc in enumerate(seeds["labelme"]):
        (tmp_path / f"{i}.json").write_text(json.dumps(doc))
        assert np.isfinite(read_labelme_file(tmp_path / f"{i}.json", names)[0]).all()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "001.png").write_bytes(b"")
    (tmp_path / "coco.json").write_text(json.dumps(seeds["coco"][0]))
    dataset = load_coco(tmp_path / "coco.json")
    assert len(dataset.records) == 1 and not dataset.errors
    for i, data in enumerate(seeds["dicom"][:2]):
        (tmp_path / f"{i}.dcm").write_bytes(data)
        assert read_radiograph(tmp_path / f"{i}.dcm").shape == (24, 20)
    for i, (suffix, data) in enumerate(seeds["image"]):
        (tmp_path / f"{i}{suffix}").write_bytes(data)
        assert read_radiograph(tmp_path / f"{i}{suffix}").shape == (20, 24)


def test_mutated_files_are_read_or_refused_in_one_line(seeds, tmp_path):
    rng = random.Random(SEED)
    outcomes = Outcomes()
    names = tuple(s["label"] for s in seeds["labelme"][0]["shapes"])
    images = tmp_path / "images"
    images.mkdir()
    (images / "001.png").write_bytes(b"")  # COCO only looks for the file
    (tmp_path / "a.png").write_bytes(b"")
    started = time.perf_counter()
    with warnings.catch_warnings(), limits.changed(max_image_pixels=1 << 16):
        warnings.simplefilter("ignore")
        for i in range(CASES["labelme"]):
            doc = mutate_json(rng.choice(seeds["labelme"]), rng)
            path = tmp_path / f"labelme{i}.json"
            raw = (
                json.dumps(doc)
                if rng.random() < 0.85
                else mutate_bytes(json.dumps(doc).encode(), rng)
            )
            path.write_bytes(raw.encode() if isinstance(raw, str) else raw)
            if i % 10 == 0:  # the folder reader, which reads every file twice
                folder = tmp_path / f"folder{i}"
                folder.mkdir()
                path = path.rename(folder / "001.json")
                outcomes.run(path, lambda f=folder: load_labelme(f, image_dir=images))
            else:
                outcomes.run(path, lambda p=path: read_labelme_file(p, names))
        for i in range(CASES["coco"]):
            path = tmp_path / f"coco{i}.json"
            doc = mutate_json(rng.choice(seeds["coco"]), rng)
            path.write_text(json.dumps(doc))
            outcomes.run(path, lambda p=path: load_coco(p, image_dir=tmp_path))
        for i in range(CASES["isbi"]):
            path = tmp_path / f"isbi{i}.txt"
            path.write_text(mutate_text(rng.choice(seeds["isbi"]), rng), encoding="latin-1")
            outcomes.run(path, lambda p=path: read_isbi_annotation(p))
        for i in range(CASES["csv"]):
            path = tmp_path / f"table{i}.csv"
            row = ",".join(
                ["a.png"] + [str(rng.choice((1.5, "nan", "inf", "", 1e39))) for _ in "xy"]
            )
            path.write_text(mutate_text(f"image,l1_x,l1_y\n{row}\na.png,1,2", rng))
            outcomes.run(path, lambda p=path: load_csv(p))
        for i in range(CASES["dicom"]):
            path = tmp_path / f"scan{i}.dcm"
            path.write_bytes(mutate_bytes(rng.choice(seeds["dicom"]), rng))
            outcomes.run(path, lambda p=path: read_radiograph(p))
        for i in range(CASES["image"]):
            suffix, data = rng.choice(seeds["image"])
            path = tmp_path / f"picture{i}{suffix}"
            path.write_bytes(mutate_bytes(data, rng))
            outcomes.run(path, lambda p=path: read_radiograph(p))
    seconds = time.perf_counter() - started
    assert outcomes.cases == sum(CASES.values()) >= 2000
    assert not outcomes.bad, f"{len(outcomes.bad)} broke the contract:\n" + "\n".join(
        outcomes.bad[:30]
    )
    assert outcomes.read > 200 and outcomes.refused > 500, (outcomes.read, outcomes.refused)
    assert seconds < 60, seconds
