"""Reading and streaming radiographs with their landmarks.

The Grain pipeline (`lmjax.data.pipeline`) and the phantom (`lmjax.data.phantom`)
are imported from their modules so that reading a folder stays light.
"""

from lmjax.data.datasets import FORMATS, detect_format, load_dataset
from lmjax.data.image_io import read_radiograph, read_spacing
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Radiograph, Record

__all__ = [
    "FORMATS",
    "Dataset",
    "LandmarkDataError",
    "LandmarkSet",
    "Radiograph",
    "Record",
    "detect_format",
    "load_dataset",
    "read_radiograph",
    "read_spacing",
]
