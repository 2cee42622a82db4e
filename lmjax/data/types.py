"""The data contracts every module keeps: radiographs, landmark sets, records, datasets.

Coordinates are `(x, y)` = (column, row) in pixels of the original image, pixel
centres on integer coordinates. A missing landmark is NaN with `visible = False`.
Spacing is `(row_mm, col_mm)` or None when unknown; it is never guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

Spacing = tuple[float, float]

# Where a spacing came from; inspect reports counts per source.
SPACING_NONE = "none"
# What an item of a set is; the same names as `lmjax.ops.item_targets.KINDS`.
ITEM_KINDS = ("landmark", "outline", "patch")


class LandmarkDataError(ValueError):
    """Bad input data: the message names the file and the problem."""


@dataclasses.dataclass
class Radiograph:
    """One decoded image as a reader returns it.

    Attributes:
      pixels: float32 `[H, W]`, full bit depth, bone bright (MONOCHROME1 inverted).
      spacing: `(row_mm, col_mm)` or None when unknown or invalid.
      spacing_source: the tag or origin the spacing came from, or "none".
      bit_depth: bits stored per pixel in the source (8, 10, 12, 15, 16, ...).
      photometric: photometric interpretation of the source ("MONOCHROME1",
        "MONOCHROME2", "RGB", ...).
      window: `(center, width)` VOI window for display, in `pixels` units, or None.
      path: the source file, or a description for in-memory images.
      warnings: problems found while reading that did not stop it.
      display_lut: how the file says to show `pixels` (a DICOM VOI or Presentation
        LUT, `lmjax.data.dicom_display.DisplayLUT`), or None: by `window`.
    """

    pixels: np.ndarray
    spacing: Spacing | None
    spacing_source: str = SPACING_NONE
    bit_depth: int = 8
    photometric: str = "MONOCHROME2"
    window: tuple[float, float] | None = None
    path: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    display_lut: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[:2])  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class LandmarkSet:
    """A set of landmarks, or more generally of items, declared once per dataset.

    An item is a landmark (a point, drawn as a disc of `radius_mm`), an outline
    (a polyline drawn `width_mm` wide) or a patch (a filled polygon). `K` counts
    items, and `Record.landmarks[k]` is a point for every item, so metrics work
    unchanged; the vertices of outlines and patches are in `Record.polygons`.

    Attributes:
      name: short name of the set ("isbi2015", "phantom", ...).
      names: item names, in the order of the `K` axis.
      flip_pairs: index pairs `(left, right)` that a horizontal flip swaps; both
        items of a pair have the same kind.
      regions: for each landmark, the index into `region_names` of the region
        (bone) it belongs to, or -1; None when the set declares no regions.
      region_names: names of the regions; label `r + 1` in a region label map is
        region `r` (0 is background).
      kinds: the kind of each item (one of `ITEM_KINDS`); None when all are
        landmarks, which is what a set of only landmarks normalises to.
      radius_mm: disc radius a landmark is drawn with.
      width_mm: stroke width an outline is drawn with.
    """

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    regions: tuple[int, ...] | None = None
    region_names: tuple[str, ...] = ()
    kinds: tuple[str, ...] | None = None
    radius_mm: float = 2.0
    width_mm: float = 2.0

    def __post_init__(self):
        k = len(self.names)
        if len(set(self.names)) != k:
            raise ValueError(f"landmark set {self.name!r}: duplicate landmark names")
        if self.kinds is not None:
            kinds = tuple(str(x) for x in self.kinds)
            if len(kinds) != k or any(x not in ITEM_KINDS for x in kinds):
                raise ValueError(
                    f"landmark set {self.name!r}: kinds must be {k} of {ITEM_KINDS}, got {kinds}"
                )
            # One spelling for "only landmarks", so old and new sets compare equal.
            kinds = None if all(x == "landmark" for x in kinds) else kinds
            object.__setattr__(self, "kinds", kinds)
        for field in ("radius_mm", "width_mm"):
            value = float(getattr(self, field))
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"landmark set {self.name!r}: {field} must be > 0, got {value}")
            object.__setattr__(self, field, value)
        seen = set()
        item_kinds = self.item_kinds
        for a, b in self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k) or a == b or a in seen or b in seen:
                raise ValueError(f"landmark set {self.name!r}: bad flip pair {(a, b)}")
            if item_kinds[a] != item_kinds[b]:
                raise ValueError(
                    f"landmark set {self.name!r}: flip pair {(a, b)} joins a "
                    f"{item_kinds[a]} and a {item_kinds[b]}"
                )
            seen.update((a, b))
        if self.regions is not None:
            if len(self.regions) != k:
                raise ValueError(
                    f"landmark set {self.name!r}: {len(self.regions)} regions for {k} landmarks"
                )
            if any(not -1 <= r < len(self.region_names) for r in self.regions):
                raise ValueError(f"landmark set {self.name!r}: region index out of range")

    @property
    def num_landmarks(self) -> int:
        return len(self.names)

    @property
    def num_regions(self) -> int:
        return len(self.region_names)

    @property
    def item_kinds(self) -> tuple[str, ...]:
        """The kind of every item, `"landmark"` throughout for a landmark-only set."""
        return self.kinds if self.kinds is not None else ("landmark",) * len(self.names)

    def _indices(self, kind: str) -> np.ndarray:
        return np.array([i for i, x in enumerate(self.item_kinds) if x == kind], np.int64)

    @property
    def landmark_indices(self) -> np.ndarray:
        return self._indices("landmark")

    @property
    def outline_indices(self) -> np.ndarray:
        return self._indices("outline")

    @property
    def patch_indices(self) -> np.ndarray:
        return self._indices("patch")

    def flip_permutation(self) -> np.ndarray:
        """Index array `perm` so that `flipped[k] = landmarks[perm[k]]`.

        Raises:
          ValueError: when the set declares no left/right pairs, since a flip
            would then silently mislabel lateral landmarks.
        """
        if not self.flip_pairs:
            raise ValueError(
                f"landmark set {self.name!r} declares no left/right flip pairs; "
                "horizontal flip is refused"
            )
        perm = np.arange(self.num_landmarks)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @classmethod
    def numbered(cls, name: str, k: int, prefix: str = "L") -> LandmarkSet:
        return cls(name=name, names=tuple(f"{prefix}{i + 1}" for i in range(k)))


@dataclasses.dataclass
class Record:
    """One annotated image.

    Attributes:
      image: path of the image file, or an in-memory float32 `[H, W]` array.
      landmarks: float32 `[K, 2]` (x, y) in original pixels, NaN when missing.
      visible: bool `[K]`; False exactly where the landmark is missing.
      spacing: `(row_mm, col_mm)` or None when unknown.
      spacing_source: where the spacing came from, or "none".
      region_mask: optional int `[H, W]` label map (0 background, r+1 region r),
        or a path to one.
      polygons: optional named vertex lists, each float32 `[V, 2]` (x, y) in
        original pixels: the geometry of every present outline and patch item,
        under its item name (its kind says open or closed), plus any shapes a
        reader kept that are not items. `landmarks[k]` of such an item is the
        centroid of its geometry.
      boxes: optional float32 `[N, 4]` boxes (x0, y0, x1, y1) in pixels.
      split: the split the record belongs to ("train", "test1", ...), or "".
      meta: anything else a format carries (source annotation file, ...).
    """

    image: str | np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    spacing: Spacing | None = None
    spacing_source: str = SPACING_NONE
    region_mask: np.ndarray | str | None = None
    polygons: dict[str, np.ndarray] | None = None
    boxes: np.ndarray | None = None
    split: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.landmarks = np.asarray(self.landmarks, np.float32).reshape(-1, 2)
        if self.visible is None:
            self.visible = np.isfinite(self.landmarks).all(axis=1)
        self.visible = np.asarray(self.visible, bool).reshape(-1)
        if self.visible.shape[0] != self.landmarks.shape[0]:
            raise ValueError("visible and landmarks disagree on the landmark count")
        # Contract: missing means NaN and not visible, never a zero placeholder.
        missing = ~np.isfinite(self.landmarks).all(axis=1)
        self.visible = self.visible & ~missing
        self.landmarks[~self.visible] = np.nan

    @property
    def name(self) -> str:
        if isinstance(self.image, str):
            return self.image.replace("\\", "/").rsplit("/", 1)[-1]
        return str(self.meta.get("name", "<array>"))


@dataclasses.dataclass
class Dataset:
    """A landmark set with its records, and what reading them found wrong.

    `warnings` and `errors` are human-readable lines that name the file.
    Records that could not be read are listed in `errors`, never dropped silently.
    """

    landmark_set: LandmarkSet
    records: list[Record]
    name: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def split(self, *names: str) -> Dataset:
        """The records of the given splits, in order."""
        known = sorted({r.split for r in self.records})
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"dataset {self.name!r} has no split {unknown}; it has {known}")
        recs = [r for r in self.records if r.split in names]
        return dataclasses.replace(self, records=recs)

    def spacings(self) -> np.ndarray:
        """float64 `[N, 2]` (row_mm, col_mm) of all records; NaN rows where unknown."""
        return np.array(
            [r.spacing if r.spacing else (np.nan, np.nan) for r in self.records], np.float64
        ).reshape(-1, 2)

    def landmarks(self) -> np.ndarray:
        """float32 `[N, K, 2]` of all records."""
        return (
            np.stack([r.landmarks for r in self.records])
            if self.records
            else np.zeros((0, self.landmark_set.num_landmarks, 2), np.float32)
        )


def check_landmark_count(landmarks: np.ndarray, landmark_set: LandmarkSet, source: str):
    """Raises LandmarkDataError naming `source` when the count does not match the set."""
    k = np.asarray(landmarks).shape[0]
    if k != landmark_set.num_landmarks:
        raise LandmarkDataError(
            f"{source}: {k} landmarks, but landmark set {landmark_set.name!r} "
            f"has {landmark_set.num_landmarks}"
        )


def as_spacing(value: Sequence[float] | None) -> Spacing | None:
    """`(row_mm, col_mm)` when both are finite and positive, else None."""
    if value is None:
        return None
    v = [float(x) for x in value]
    if len(v) != 2 or not all(np.isfinite(x) and x > 0 for x in v):
        return None
    return (v[0], v[1])


def landmark_set_from_dict(raw: dict[str, Any]) -> LandmarkSet:
    """A landmark set from its `dataclasses.asdict` JSON (a workdir's landmark file,
    an exported model's metadata); fields added later default when absent."""
    regions, kinds = raw.get("regions"), raw.get("kinds")
    defaults = {f.name: f.default for f in dataclasses.fields(LandmarkSet)}
    return LandmarkSet(
        name=raw["name"],
        names=tuple(raw["names"]),
        flip_pairs=tuple(tuple(p) for p in raw.get("flip_pairs", ())),
        regions=None if regions is None else tuple(regions),
        region_names=tuple(raw.get("region_names", ())),
        kinds=None if kinds is None else tuple(kinds),
        radius_mm=raw.get("radius_mm", defaults["radius_mm"]),
        width_mm=raw.get("width_mm", defaults["width_mm"]),
    )
