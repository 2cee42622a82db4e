"""Help text: the value placeholder each flag shows (`--output=FILE.json`)."""

# The value placeholders shown in help; flags not named here get one from their type.
METAVARS = {
    "config": "PATH[:ARG]",
    "workdir": "DIR",
    "data_dir": "PATH",
    "format": "NAME",
    "image_dir": "DIR",
    "spacing": "ROW_MM,COL_MM",
    "output": "FILE.json",
    "output_dir": "DIR",
    "augment": "PRESET",
    "split": "NAME",
    "extractor": "NAME|all",
    "sdr_mm": "MM,...",
    "values": "FIELD=V1,V2,...",
    "compilation_cache_dir": "DIR",
    "device_memory_gb": "GB",
    "coordinator_address": "HOST:PORT",
}
COMMAND_METAVARS = {
    ("measure", "output"): "FILE.json|FILE.csv",
    ("compare", "format"): "text|markdown",
    ("compare", "error_cap"): "MM",
    ("export", "output"): "FILE.lmjax",
    ("report", "output"): "FILE.html",
    ("report", "json"): "FILE.json",
    ("export", "format"): "stablehlo|onnx",
    ("export", "tta_scales"): "S,...",
    ("export", "platforms"): "cpu,cuda,...",
}
