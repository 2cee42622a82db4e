"""A picture of what the model will see: augmented samples with their landmarks.

The preview runs the training input pipeline once and draws each sample with its
landmarks in the model-input frame, plus the same landmarks mapped back through
`to_original` next to the annotation, so a wrong affine shows up as a mismatch.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from lmjax.data import affine
from lmjax.data.pipeline import make_pipeline
from lmjax.data.types import Dataset

_COLOURS = [
    (255, 99, 71),
    (50, 205, 50),
    (30, 144, 255),
    (255, 215, 0),
    (238, 130, 238),
    (0, 206, 209),
    (255, 140, 0),
    (173, 255, 47),
]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def draw_sample(image: np.ndarray, landmarks: np.ndarray, names=None) -> Image.Image:
    """RGB picture of a `[H, W]` image with its visible `[K, 2]` landmarks."""
    pic = Image.fromarray(_to_uint8(image)).convert("RGB")
    draw = ImageDraw.Draw(pic)
    r = max(2, min(pic.size) // 100)
    for k, (x, y) in enumerate(landmarks):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        colour = _COLOURS[k % len(_COLOURS)]
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(1, r // 2))
        if names is not None:
            draw.text((x + r + 1, y - r), str(k + 1), fill=colour)
    return pic


def write_preview(
    dataset: Dataset,
    *,
    output_dir: str | pathlib.Path,
    augment: str = "default",
    input_size: int = 256,
    num_images: int = 8,
    seed: int = 0,
) -> list[pathlib.Path]:
    """Writes `preview.png` (a grid of augmented samples) and `preview.json`.

    The JSON lists, per sample, the record, the landmarks in the input frame and
    the largest distance between `to_original @ landmarks` and the annotation
    (zero up to rounding when the geometry is consistent).
    """
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = [r for r in dataset.records if r.split in ("", "train")] or dataset.records
    subset = Dataset(dataset.landmark_set, train, name=dataset.name)
    it = make_pipeline(
        subset,
        input_size=(input_size, input_size),
        batch_size=num_images,
        augment=augment,
        seed=seed,
        train=True,
        num_threads=2,
        process_index=0,
        process_count=1,
    )
    batch = next(it)
    cols = min(4, num_images)
    rows = -(-num_images // cols)
    grid = Image.new("RGB", (cols * input_size, rows * input_size))
    samples = []
    for i in range(num_images):
        pts = batch["landmarks"][i]
        pic = draw_sample(batch["image"][i, ..., 0], pts, dataset.landmark_set.names)
        grid.paste(pic, ((i % cols) * input_size, (i // cols) * input_size))
        back = affine.apply(pts, batch["to_original"][i])
        gap = np.abs(back - batch["original_landmarks"][i])[batch["visible"][i]]
        samples.append(
            {
                "record": subset.records[int(batch["index"][i])].name,
                "landmarks": np.where(np.isfinite(pts), pts, None).tolist(),
                "visible": batch["visible"][i].tolist(),
                "max_roundtrip_error_px": float(gap.max()) if gap.size else 0.0,
            }
        )
    png, js = out / "preview.png", out / "preview.json"
    grid.save(png)
    js.write_text(
        json.dumps(
            {
                "dataset": dataset.name,
                "n_records": len(subset.records),
                "augment": augment,
                "input_size": input_size,
                "landmark_names": list(dataset.landmark_set.names),
                "samples": samples,
            },
            indent=2,
        )
    )
    return [png, js]
