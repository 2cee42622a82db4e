"""MedSapiens as its paper runs it: a generalist on several datasets, then a
specialist LoRA per dataset (Elbatel et al., 003, sections 2.3 and 3).

Paper vs this config ("=": the same):

  generalist    paper: one model trained on head, hand, chest and leg X-rays at once
                here:  = in kind (`data.mixture`): one union landmark set, a record
                       annotating only its own dataset's channels; the datasets
                       here are ISBI 2015 (head) and lmjax's phantom
  specialist    paper: the generalist fine-tuned per dataset with LoRA
                here:  = (`specialist_<name>`: `train.init_from` the generalist,
                       `data.mixture_only`, adapters and head trained)
  backbone      paper: Sapiens 0.3B, pre-trained; LoRA rank 4 on qkv and proj
                here:  `vit_pose` as `isbi2015_vit_lora.py`; Sapiens weights are the
                       user's file (`model.pretrained`), none here, so the `tiny_cpu`
                       arguments train a small ViT from scratch (trainable all)
  hand errors   paper: mm with the wrist width as 50 mm (no spacing in the files)
                here:  `reference_distance` of a mixture source: (a, b, 50.0)
  sampling      paper: MMPose's combined dataset
                here:  proportional to each dataset's size, one shuffled stream
  evaluation    paper: per dataset
                here:  = (`lmjax evaluate` prints and writes `per_dataset`)

Arguments: `generalist`, `specialist_isbi`, `specialist_phantom` (ViT-B on a GPU,
a Sapiens file expected), each with `_cpu` for a 2-core shrink (the tiny ViT,
128 x 96 input, trainable all, 300 steps). The specialist
needs the generalist's workdir: `--config.train.init_from=DIR`.

    lmjax train --config=experiments/configs/medsapiens_mixture.py:generalist_cpu --workdir=runs/gen
    lmjax train --config=experiments/configs/medsapiens_mixture.py:specialist_isbi_cpu \\
        --config.train.init_from=runs/gen --workdir=runs/spec_isbi
"""

import os
import pathlib

from lmjax import configs

_VIT = pathlib.Path(__file__).with_name("isbi2015_vit_lora.py")
SOURCES = ("isbi", "phantom")


def get_config(arg: str = "generalist"):
    cpu = arg.endswith("_cpu")
    role = arg.removesuffix("_cpu")
    if role != "generalist" and role.removeprefix("specialist_") not in SOURCES:
        raise ValueError(f"argument {arg!r} is not generalist|specialist_isbi|specialist_phantom"
                         "[_cpu]")  # fmt: skip
    c = configs.load(f"{_VIT}:{'tiny_cpu' if cpu else 'b'}", resolved=False)
    c.paper = "MedSapiens (003): generalist on several datasets, then specialist LoRA"
    data = os.environ.get("LMJAX_DATA", str(pathlib.Path(__file__).parents[3] / "shared/data"))
    c.data.data_dir = ""
    c.data.format = ""
    c.data.mixture = (
        {"name": "isbi", "data_dir": os.path.join(data, "isbi2015"), "format": "isbi2015",
         "test_split": "test1"},
        {"name": "phantom"},
    )  # fmt: skip
    c.data.train_split, c.data.val_split, c.data.test_split = "train", "val", "test"
    if cpu:  # the tiny ViT from scratch: no pretrained backbone to adapt here
        c.model.trainable = "all"
        c.data.input_size = (128, 96)
        c.train.steps = 300
        c.train.eval_every = 100
        c.train.log_every = 20
    if role.startswith("specialist_"):
        c.data.mixture_only = role.removeprefix("specialist_")
    return c
