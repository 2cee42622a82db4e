"""Several datasets as one: the MedSapiens generalist's multi-dataset training.

MedSapiens trains one "generalist" on head, hand, chest and leg radiographs at
once, each dataset with its own landmarks, then fine-tunes a LoRA "specialist"
per dataset. `mixture_dataset` joins datasets into one whose landmark set is the
union of theirs, names prefixed by the dataset (`isbi/sella`): one output channel
per landmark of every dataset, so one head serves all of them, and a record
annotates only its own dataset's channels (the others are missing, which every
loss and metric already leaves out). Batches mix the datasets in proportion to
their sizes.

Splits are unified: each source names its own train, validation and test splits,
which become `train`, `val` and `test` (a source without splits trains on all of
it); a source without a validation split gives a seeded `val_fraction` of its
training records. `mixture_only` keeps the union
landmark set but only one source's records: the specialist's data, trained from
the generalist's parameters (`train.init_from`). `source_landmarks` tells which
channels are whose, so `lmjax evaluate` reports each dataset on its own landmarks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lmjax.data.types import Dataset, LandmarkSet, Record

SEP = "/"
SET_PREFIX = "mixture:"
SOURCE_KEY = "mixture_source"
SOURCE_FIELDS = (
    "name",
    "data_dir",
    "format",
    "ground_truth",
    "image_dir",
    "spacing",
    "strict",
    "phantom_size",
    "train_split",
    "val_split",
    "test_split",
    "reference_distance",
)


def check_sources(sources: Sequence[Mapping[str, Any]]) -> None:
    """Raises ValueError for fewer than two sources, a source without a unique
    `name`, or an unknown key."""
    if len(sources) < 2:
        raise ValueError("data.mixture needs at least two datasets")
    names = [s.get("name", "") for s in sources]
    if not all(names) or len(set(names)) < len(names) or any(SEP in n for n in names):
        raise ValueError(f"data.mixture: every dataset needs a unique name without '/': {names}")
    for s in sources:
        unknown = sorted(set(s) - set(SOURCE_FIELDS))
        if unknown:
            raise ValueError(f"data.mixture[{s['name']}]: unknown keys {unknown}; known: "
                             f"{list(SOURCE_FIELDS)}")  # fmt: skip


def _unify_splits(ds: Dataset, source: Mapping[str, Any], val_fraction: float, seed: int):
    rename = {source.get("train_split", "train"): "train", source.get("test_split", "test"): "test"}
    val = source.get("val_split", "val")
    have = {r.split for r in ds.records}
    if have == {""}:  # a folder without splits: all of it trains (less validation)
        rename[""] = "train"
    if val in have:
        rename[val] = "val"
    kept = [r for r in ds.records if r.split in rename]
    records = [dataclasses.replace(r, split=rename[r.split]) for r in kept]
    if val not in have:  # carve validation from this source's training records
        train = [i for i, r in enumerate(records) if r.split == "train"]
        n_val = max(1, int(round(len(train) * val_fraction)))
        held = set(np.random.default_rng(seed).permutation(train)[:n_val].tolist())
        records = [dataclasses.replace(r, split="val") if i in held else r
                   for i, r in enumerate(records)]  # fmt: skip
    return records


def mixture_dataset(
    sources: Sequence[Mapping[str, Any]],
    load: Callable[[Mapping[str, Any]], Dataset],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """One dataset from several: the union landmark set, every record padded to it.

    Args:
      sources: one mapping per dataset, with `SOURCE_FIELDS` (`name` required).
      load: reads one source (the config's loader, so formats and spacing apply).
      val_fraction, seed: validation carved from a source without a val split.

    Raises:
      ValueError: see `check_sources`; a source with outlines or patches.
    """
    check_sources(sources)
    parts = [(s, load(s)) for s in sources]
    names, pairs, offset = [], [], 0
    for s, ds in parts:
        lset = ds.landmark_set
        if lset.kinds is not None:
            raise ValueError(f"data.mixture[{s['name']}]: only landmark sets mix, not outlines")
        names += [f"{s['name']}{SEP}{n}" for n in lset.names]
        pairs += [(a + offset, b + offset) for a, b in lset.flip_pairs]
        offset += lset.num_landmarks
    union = LandmarkSet(
        name=SET_PREFIX + ",".join(s["name"] for s in sources),
        names=tuple(names),
        flip_pairs=tuple(pairs),
        radius_mm=parts[0][1].landmark_set.radius_mm,
    )
    records: list[Record] = []
    warnings, errors, offset = [], [], 0
    for s, ds in parts:
        k = ds.landmark_set.num_landmarks
        for r in _unify_splits(ds, s, val_fraction, seed):
            lm = np.full((len(names), 2), np.nan, np.float32)
            vis = np.zeros(len(names), bool)
            lm[offset : offset + k], vis[offset : offset + k] = r.landmarks, r.visible
            records.append(
                dataclasses.replace(
                    r,
                    landmarks=lm,
                    visible=vis,
                    region_mask=None,
                    meta={**r.meta, SOURCE_KEY: s["name"]},
                )  # fmt: skip
            )
        warnings += [f"{s['name']}: {w}" for w in ds.warnings]
        errors += [f"{s['name']}: {e}" for e in ds.errors]
        offset += k
    return Dataset(union, records, name=union.name, warnings=warnings, errors=errors)


def mixture_only(dataset: Dataset, source: str) -> Dataset:
    """The records of one source, the union landmark set kept (a specialist's data)."""
    have = sorted({r.meta.get(SOURCE_KEY) for r in dataset.records})
    if source not in have:
        raise ValueError(f"data.mixture_only={source!r} is not one of the mixture's {have}")
    keep = [r for r in dataset.records if r.meta.get(SOURCE_KEY) == source]
    return dataclasses.replace(dataset, records=keep)


def source_landmarks(landmark_set: LandmarkSet) -> dict[str, list[int]] | None:
    """Source name -> its landmark indices, or None when the set is not a mixture."""
    if not landmark_set.name.startswith(SET_PREFIX):
        return None
    out: dict[str, list[int]] = {}
    for i, n in enumerate(landmark_set.names):
        out.setdefault(n.split(SEP, 1)[0], []).append(i)
    return out
