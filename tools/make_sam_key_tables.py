"""Dev-only: regenerate the SAM ViT-B checkpoint key tables from lmjax's own model.

Writes, one line per tensor, `key<TAB>comma-separated shape`, sorted by key:

- `tests/fixtures/sam_vit_b_keys_original.txt`: `segment_anything`'s `build_sam_vit_b`
  state dict (314 tensors; no `pixel_mean`/`pixel_std`, which preprocessing sets);
- `tests/fixtures/sam_vit_b_keys_hf.txt`: the HF `SamModel` state dict (315 tensors: the
  same, renamed, plus the tied copy `shared_image_embedding.positional_embedding`).

The model is built with `nnx.eval_shape`, so nothing is allocated. The tables guard
the checkpoint key spec (tests/models/test_sam_key_tables.py); regenerate them only
for a deliberate change of that spec, and review the diff.

    python tools/make_sam_key_tables.py           # rewrite the tables
    python tools/make_sam_key_tables.py --check   # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from flax import nnx

from lmjax.models.sam import build_sam
from lmjax.models.sam_convert import original_shapes
from lmjax.models.sam_keys import original_to_hf

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
ORIGINAL = FIXTURES / "sam_vit_b_keys_original.txt"
HF = FIXTURES / "sam_vit_b_keys_hf.txt"


class _Shape:
    """A stand-in tensor: only its shape travels through the renaming."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def vit_b_tables() -> dict[pathlib.Path, dict[str, tuple[int, ...]]]:
    """`{table file: {key: shape}}` for an abstract ViT-B SAM."""
    model = nnx.eval_shape(lambda: build_sam(size="vit_b", rngs=nnx.Rngs(0)))
    original = original_shapes(model)
    hf = {
        k: v.shape for k, v in original_to_hf({k: _Shape(s) for k, s in original.items()}).items()
    }
    return {ORIGINAL: original, HF: hf}


def table_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return "".join(f"{k}\t{','.join(map(str, shapes[k]))}\n" for k in sorted(shapes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for path, shapes in vit_b_tables().items():
        text = table_text(shapes)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({len(shapes)} tensors)")
    for path in stale:
        print(f"out of date: {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
