"""Reading and streaming radiographs with their landmarks.

Dataset formats are registered in `lmjax.data.formats`. The Grain pipeline
(`lmjax.data.pipeline`) is imported from its module, and the phantom loads scipy
only when it draws, so that reading a folder stays light.
"""

from lmjax.data.datasets import detect_format, load_dataset
from lmjax.data.formats import ReadOptions, get_format, list_formats, register_format
from lmjax.data.image_io import read_radiograph, read_spacing
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Radiograph, Record

__all__ = [
    "FORMATS",
    "Dataset",
    "LandmarkDataError",
    "LandmarkSet",
    "Radiograph",
    "ReadOptions",
    "Record",
    "detect_format",
    "get_format",
    "list_formats",
    "load_dataset",
    "read_radiograph",
    "read_spacing",
    "register_format",
]


def __getattr__(name: str):
    # Computed on access, as in `lmjax.data.datasets`, to include later registrations.
    if name == "FORMATS":
        return tuple(list_formats())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
