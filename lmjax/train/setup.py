"""Run set-up: a resolved config -> datasets, input pipeline, model, optimizer, steps.

Everything `lmjax train`, `lmjax benchmark`, `lmjax compile-check` and the
restoring of a trained model share, so that they build the same thing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from lmjax import models, parallel
from lmjax.configs import resolve
from lmjax.data.augment_presets import resolve_augment
from lmjax.data.datasets import load_dataset
from lmjax.data.device_augment import DeviceAugment
from lmjax.data.pipeline import make_pipeline, region_flip_table
from lmjax.data.types import Dataset, LandmarkSet, landmark_set_from_dict
from lmjax.models import weights
from lmjax.task import TaskSpec, task_spec
from lmjax.train import ensemble, folds
from lmjax.train.holdout import calibration_cut
from lmjax.train.optim import OptimConfig, layer_decay_scales, make_optimizer
from lmjax.train.state import create_train_state
from lmjax.train.step import make_eval_step, make_train_step

DEVICE_KEYS = ("image", "landmarks", "visible", "valid")
REGION_KEYS = ("region_mask",)  # shipped only when the task's losses read them
NORM_KEYS = ("pixel_norm",)  # shipped when the step augments (and then normalises)
ITEM_KEYS = ("item_size_px",)  # shipped for detection losses
GEOMETRY_KEYS = ("item_vertices", "vertex_valid")  # ... when the set has outlines/patches
LANDMARKS_FILE = "landmarks.json"


def _load_one(d: dict, config) -> Dataset:
    """One dataset from `config.data`-like fields (a mixture source overrides them)."""
    ds = load_dataset(
        d["data_dir"] or None,
        format=d["format"] or None,
        ground_truth=d["ground_truth"],
        image_dir=d["image_dir"] or None,
        spacing=tuple(d["spacing"]) or None,
        strict=d["strict"],
        phantom_size=d["phantom_size"],
        seed=config.train.seed,
    )
    if d["reference_distance"]:
        from lmjax.data.reference_spacing import with_reference_spacing

        a, b, mm = d["reference_distance"]
        ds = with_reference_spacing(ds, str(a), str(b), float(mm))
    return ds


def load_config_dataset(config) -> Dataset:
    """Every record of the dataset `config.data` names (the phantom when no folder), or
    those of one region with only its landmarks when `data.roi` names one."""
    d = config.data
    if d.mixture:  # several datasets, one union landmark set (lmjax.data.mixture)
        from lmjax.configs import base
        from lmjax.data.mixture import mixture_dataset, mixture_only

        defaults = {k: f.default for k, f in base.DATA.items()}

        def one(source) -> Dataset:  # a source names its data; nothing of config.data
            return _load_one({**defaults, **source}, config)

        ds = mixture_dataset(d.mixture, one, val_fraction=d.val_fraction, seed=config.train.seed)
        ds = mixture_only(ds, d.mixture_only) if d.mixture_only else ds
    else:
        ds = _load_one(d.to_dict(), config)
    if d.roi:  # one region's crops and landmarks (the lower-limb paper's per-joint nets)
        from lmjax.data.roi import roi_dataset

        # A list in a config file, "a,b,c" from --config.data.roi_groups.NAME=a,b,c.
        groups = {
            k: [n.strip() for n in v.split(",")] if isinstance(v, str) else list(v)
            for k, v in dict(d.roi_groups).items()
        }
        ds = roi_dataset(ds, groups, d.roi, margin=d.roi_margin)
    return ds


def load_splits(config) -> tuple[Dataset, Dataset, Dataset | None]:
    """Train, validation and (when present) test datasets from the config.

    With `data.calib_fraction > 0` the calibration records (`load_calibration`)
    are not in the training set.
    """
    train, val, test, _ = _all_splits(config)
    return train, val, test


def load_calibration(config) -> Dataset | None:
    """The conformal calibration split (`data.calib_fraction` of the training records
    left after the validation cut), or None when the fraction is 0.

    It is never trained on nor used to pick a checkpoint; `lmjax calibrate` computes
    the conformal radii on it (`lmjax.conformal`).
    """
    return _all_splits(config)[3]


def _all_splits(config) -> tuple[Dataset, Dataset, Dataset | None, Dataset | None]:
    """Train, validation, test (or None) and calibration (or None) datasets."""
    d = config.data
    ds = load_config_dataset(config)
    if d.mixture:  # the mixture unified every source's splits under these names
        d = d.copy_and_resolve_references()
        with d.unlocked():
            d.train_split, d.val_split, d.test_split = "train", "val", "test"
    if not ds.records:
        raise ValueError(f"{d.data_dir or 'phantom'}: no usable records; {ds.errors[:3]}")
    splits = {r.split for r in ds.records}
    train = ds.split(d.train_split) if d.train_split in splits else ds
    test = ds.split(d.test_split) if d.test_split in splits else None
    cv = folds.cv_enabled(config)
    if cv:  # the held-out fold is the test set; validation comes from the rest
        keep, out = folds.held_out(train.records, config)
        train, test = (dataclasses.replace(train, records=r) for r in (keep, out))
    if d.val_split in splits and not cv:
        val = ds.split(d.val_split)
    else:  # hold out a deterministic part of the training records
        n_val = max(1, int(round(len(train.records) * d.val_fraction)))
        order = np.random.default_rng(config.train.seed).permutation(len(train.records))
        held = set(order[:n_val].tolist())
        val = dataclasses.replace(train, records=[train.records[i] for i in sorted(held)])
        train = dataclasses.replace(
            train, records=[r for i, r in enumerate(train.records) if i not in held]
        )
    train, calib = calibration_cut(train, config)
    return train, val, test, calib


def device_keys(
    task: TaskSpec, *, augment_on_device: bool = False, geometry: bool = False
) -> tuple[str, ...]:
    """The batch entries the train step reads: `DEVICE_KEYS`, plus `REGION_KEYS` if
    needed, plus `NORM_KEYS` when the step augments, plus `ITEM_KEYS` (and, with
    `geometry`, i.e. outlines or patches in the set, `GEOMETRY_KEYS`) for detection."""
    items = task.needs_items
    return (
        DEVICE_KEYS
        + (REGION_KEYS if task.needs_region_mask else ())
        + (NORM_KEYS if augment_on_device else ())
        + (ITEM_KEYS if items else ())
        + (GEOMETRY_KEYS if items and geometry else ())
    )


def has_geometry(landmark_set: LandmarkSet | None) -> bool:
    """Whether the set has outlines or patches (batches then carry their vertices)."""
    return landmark_set is not None and any(k != "landmark" for k in landmark_set.item_kinds)


def augments_on_device(config) -> bool:
    """Whether the train step, not the host pipeline, augments (`config.data.augment`
    set and `config.data.augment_on_device`)."""
    return bool(config.data.augment_on_device) and bool(config.data.augment)


def device_augment(config, landmark_set: LandmarkSet | None) -> DeviceAugment | None:
    """The step's augmentation for `config.data.augment`, or None when the host augments.

    A preset means what it means on the host (`resolve_augment`); flips swap the
    landmark set's pairs and relabel its regions.

    Raises:
      ValueError: flips without a landmark set (or one without pairs), or an
        elastic deformation, which only the host pipeline does.
    """
    if not augments_on_device(config):
        return None
    pairs = () if landmark_set is None else landmark_set.flip_pairs
    cfg = resolve_augment(config.data.augment, pairs)
    perm = table = None
    if cfg.flips:
        if landmark_set is None:
            raise ValueError("device augmentation with flips needs the landmark set")
        perm, table = landmark_set.flip_permutation(), region_flip_table(landmark_set)
    return DeviceAugment(cfg, flip_permutation=perm, region_table=table)


def make_train_pipeline(config, dataset: Dataset, *, cache_dir: str | None):
    """The training batch iterator exactly as `train` reads it (`lmjax benchmark` too).

    This process's share of `config.train.batch_size`. With device augmentation
    (`augments_on_device`) the host only decodes, fits and batches, and leaves the
    normalisation to the step (`pixel_norm`), which augments first.
    """
    on_device = augments_on_device(config)
    return make_pipeline(
        dataset,
        input_size=tuple(config.data.input_size),
        batch_size=config.train.batch_size // jax.process_count(),
        augment=None if on_device else (config.data.augment or None),
        seed=config.train.seed,
        cache_dir=cache_dir,
        fit=config.data.fit,
        normalize=config.data.normalize,
        num_threads=config.data.num_threads,
        defer_normalize=on_device,
    )


def check_region_masks(dataset, shipped: tuple[str, ...], losses) -> None:
    """Raises ValueError if the step reads region masks and `dataset` has none."""
    if set(REGION_KEYS) & set(shipped) and dataset.records[0].region_mask is None:
        raise ValueError(
            f"losses {', '.join(losses)} need region masks; dataset {dataset.name!r} has none"
        )


def build(
    config,
    num_landmarks: int,
    landmark_set: LandmarkSet | None = None,
    *,
    pretrained: bool = True,
    log=print,
    readers=None,
):
    """`(mesh, state, train_step, eval_step, optim)`: `build_state`'s model and
    optimizer with their compiled steps (see there); `readers` go to the eval step
    (`make_eval_step`)."""
    parts = build_state(config, num_landmarks, landmark_set, pretrained=pretrained, log=log)
    config = resolve(config)
    make_train, make_eval = make_train_step, make_eval_step
    if ensemble.size(config) > 1:  # stacked members under jax.vmap
        how = config.train.ensemble_map
        make_train = functools.partial(ensemble.make_train_step, how=how)
        make_eval = functools.partial(
            ensemble.make_eval_step, average=config.train.ensemble_average, how=how
        )
    train_step = make_train(
        parts.graphdef,
        parts.task,
        parts.tx,
        parts.mesh,
        schedule=parts.schedule,
        augment=device_augment(config, landmark_set),
        trainable=parts.trainable,
        cpu_conv_kernels=config.train.get("cpu_conv_kernels", "auto"),
    )
    eval_step = make_eval(parts.graphdef, parts.task, parts.mesh, readers=readers)
    return parts.mesh, parts.state, train_step, eval_step, parts.optim


class Built(NamedTuple):
    mesh: Any
    graphdef: nnx.GraphDef
    state: Any
    tx: Any
    schedule: Any
    task: Any
    optim: OptimConfig
    trainable: Any  # path -> bool, or None: every parameter trains


def build_state(
    config,
    num_landmarks: int,
    landmark_set: LandmarkSet | None = None,
    *,
    pretrained: bool = True,
    log=print,
) -> Built:
    """Model, optimizer and state on a mesh of all devices (no compiled steps).

    `landmark_set` gives region losses their `landmark_regions` and, when the task
    needs a segmentation output and `config.model` does not set `num_regions`, the
    model its `num_regions`.

    `config.model.trainable` ("all" | "lora_and_head") and `config.optim.layer_decay`
    shape the optimizer: frozen parameters get no updates, and a model that numbers
    its layers (`layer_index`, `num_layers`, e.g. vit_pose) gets per-layer rates.

    With `config.data.augment_on_device` the train step augments each batch first
    (`device_augment`; flips need `landmark_set`); the eval step never augments.

    `config.model.pretrained` (a checkpoint file; "" for none), `pretrained_table`,
    `pretrained_strict` and `pretrained_ignore` load weights into the new model (see
    `lmjax.models.weights`; the summary goes to `log`) unless `pretrained` is False.

    With `config.train.ensemble = N > 1` the state stacks N members, member k built
    as this function builds a run seeded `train.seed + k` (`lmjax.train.ensemble`);
    `build` then gives the vmapped steps.
    """
    config = resolve(config)
    ensemble.check_config(config)
    if ensemble.size(config) > 1:  # member k as a single run seeded seed + k, stacked
        members = [
            build_state(
                ensemble.member_config(config, k),
                num_landmarks,
                landmark_set,
                pretrained=pretrained,
                log=log,
            )
            for k in range(ensemble.size(config))
        ]
        ensemble.check_config(config, members[0].task)
        stacked = ensemble.stack_states([m.state for m in members], members[0].mesh)
        return members[0]._replace(state=stacked)
    mesh = parallel.make_mesh()
    trainable = config.model.trainable
    skip = ("name", "trainable", *weights.CONFIG_KEYS)
    kwargs = {k: v for k, v in config.model.to_dict().items() if k not in skip}
    if config.task.compute_dtype == "bfloat16":
        kwargs.setdefault("dtype", jax.numpy.bfloat16)
    task = task_spec(
        config,
        None if landmark_set is None else landmark_set.regions,
        None if landmark_set is None else landmark_set.item_kinds,
    )
    if task.needs_segmentation and "num_regions" not in kwargs:
        if landmark_set is None or not landmark_set.num_regions:
            raise ValueError(
                f"losses {', '.join(task.losses)} need a segmentation output, but the "
                "landmark set declares no regions; set config.model.num_regions"
            )
        kwargs["num_regions"] = landmark_set.num_regions
    model = models.build_model(
        config.model.name,
        num_outputs=num_landmarks,
        input_size=tuple(config.data.input_size),
        in_channels=1,
        rngs=nnx.Rngs(config.train.seed),
        **kwargs,
    )
    if pretrained:
        weights.load_from_config(model, config.model, log=log)
    optim = OptimConfig.from_any({**config.optim.to_dict(), "total_steps": config.train.steps})
    lr_scale = None
    if optim.layer_decay is not None:
        if not hasattr(model, "layer_index"):
            raise ValueError(
                f"optim.layer_decay: model {config.model.name!r} has no layer numbering"
            )
        lr_scale = layer_decay_scales(model.layer_index, model.num_layers, optim.layer_decay)
    paths = models.lora.trainable_paths(model, trainable)
    tx, schedule = make_optimizer(
        optim, lr_scale=lr_scale, trainable=None if paths is None else paths.__contains__
    )
    graphdef, state = create_train_state(model, tx, config.train.seed, mesh=mesh)
    trainable = None if paths is None else paths.__contains__
    return Built(mesh, graphdef, state, tx, schedule, task, optim, trainable)


def save_landmark_set(workdir: pathlib.Path, landmark_set: LandmarkSet) -> None:
    """`landmarks.json`: what the outputs mean, so inference never reads training data."""
    if jax.process_index() != 0:  # one writer in a multi-process run
        return
    path = pathlib.Path(workdir) / LANDMARKS_FILE
    path.write_text(json.dumps(dataclasses.asdict(landmark_set), indent=1) + "\n")


def load_landmark_set(workdir: str | pathlib.Path, config=None) -> LandmarkSet:
    """The landmark set a workdir was trained on (from its training data if unsaved)."""
    path = pathlib.Path(workdir) / LANDMARKS_FILE
    if path.exists():
        return landmark_set_from_dict(json.loads(path.read_text()))
    if config is None:
        raise FileNotFoundError(f"{path}: missing")
    return load_splits(config)[0].landmark_set
