"""Training augmentation inside the jitted step: the host `AugmentConfig`, in jnp.

With `config.data.augment_on_device` the host pipeline only decodes, fits
(resize/letterbox) and batches; `DeviceAugment` then draws, per example and
with its own key, the same geometry and photometric operations as
`lmjax.data.augment` with the same probabilities and ranges:

  geometry     flip (swapping the landmark set's left/right pairs), then inside
               the `p_affine` group scale, rotation, shear, translation about the
               image centre; composed into one 3x3 matrix and applied as ONE
               bilinear resample (`lmjax.ops.geometry.warp_image`, which uses
               `jax.scipy.ndimage.map_coordinates`: on XLA:CPU it measured faster
               than a flat-gather sampler, see experiments/results/device_augment_cpu).
  landmarks    moved by the same matrix; a landmark pushed past the pixel edges
               becomes invisible (NaN), as on the host.
  vertices     `item_vertices` / `vertex_valid`, when the batch has them, moved by
               the same matrix and relabelled like the landmarks; kept outside.
  photometric  brightness, contrast, gamma, blur, noise, clip to [0, 1], coarse
               dropout, in the host's order, on [0, 1] images.
  normalise    `(image - pixel_norm[0]) / pixel_norm[1]` when the batch carries
               `pixel_norm` (the host's z-score statistics of the source image,
               see `lmjax.data.pipeline`), so that brightness and contrast are not
               normalised away, exactly as on the host path.

Two differences from the host path, both at the pixel level: the warp resamples
the already fitted input (the host warps from the larger cache image in one
step), and outside the source it blends to zero over one pixel where SciPy's
"constant" mode stops at the outer pixel centres. Elastic deformation stays
host-only (refused here). Everything is pure jnp and
jit/vmap-able; which operations exist is decided by the (static) config, so an
operation with probability 0 costs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.data.augment import AugmentConfig
from lmjax.ops.geometry import apply_affine, warp_image

# Folded into the step key; dropout streams fold in small stream indices instead.
AUGMENT_STREAM = 0x61756721


# -------------------------------------------------------------------- geometry


def _about(linear: jax.Array, centre: tuple[float, float]) -> jax.Array:
    """The 3x3 matrix applying the 2x2 `linear` about `centre` (as `affine.rotate`)."""
    c = jnp.asarray(centre, jnp.float32)
    top = jnp.concatenate([linear, (c - linear @ c)[:, None]], axis=1)
    return jnp.concatenate([top, jnp.array([[0.0, 0.0, 1.0]])], axis=0)


def sample_geometry(
    cfg: AugmentConfig, key: jax.Array, hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """One example's geometry, drawn as `lmjax.data.augment.sample_geometry` does.

    Args:
      cfg: the augmentation config (static).
      key: this example's PRNG key.
      hw: the model input `(H, W)` (static); the warp maps this frame onto itself.

    Returns:
      `(matrix float32 [3, 3], flipped bool [])`: the input -> output affine (the
      flip first, then scale, rotation, shear, translation) and whether it flips.
    """
    h, w = hw
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    k_gate, k_scale, k_rot, k_shear, k_shift = jax.random.split(key, 5)
    gate = jax.random.uniform(k_gate, (6,))
    flipped = gate[0] < cfg.p_flip
    mirror = jnp.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = jnp.where(flipped, mirror, jnp.eye(3))
    group = gate[1] < cfg.p_affine

    def then(m, p: float, u: jax.Array, step: jax.Array) -> jax.Array:
        return jnp.where(group & (u < p), step @ m, m)

    # Probabilities are static: a step that never runs is not traced at all.
    if cfg.p_scale > 0:
        s = jax.random.uniform(k_scale, (), minval=cfg.scale[0], maxval=cfg.scale[1])
        m = then(m, cfg.p_scale, gate[2], _about(s * jnp.eye(2), centre))
    if cfg.p_rotation > 0:
        a = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-cfg.rotation, maxval=cfg.rotation))
        rot = jnp.stack([jnp.stack([jnp.cos(a), -jnp.sin(a)]), jnp.stack([jnp.sin(a), jnp.cos(a)])])
        m = then(m, cfg.p_rotation, gate[3], _about(rot, centre))
    if cfg.p_shear > 0:
        a = jnp.deg2rad(jax.random.uniform(k_shear, (), minval=-cfg.shear, maxval=cfg.shear))
        lin = jnp.eye(2) + jnp.tan(a) * jnp.array([[0.0, 1.0], [0.0, 0.0]])
        m = then(m, cfg.p_shear, gate[4], _about(lin, centre))
    if cfg.p_translation > 0:
        t = jax.random.uniform(k_shift, (2,), minval=-cfg.translation, maxval=cfg.translation)
        shift = jnp.eye(3).at[:2, 2].set(t * jnp.array([w, h], jnp.float32))
        m = then(m, cfg.p_translation, gate[5], shift)
    return m.astype(jnp.float32), flipped


def move_landmarks(
    landmarks: jax.Array,
    visible: jax.Array,
    matrix: jax.Array,
    flipped: jax.Array,
    permutation: np.ndarray | None,
    hw: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """One example's landmarks through `matrix`, relabelled after a flip.

    Args:
      landmarks: `[K, 2]` (x, y) in the input frame; NaN where not visible.
      visible: bool `[K]`.
      matrix: `[3, 3]` input -> output affine.
      flipped: bool `[]`; with it label k takes its partner `permutation[k]`.
      permutation: `LandmarkSet.flip_permutation()`, or None when never flipping.
      hw: output `(H, W)`.

    Returns:
      `(landmarks [K, 2], visible [K])`: a landmark beyond the pixel edges
      (-0.5 and side - 0.5) is not visible, and every invisible one is NaN.
    """
    pts = apply_affine(landmarks.astype(jnp.float32), matrix)
    vis = visible.astype(bool)
    if permutation is not None:
        pts = jnp.where(flipped, pts[permutation], pts)
        vis = jnp.where(flipped, vis[permutation], vis)
    h, w = hw
    inside = jnp.all(pts >= -0.5, axis=-1) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] <= h - 0.5)
    vis = vis & inside  # NaN compares False: missing landmarks stay missing
    return jnp.where(vis[:, None], pts, jnp.nan), vis


def move_vertices(
    vertices: jax.Array,
    valid: jax.Array,
    matrix: jax.Array,
    flipped: jax.Array,
    permutation: np.ndarray | None,
) -> tuple[jax.Array, jax.Array]:
    """One example's item vertices `[K, V, 2]` through `matrix`, relabelled as
    `move_landmarks` relabels landmarks.

    Unlike landmarks, vertices beyond the image are kept (boxes clip later); only
    padding (`valid [K, V]` False) is NaN. Returns `(vertices, valid)`.
    """
    v = apply_affine(vertices.astype(jnp.float32), matrix)
    ok = valid.astype(bool)
    if permutation is not None:
        v = jnp.where(flipped, v[permutation], v)
        ok = jnp.where(flipped, ok[permutation], ok)
    ok = ok & jnp.all(jnp.isfinite(v), axis=-1)
    return jnp.where(ok[..., None], v, jnp.nan), ok


# ----------------------------------------------------------------- photometric


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of `[H, W, C]` with a traced `sigma` (pixels).

    `radius` is static (taps `2 * radius + 1`); edges reflect as in
    `scipy.ndimage.gaussian_filter` (mode "reflect" is NumPy's "symmetric").
    """
    d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    # A zero sigma leaves the image as it is (all weight on the centre tap).
    k = jnp.exp(-0.5 * (d / jnp.maximum(sigma, 1e-3)) ** 2)
    k = k / k.sum()

    def along(x: jax.Array, axis: int) -> jax.Array:
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        p = jnp.pad(x, pad, mode="symmetric")
        taps = (k[i] * jax.lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(2 * radius + 1))
        return sum(taps)

    return along(along(image, 0), 1)


def dropout_boxes(
    key: jax.Array, hw: tuple[int, int], holes: tuple[int, int], size: tuple[float, float]
) -> jax.Array:
    """bool `[H, W]`: U{holes} boxes, each side U(size) times the image side (>= 1 px),
    placed uniformly inside the image, as `lmjax.data.augment.coarse_dropout`."""
    h, w = hw
    k_n, k_size, k_pos = jax.random.split(key, 3)
    n = jax.random.randint(k_n, (), holes[0], holes[1] + 1)
    sides = jax.random.uniform(k_size, (holes[1], 2), minval=size[0], maxval=size[1])
    bh = jnp.maximum(1, jnp.round(sides[:, 0] * h)).astype(jnp.int32)
    bw = jnp.maximum(1, jnp.round(sides[:, 1] * w)).astype(jnp.int32)
    u = jax.random.uniform(k_pos, (holes[1], 2))
    y0 = jnp.floor(u[:, 0] * (h - bh + 1)).astype(jnp.int32)
    x0 = jnp.floor(u[:, 1] * (w - bw + 1)).astype(jnp.int32)
    active = jnp.arange(holes[1]) < n
    rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + bh)[:, None]) & active[:, None]
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])
    return jnp.einsum("nh,nw->hw", in_rows.astype(jnp.float32), in_cols.astype(jnp.float32)) > 0


def photometric(image: jax.Array, cfg: AugmentConfig, key: jax.Array) -> jax.Array:
    """Brightness, contrast, gamma, blur, noise, clip, dropout on one `[H, W, C]` image.

    The same operations, order, probabilities and ranges as
    `lmjax.data.augment.photometric`; the input is in [0, 1] and so is the output
    (float32).
    """
    x = image.astype(jnp.float32)
    k_gate, k_b, k_c, k_g, k_blur, k_std, k_noise, k_drop = jax.random.split(key, 8)
    gate = jax.random.uniform(k_gate, (6,))

    def maybe(i: int, p: float, y: jax.Array) -> jax.Array:
        return jnp.where(gate[i] < p, y, x)

    if cfg.p_brightness > 0:
        b = jax.random.uniform(k_b, (), minval=-cfg.brightness, maxval=cfg.brightness)
        x = maybe(0, cfg.p_brightness, x + b)
    if cfg.p_contrast > 0:
        c = jax.random.uniform(k_c, (), minval=cfg.contrast[0], maxval=cfg.contrast[1])
        x = maybe(1, cfg.p_contrast, (x - x.mean()) * c + x.mean())
    if cfg.p_gamma > 0:
        g = cfg.gamma_draw(jax.random.uniform(k_g, ()), exp=jnp.exp)
        x = maybe(2, cfg.p_gamma, jnp.clip(x, 0.0, 1.0) ** g)
    if cfg.p_blur > 0:
        sigma = jax.random.uniform(k_blur, (), minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
        # SciPy's radius for the largest sigma (truncate 4), within the image.
        radius = min(int(4.0 * cfg.blur_sigma[1] + 0.5), x.shape[0] - 1, x.shape[1] - 1)
        x = maybe(3, cfg.p_blur, gaussian_blur(x, sigma, max(radius, 0)))
    if cfg.p_noise > 0:
        std = jax.random.uniform(k_std, (), minval=cfg.noise_std[0], maxval=cfg.noise_std[1])
        x = maybe(4, cfg.p_noise, x + std * jax.random.normal(k_noise, x.shape))
    x = jnp.clip(x, 0.0, 1.0)
    if cfg.p_dropout > 0:
        boxes = dropout_boxes(k_drop, x.shape[:2], cfg.dropout_holes, cfg.dropout_size)
        x = maybe(5, cfg.p_dropout, jnp.where(boxes[..., None], 0.0, x))
    return x


# ----------------------------------------------------------------------- batch


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
    """`augment(batch, key) -> batch`: per-example augmentation of a training batch.

    Attributes:
      config: the host path's `AugmentConfig` (same fields, same meaning).
      flip_permutation: `LandmarkSet.flip_permutation()`; needed when flips are on.
      region_table: `lmjax.data.pipeline.region_flip_table(...)`; relabels a
        flipped `region_mask` (None keeps labels).

    The batch (`shard_batch` output) holds `image` float32 `[B, H, W, C]` in
    [0, 1], `landmarks` `[B, K, 2]`, `visible` `[B, K]`, optionally `pixel_norm`
    `[B, 2]` (offset, scale) applied after the photometric operations, and
    optionally `region_mask` int `[B, H, W]` (warped by nearest sampling), and
    optionally `item_vertices` `[B, K, V, 2]` with `vertex_valid` `[B, K, V]`
    (moved with the landmarks). Other entries pass through. Example `i` draws from
    `example_keys(key, B)[i]`, so its augmentation depends only on the key and its
    place in the global batch.
    """

    config: AugmentConfig
    flip_permutation: tuple[int, ...] | None = None
    region_table: tuple[int, ...] | None = None

    def __post_init__(self):
        cfg = self.config
        if cfg.p_elastic > 0 and cfg.elastic_alpha > 0:
            raise ValueError(
                "elastic deformation runs only in the host pipeline; set p_elastic=0 or "
                "config.data.augment_on_device=False"
            )
        if cfg.flips and self.flip_permutation is None:
            raise ValueError("flips on the device need the landmark set's flip_permutation")
        for name in ("flip_permutation", "region_table"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))

    def example_keys(self, key: jax.Array, batch_size: int) -> jax.Array:
        """`[B]` keys, one per example of the global batch."""
        return jax.random.split(jax.random.fold_in(key, AUGMENT_STREAM), batch_size)

    def geometry(
        self, key: jax.Array, batch_size: int, hw: tuple[int, int]
    ) -> tuple[jax.Array, jax.Array]:
        """The batch's draws: `(matrices float32 [B, 3, 3], flipped bool [B])`."""
        keys = self.example_keys(key, batch_size)
        draw = lambda k: sample_geometry(self.config, jax.random.fold_in(k, 0), hw)  # noqa: E731
        return jax.vmap(draw)(keys)

    def __call__(self, batch: Mapping[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        image = batch["image"]
        n, hw = image.shape[0], tuple(image.shape[1:3])
        matrices, flips = self.geometry(key, n, hw)
        photo_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(self.example_keys(key, n))
        perm = None if not self.config.flips else np.asarray(self.flip_permutation)
        mask = batch.get("region_mask")
        geometry = None
        if "item_vertices" in batch:
            geometry = (batch["item_vertices"], batch["vertex_valid"])

        def one(img, lm, vis, region, geom, m, flipped, k):
            lm, vis = move_landmarks(lm, vis, m, flipped, perm, hw)
            if geom is not None:
                geom = move_vertices(*geom, m, flipped, perm)
            img = warp_image(img[None].astype(jnp.float32), m[None], hw)[0]
            img = photometric(img, self.config, k)
            if region is not None:
                region = warp_image(region[None, ..., None], m[None], hw, order=0)[0, ..., 0]
                if self.region_table is not None:
                    table = jnp.asarray(self.region_table, region.dtype)
                    known = (region >= 0) & (region < len(table))
                    swapped = table[jnp.clip(region, 0, len(table) - 1)]
                    region = jnp.where(flipped & known, swapped, region)
            return img, lm, vis, region, geom

        img, lm, vis, region, geometry = jax.vmap(one)(
            image, batch["landmarks"], batch["visible"], mask, geometry, matrices, flips, photo_keys
        )
        if "pixel_norm" in batch:
            norm = batch["pixel_norm"].astype(jnp.float32)
            img = (img - norm[:, None, None, :1]) / norm[:, None, None, 1:]
        out = dict(batch)
        out.update(image=img.astype(image.dtype), landmarks=lm, visible=vis)
        if mask is not None:
            out["region_mask"] = region
        if geometry is not None:
            out["item_vertices"], out["vertex_valid"] = geometry
        return out
