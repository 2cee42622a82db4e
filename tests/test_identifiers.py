"""No patient identifier in anything lmjax writes: DICOMs whose every identifying
attribute holds a marker, in files whose names hold one too, go through train,
calibrate, evaluate and predict (and report and export where they exist); no marker
may appear in any file of the workdir or of the outputs."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

from lmjax import configs
from lmjax.cli.main import COMMANDS
from lmjax.data.labelme import write_labelme
from tests.data.test_image_io import write_dicom
from tests.test_anonymize import found_markers
from tests.test_cli import run_cli

UID = "1.2.826.0.1.3680043.8.498.4711"  # + per attribute and image digits
# Every attribute of the DICOM basic de-identification profile (PS3.15 E.1) that an
# X-ray file commonly carries; each value is unique to its attribute.
IDENTIFYING = {
    "PatientName": "MARKERPN^DOE",
    "PatientID": "MARKERPID",
    "OtherPatientIDs": "MARKEROPID",
    "PatientBirthDate": "19370411",
    "PatientAddress": "MARKERPADDR",
    "PatientTelephoneNumbers": "MARKERTEL",
    "AccessionNumber": "MARKERACC",
    "InstitutionName": "MARKERINST",
    "InstitutionAddress": "MARKERIADDR",
    "InstitutionalDepartmentName": "MARKERDEPT",
    "ReferringPhysicianName": "MARKERREF^PHYS",
    "PerformingPhysicianName": "MARKERPERF^PHYS",
    "OperatorsName": "MARKEROP^NAME",
    "StationName": "MARKERSTN",
    "DeviceSerialNumber": "MARKERSERIAL",
    "StudyID": "MARKERSTUDYID",
    "StudyDescription": "MARKERSTUDYDESC",
    "SeriesDescription": "MARKERSERIESDESC",
    "StudyDate": "19870523",
    "SeriesDate": "19870524",
    "AcquisitionDate": "19870525",
    "ContentDate": "19870526",
    "StudyTime": "101112.131415",
    "SeriesTime": "101112.131416",
    "AcquisitionDateTime": "19870525101112.131417",
}
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
FILE_MARK = "MARKERFILE"  # in file and folder names: only --anonymize_names hides them
NAMES = ("sella", "nasion", "menton")


def _dicom_folder(root: pathlib.Path, stem: str, n: int = 8) -> pathlib.Path:
    """`n` 64x64 12-bit DICOMs with their LabelMe annotations, as a clinic's export."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 600, (64, 64)).astype(np.uint16)
        points = rng.uniform(8, 56, (3, 2)).astype(np.float32)
        for x, y in points.astype(int):
            image[y - 2 : y + 3, x - 2 : x + 3] = 4000
        uids = {key: f"{UID}.{j}.{i}" for j, key in enumerate(UIDS)}
        name = f"{stem}{i}.dcm"
        write_dicom(root / name, image, PixelSpacing=[0.2, 0.2], **IDENTIFYING, **uids)
        write_labelme(root / f"{stem}{i}.json", points, NAMES, image_path=name, image_hw=(64, 64))
    return root


def test_no_identifier_reaches_any_output(tmp_path, capsys):
    data = _dicom_folder(tmp_path / "data", "img")
    # The same clinic's files as they often come: a patient's name in every file name.
    named = tmp_path / f"{FILE_MARK}_ward"
    shutil.copytree(data, named)
    for f in sorted(named.iterdir()):
        f.rename(named / f.name.replace("img", f"{FILE_MARK}_"))
    workdir, outputs = tmp_path / "run", tmp_path / "outputs"
    tiny = f"{configs.DEFAULT}:tiny"
    steps = ("--config.train.steps=2", "--config.train.eval_every=2", "--config.train.log_every=1")
    fractions = ("--config.data.val_fraction=0.25", "--config.data.calib_fraction=0.25")
    runs = [
        ["train", f"--data_dir={data}", f"--config={tiny}", *steps, *fractions,
         f"--workdir={workdir}"],
        ["calibrate", f"--workdir={workdir}", f"--output={outputs / 'conformal.json'}"],
        ["evaluate", f"--workdir={workdir}", f"--data_dir={named}", "--anonymize_names",
         f"--output={outputs / 'eval.json'}"],
        ["predict", f"--workdir={workdir}", f"--output_dir={outputs / 'predicted'}", "--review",
         "--anonymize_names", str(named)],
    ]  # fmt: skip
    if "report" in COMMANDS:
        runs.append(["report", f"--workdir={workdir}", f"--output={outputs / 'report.html'}"])
        runs.append(["report", f"--workdir={workdir}", f"--data_dir={named}", "--anonymize_names",
                     f"--output={outputs / 'named.html'}"])  # fmt: skip
    if "export" in COMMANDS:
        runs.append(["export", f"--workdir={workdir}", f"--output={outputs / 'model.lmjax'}"])
    for args in runs:
        code, _, err = run_cli(capsys, *args)
        assert code == 0, (args[0], err[-2000:])
    report = json.loads((outputs / "eval.json").read_text())
    assert len(report["per_image"]["images"]) == 2  # the evaluation did see the images
    assert len(list((outputs / "predicted").glob("*.labelme.json"))) == 8
    assert ("report" not in COMMANDS) or (outputs / "report.html").stat().st_size > 0
    assert ("export" not in COMMANDS) or (outputs / "model.lmjax").stat().st_size > 0
    markers = [*IDENTIFYING.values(), *(v.split("^")[0] for v in IDENTIFYING.values()), UID]
    markers += [FILE_MARK, "MARKER"]
    # Every marker is there to be found in the inputs, by the same search.
    assert {m for _, m in found_markers([named], markers)} == set(markers)
    assert found_markers([workdir, outputs], markers) == []
