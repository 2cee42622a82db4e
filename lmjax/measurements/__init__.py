"""Clinical measurements from landmarks: angles, distances, ratios and their classes.

Pure NumPy functions of named landmarks, vectorised over images, declared per
landmark set (`definitions_for`). Families: the ISBI 2015 cephalometric eight
(`cephalometric`), the YEN angle (`yen`), knee alignment and CPAK (`cpak`), hip
coverage (`hip`). `report` turns them into records, CSV rows and comparisons.
"""

from lmjax.measurements.base import ClassBins, Interval, MeasurementDef, evaluate, three_classes
from lmjax.measurements.registry import as_landmark_set, definitions_for
from lmjax.measurements.report import compare, measure_dataset, to_csv_rows

__all__ = [
    "ClassBins",
    "Interval",
    "MeasurementDef",
    "as_landmark_set",
    "compare",
    "definitions_for",
    "evaluate",
    "measure_dataset",
    "three_classes",
    "to_csv_rows",
]
