"""SAM decoder steps on cached embeddings: prompt sampling, box jitter, the train step,
and the predict step that turns masks into landmarks. Pure and jit-able.

Train step (per image): K items are sampled among the visible ones, each gets its
ground-truth box (the disc, stroke or polygon `item_masks` draws) jittered in
model pixels, the decoder runs on all K prompts in one call, and the configured
map losses (`task.losses`, e.g. squared Dice + BCE) compare mask token 0's
low-resolution logits with the item masks rendered at that resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lmjax.ops.item_masks import KIND_IDS, item_boxes_by_kind, item_masks
from lmjax.ops.loss_registry import get_loss, loss_kind
from lmjax.train.state import TrainState

LANDMARK = KIND_IDS["landmark"]
# Soft centroids read the mask within the prompt box grown by this factor.
SOFT_BOX_GROWTH = 1.5
FRAMES = ("lowres", "crop")
CROP_GROWTH, CROP_GRID = 1.5, 64


def check_losses(losses: Mapping[str, float]) -> None:
    """Raises ValueError unless every loss is a registered map loss."""
    if not losses:
        raise ValueError("task.losses is empty; SAM decoder training needs a mask loss")
    for name in losses:
        if loss_kind(name) != "map":
            raise ValueError(
                f"loss {name!r} is a {loss_kind(name)} loss; SAM decoder training "
                "compares masks, so it takes map losses (dice, bce, ...)"
            )


def sample_prompts(key: jax.Array, visible: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`(items [B, k], valid [B, k])`: k distinct items per image, visible ones first in
    random order; `valid` is False for the padding an image with fewer visible
    items needs. `k` must not exceed the item count."""
    noise = jax.random.uniform(key, visible.shape)
    _, idx = jax.lax.top_k(noise + visible.astype(jnp.float32), k)
    return idx, jnp.take_along_axis(visible, idx, axis=1)


def jitter_boxes(
    key: jax.Array,
    boxes: jax.Array,
    kind: jax.Array,
    *,
    jitter: jax.Array,
    shift: jax.Array,
    fraction: float,
) -> jax.Array:
    """Boxes `[B, K, 4]` grown and moved at random.

    Landmarks: each side moves out by U(0, jitter), then the box moves by
    U(-shift, shift) on each axis (`jitter`, `shift`: `[B]`, model pixels).
    Outlines and patches: each side moves out by U(0, fraction) of the box's size.
    """
    k_out, k_shift = jax.random.split(key)
    out = jax.random.uniform(k_out, boxes.shape) * jnp.array([-1.0, -1.0, 1.0, 1.0])
    move = jax.random.uniform(k_shift, (*boxes.shape[:-1], 2), minval=-1.0, maxval=1.0)
    move = jnp.concatenate([move, move], axis=-1) * shift[:, None, None]
    landmark = out * jitter[:, None, None] + move
    size = boxes[..., 2:] - boxes[..., :2]
    region = out * fraction * jnp.concatenate([size, size], axis=-1)
    return boxes + jnp.where((kind == LANDMARK)[..., None], landmark, region)


def mix_detector_boxes(key, boxes, true, detector, *, p: float, growth: float) -> jax.Array:
    """`boxes [..., 4]` with each replaced, with probability `p`, by the detector's box
    for the same item, where that one was found and its centre lies inside the
    `true` box grown `growth` times (about its centre)."""
    centre = lambda b: (b[..., :2] + b[..., 2:]) / 2
    reach = (true[..., 2:] - true[..., :2]) / 2 * growth
    near = jnp.all(jnp.abs(centre(detector) - centre(true)) <= reach, axis=-1)
    pick = jax.random.uniform(key, near.shape) < p
    use = near & pick & jnp.all(jnp.isfinite(detector), axis=-1)
    return jnp.where(use[..., None], jnp.nan_to_num(detector), boxes)


def gather_items(batch: Mapping[str, jax.Array], idx: jax.Array, kinds: jax.Array):
    """Geometry of items `idx [B, K]`: `(vertices, vertex_valid, kind)`."""
    v = jnp.take_along_axis(batch["vertices"], idx[..., None, None], axis=1)
    vv = jnp.take_along_axis(batch["vertex_valid"], idx[..., None], axis=1)
    return v, vv, kinds[idx]


def to_mask_frame(vertices: jax.Array, sizes: jax.Array, scale: float):
    """Model-input pixels -> pixels of masks `scale` times as fine (half-pixel centres)."""
    return (vertices + 0.5) * scale - 0.5, sizes * scale


def crop_windows(boxes: jax.Array, growth: float = CROP_GROWTH) -> jax.Array:
    """Square windows `(x0, y0, side)` `[..., 3]` centred on `boxes`, `growth` x their
    longer side (at least 4 model pixels)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    side = jnp.maximum(growth * jnp.max(boxes[..., 2:] - boxes[..., :2], axis=-1), 4.0)
    return jnp.concatenate([centre - side[..., None] / 2, side[..., None]], axis=-1)


def _bilinear_rows(coords: jax.Array, n: int) -> jax.Array:
    """Weights `[..., g, n]` that sample a length-n axis at `coords [..., g]` (clamped)."""
    u = jnp.clip(coords, 0.0, n - 1.0)
    i0 = jnp.clip(jnp.floor(u), 0, max(n - 2, 0)).astype(jnp.int32)
    f = u - i0
    return jax.nn.one_hot(i0, n) * (1 - f)[..., None] + jax.nn.one_hot(i0 + 1, n) * f[..., None]


def sample_windows(logits: jax.Array, windows: jax.Array, grid: int, scale: float) -> jax.Array:
    """Logits `[B, h, w, K]` resampled bilinearly on a `grid x grid` lattice over each
    prompt's window (model pixels; `scale` = mask pixels per model pixel): `[B, g, g, K]`."""
    t = (jnp.arange(grid, dtype=jnp.float32) + 0.5) / grid
    at = lambda origin: (origin[..., None] + t * windows[..., 2:3] + 0.5) * scale - 0.5
    wy = _bilinear_rows(at(windows[..., 1]), logits.shape[1])  # [B, K, g, h]
    wx = _bilinear_rows(at(windows[..., 0]), logits.shape[2])  # [B, K, g, w]
    return jnp.einsum("bkgh,bhwk,bkfw->bgfk", wy, logits.astype(jnp.float32), wx)


def to_window_frame(vertices: jax.Array, sizes: jax.Array, windows: jax.Array, grid: int):
    """Model pixels -> lattice pixels of each prompt's window (`[B, K, V, 2]`, sizes
    `[..., B, K]`)."""
    s = grid / windows[..., 2]
    v = (vertices - windows[..., None, :2]) * s[..., None, None] - 0.5
    return v, sizes * s


def decoder_loss(
    model,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    kinds: jax.Array,
    k: int,
    fraction: float,
    losses: Mapping[str, float],
    loss_kwargs: Mapping[str, Mapping],
    loss_frame: str = "lowres",
    crop_grid: int = CROP_GRID,
    jitter: bool = True,
    p_detector: float = 0.0,
    match_growth: float = 3.0,
):
    """`(loss, terms)`: the configured losses of K sampled, jittered prompts per image.

    `loss_frame` "lowres" scores the decoder's logits as they come (4x the token
    grid), against item masks drawn at that resolution; "crop" adds the same losses
    on a `crop_grid` lattice over a square window 1.5x each prompt's box (logits
    resampled, targets drawn there), so that a 2-mm landmark covers a good part of
    its window instead of a few low-resolution pixels. `dice_score` is then the
    windows'.

    With `batch["detector_boxes"]` (the cascade), each prompt is, with probability
    `p_detector`, the detector's box for its item instead of the jittered true one:
    the boxes the decoder meets at inference. Only detector boxes whose centre lies
    inside the true box grown `match_growth` times take part; a box on the wrong
    structure would teach the decoder to ignore its prompt.
    """
    k_items, k_jitter = jax.random.split(key)
    idx, valid = sample_prompts(k_items, batch["visible"], k)
    v, vv, kind = gather_items(batch, idx, kinds)
    radius, width = batch["radius"][:, None], batch["width"][:, None]
    boxes = item_boxes_by_kind(v, vv, kind, radius=radius, width=width, visible=valid)
    true = boxes
    if jitter:
        boxes = jitter_boxes(
            k_jitter, boxes, kind, jitter=batch["jitter"], shift=batch["shift"], fraction=fraction
        )
    if "detector_boxes" in batch and p_detector > 0:
        det = jnp.take_along_axis(batch["detector_boxes"], idx[..., None], axis=1)
        boxes = mix_detector_boxes(
            jax.random.fold_in(key, 2), boxes, true, det, p=p_detector, growth=match_growth
        )
    out = model.decode(batch["embeddings"], boxes, box_valid=valid)
    logits = jnp.moveaxis(out["masks"][..., 0], 1, -1)  # [B, h, w, K]
    logits = jnp.where(valid[:, None, None, :], logits, 0.0)  # NaN rows of padded prompts
    scale = logits.shape[1] / model.image_size[0]
    sizes = jnp.stack(jnp.broadcast_arrays(radius, width))
    if loss_frame not in FRAMES:
        raise ValueError(f"unknown sam.loss_frame {loss_frame!r}; known: {', '.join(FRAMES)}")

    def scored(logits, vertices, sizes):
        target = item_masks(
            vertices, vv, kind, shape=logits.shape[1:3], radius=sizes[0], width=sizes[1],
            visible=valid, soft=True,
        )  # fmt: skip
        terms = {
            n: jnp.mean(get_loss(n)(logits, target, visible=valid, **loss_kwargs.get(n, {})))
            for n in losses
        }
        hard = (logits > 0).astype(jnp.float32)
        inter = jnp.sum(hard * (target > 0.5), axis=(1, 2))
        total = jnp.sum(hard, axis=(1, 2)) + jnp.sum(target > 0.5, axis=(1, 2))
        dice = jnp.where(total > 0, 2 * inter / jnp.maximum(total, 1.0), 1.0)
        terms["dice_score"] = jnp.sum(jnp.where(valid, dice, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
        return terms

    # The whole low-res mask is always scored: without it nothing outside the windows
    # is ever told to stay empty.
    terms = scored(logits, *to_mask_frame(v, sizes, scale))
    if loss_frame == "crop":
        windows = crop_windows(jnp.where(valid[..., None], boxes, 0.0))
        window_logits = sample_windows(logits, windows, crop_grid, scale)
        crop = scored(window_logits, *to_window_frame(v, sizes, windows, crop_grid))
        terms = {n: terms[n] + crop[n] for n in losses} | {"dice_score": crop["dice_score"]}
    loss = sum(losses[name] * terms[name] for name in losses)
    return loss, terms


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    kinds,
    k: int,
    fraction: float,
    losses: Mapping[str, float],
    loss_kwargs: Mapping[str, Mapping] | None = None,
    loss_frame: str = "lowres",
    p_detector: float = 0.0,
    match_growth: float = 3.0,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted `train_step(state, batch) -> (state, metrics)` (state donated).

    `state.params` are the decoder's parameters, `state.model_state` the rest of a
    `PromptedDecoder`. `batch` is `PromptSet.batch`'s. Prompts and jitter are keyed
    by `(state.rng, state.step)`, so a resumed run repeats them. A non-finite loss
    or gradient skips the update and counts in `skipped`.
    """
    check_losses(losses)
    if loss_frame not in FRAMES:
        raise ValueError(f"unknown sam.loss_frame {loss_frame!r}; known: {', '.join(FRAMES)}")
    kinds = jnp.asarray(kinds, jnp.int32)
    kw = {n: dict(v) for n, v in (loss_kwargs or {}).items()}

    def step(state: TrainState, batch: dict):
        key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            return decoder_loss(
                model, batch, key, kinds=kinds, k=k, fraction=fraction, losses=losses,
                loss_kwargs=kw, loss_frame=loss_frame, p_detector=p_detector,
                match_growth=match_growth,
            )  # fmt: skip

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.lax.cond(
            ok, lambda: (params, opt_state), lambda: (state.params, state.opt_state)
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": 1.0 - ok}
        metrics |= {f"loss_{n}" if n != "dice_score" else n: v for n, v in terms.items()}
        metrics = {n: jnp.asarray(v, jnp.float32) for n, v in metrics.items()}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def _centroid(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(xy [..., 2], found [...])`: the weighted mean pixel centre of `[..., H, W]`."""
    h, w = weights.shape[-2:]
    total = jnp.sum(weights, axis=(-2, -1))
    x = jnp.sum(weights * jnp.arange(w, dtype=jnp.float32), axis=(-2, -1))
    y = jnp.sum(weights * jnp.arange(h, dtype=jnp.float32)[:, None], axis=(-2, -1))
    found = total > 0
    safe = jnp.where(found, total, 1.0)
    return jnp.stack([x / safe, y / safe], axis=-1), found


def locate(logits: jax.Array, boxes: jax.Array) -> dict[str, jax.Array]:
    """Landmarks from mask logits `[..., S, S]` in the model frame, prompted by `boxes`.

    `binary`: centroid of the mask (logit > 0), the paper's presumed reading.
    `soft`: the sigmoid-weighted centroid of the pixels inside the prompt box grown
    1.5x and by one pixel: sub-pixel where the mask's edge is soft, and a stray
    blob elsewhere cannot pull it. Both fall back to the box centre when no pixel there is above 0.5
    (`found_*` False). `box_centre`: the prompt box's centre, the paper's
    8-landmark pilot.
    """
    s = logits.shape[-1]
    prob = jax.nn.sigmoid(logits.astype(jnp.float32))
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    # One pixel more: a mask's anti-aliased rim lies up to a pixel outside its box.
    half = (boxes[..., 2:] - boxes[..., :2]) / 2 * SOFT_BOX_GROWTH + 1.0
    grid = jnp.arange(s, dtype=jnp.float32)
    in_x = jnp.abs(grid - centre[..., 0:1]) <= half[..., 0:1]
    in_y = jnp.abs(grid - centre[..., 1:2]) <= half[..., 1:2]
    inside = in_y[..., :, None] & in_x[..., None, :]
    binary, found_binary = _centroid((logits > 0).astype(jnp.float32))
    soft, _ = _centroid(jnp.where(inside, prob, 0.0))
    found_soft = jnp.any(inside & (prob > 0.5), axis=(-2, -1))
    return {
        "binary": jnp.where(found_binary[..., None], binary, centre),
        "soft": jnp.where(found_soft[..., None], soft, centre),
        "box_centre": centre,
        "found_binary": found_binary,
        "found_soft": found_soft,
    }


def make_predict_step(graphdef: nnx.GraphDef) -> Callable[..., dict[str, jax.Array]]:
    """The jitted `predict(state, embeddings [B, g, g, D], boxes [B, P, 4], valid [B, P])`.

    Returns low-resolution logits `lowres [B, P, h, w]`, the predicted IoU, and
    `locate`'s landmarks `[B, P, 2]` read from the logits upsampled to the model
    frame, all in model-input pixels.
    """

    def predict(state: TrainState, embeddings, boxes, valid):
        model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
        out = model.decode(embeddings, boxes, box_valid=valid)
        low = jnp.where(valid[..., None, None], out["masks"][..., 0], -1e4)
        s = model.image_size[0]
        up = jax.image.resize(low, (*low.shape[:2], s, s), "bilinear", antialias=False)
        return {"lowres": low, "iou": out["iou"][..., 0], **locate(up, boxes)}

    return jax.jit(predict)
