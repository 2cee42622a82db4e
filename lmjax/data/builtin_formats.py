"""The built-in dataset formats: importing this module registers them.

Their order here is the order of `list_formats()` and of the README's table;
imported by name in a loop so that import sorting cannot reorder them.
"""

import importlib

BUILTIN_FORMAT_MODULES = (
    "lmjax.data.phantom",  # phantom
    "lmjax.data.pelvis_phantom",  # pelvis_phantom
    "lmjax.data.isbi2015",  # isbi2015
    "lmjax.data.labelme",  # labelme
    "lmjax.data.tabular",  # csv
    "lmjax.data.coco",  # coco
    "lmjax.data.image_folder",  # dicom, images
)

for _module in BUILTIN_FORMAT_MODULES:
    importlib.import_module(_module)
