"""The detector -> SAM cascade: detection metrics, box frames, prompt mixing, mask
shapes, and a tiny cascade trained, evaluated and predicted through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from skimage import draw

from lmjax.data import affine
from lmjax.data.mask_shapes import outline_polyline, patch_polygon
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.detection_metrics import box_iou, detection_report, true_boxes
from lmjax.train import sam_steps

CONFIG = "experiments/configs/cascade_pelvis.py"
SMALL = [
    "data.input_size=(64, 64)",
    "data.phantom_size=12",
    "train.steps=4",
    "train.eval_every=2",
    "train.log_every=2",
    "train.batch_size=2",
    "train.tensorboard=False",
]
# The joint-step tests' SAM: one two-way attention layer instead of the tiny SAM's
# two (its joint step and gradient are among the file's costliest compiles). The
# CLI cascade keeps the tiny decoder: its traced outlines and patches need masks
# that 4 steps of a shallower decoder may leave empty.
SAM_SMALL = ["model.decoder_depth=1"]


def _landmarks(points, spacing=(0.5, 0.5)):
    """A record of landmarks (NaN rows absent) with square 0.5-mm pixels."""
    return Record(np.zeros((50, 50), np.float32), np.asarray(points, np.float32), None, spacing)


def test_detection_report_counts_hits_misses_and_false_positives():
    ls = LandmarkSet("t", ("a", "b", "c"), radius_mm=2.0)  # boxes 8 px wide at 0.5 mm/px
    nan = [np.nan, np.nan]
    ds = Dataset(ls, [_landmarks([[10, 10], [30, 30], nan]), _landmarks([[20, 20], nan, [5, 5]])])
    truth = true_boxes(ds)
    np.testing.assert_allclose(truth[0, 0], [6, 6, 14, 14])
    assert np.isnan(truth[0, 2]).all()
    boxes = truth.copy()
    boxes[0, 1] = [30, 26, 38, 34]  # found 4 px (2 mm) right: IoU 4 * 8 / (2 * 64 - 32)
    boxes[0, 2] = [0, 0, 4, 4]  # absent but found: a false positive
    boxes[1, 2] = np.nan  # visible but missed
    report = detection_report(boxes, np.isfinite(boxes).all(-1), ds)
    a = report["all"]
    assert (a["visible"], a["detected"], a["false_positives"]) == (4, 3, 1)
    assert a["detection_rate"] == pytest.approx(0.75)
    np.testing.assert_allclose(a["box_iou_mean"], (1 + 1 + 32 / 96) / 3)
    assert a["centre_error"]["missed"] == 1 and a["centre_error"]["n"] == 3
    np.testing.assert_allclose(a["centre_error"]["mre"], 2.0 / 3)
    # SDR at 2 mm: 3 of 3 identified, 3 of 4 with the miss counted as a failure
    assert a["sdr_identified"]["2"] == 100.0
    assert a["sdr_with_misses"]["2"] == 75.0
    assert report["per_item"]["c"]["detection_rate"] == 0.0


def test_box_iou_matches_a_reference_and_keeps_nan():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [np.nan, 0, 1, 1]])
    b = np.array([[1, 1, 3, 3], [2, 2, 3, 3], [0, 0, 1, 1]])
    got = box_iou(a, b)
    np.testing.assert_allclose(got[:2], [1 / 7, 0.0])
    assert np.isnan(got[2])


def test_boxes_through_an_affine_are_the_mapped_corners():
    m = affine.letterbox((300, 200), (64, 64))
    boxes = np.array([[10.0, 20.0, 50.0, 80.0], [np.nan] * 4])
    got = affine.apply_boxes(boxes, m)
    corners = affine.apply(np.array([[10.0, 20.0], [50.0, 80.0]]), m)
    np.testing.assert_allclose(got[0], corners.ravel(), rtol=1e-6)
    assert np.isnan(got[1]).all()
    back = affine.apply_boxes(got, np.linalg.inv(m))
    np.testing.assert_allclose(back[0], boxes[0], rtol=1e-5)


def test_detector_boxes_replace_prompts_only_near_their_item():
    true = jnp.array([[[10.0, 10.0, 14.0, 14.0]] * 3])
    det = jnp.array([[[11.0, 11.0, 15.0, 15.0], [40.0, 40.0, 44.0, 44.0], [jnp.nan] * 4]])
    jittered = true + 0.5
    key = jax.random.key(0)
    got = sam_steps.mix_detector_boxes(key, jittered, true, det, p=1.0, growth=3.0)
    np.testing.assert_array_equal(got[0, 0], det[0, 0])  # near: the detector's
    np.testing.assert_array_equal(got[0, 1:], jittered[0, 1:])  # far and missing: kept
    none = sam_steps.mix_detector_boxes(key, jittered, true, det, p=0.0, growth=3.0)
    np.testing.assert_array_equal(none, jittered)


def test_mask_shapes_give_back_the_drawn_polygon_and_stroke():
    mask = np.zeros((60, 80), bool)
    ys, xs = draw.polygon([10, 10, 40, 50], [10, 60, 70, 20], mask.shape)
    mask[ys, xs] = True
    poly = patch_polygon(mask)
    back = np.zeros_like(mask)
    ys, xs = draw.polygon(poly[:, 1], poly[:, 0], mask.shape)
    back[ys, xs] = True
    assert (mask & back).sum() / (mask | back).sum() > 0.95
    stroke = np.zeros((60, 80), bool)
    ys, xs = draw.line(30, 10, 30, 70)
    for d in (-1, 0, 1):
        stroke[ys + d, xs] = True
    line = outline_polyline(stroke)
    ends = sorted(line[[0, -1], 0].tolist())
    assert ends[0] <= 12 and ends[1] >= 68 and np.allclose(line[:, 1], 30, atol=1)
    assert patch_polygon(np.zeros((5, 5), bool)).shape == (0, 2)


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    """A tiny detector (4 steps) and a cascade on it (4 decoder steps), via the CLI."""
    from lmjax import parallel
    from tests.test_cli import run_cli

    # The training loop sets a global mesh, and eager parameter initialisers compiled
    # outside it compile again inside it: set it first, so that every model built in
    # this process (the joint stage's, the benchmark's) reuses the first build's.
    jax.set_mesh(parallel.make_mesh())
    root = tmp_path_factory.mktemp("cascade")
    det, wd = root / "detector", root / "cascade"
    det_args = [
        "train", f"--config={CONFIG}:tiny.detector", f"--workdir={det}",
        *(f"--config.{o}" for o in SMALL),
        "--config.task.loss_kwargs={'yolo': {'min_box_side': 8.0}}",
    ]  # fmt: skip
    cas_args = [
        "train", f"--config={CONFIG}", f"--workdir={wd}", f"--config.cascade.detector={det}",
        "--config.sam.prompts_per_image=6", "--config.cascade.joint_steps=2",
        *(f"--config.{o}" for o in SMALL),
    ]  # fmt: skip
    return root, det, wd, det_args, cas_args, run_cli


def test_a_cascade_trains_evaluates_and_predicts(cascade_run, capsys, monkeypatch, tmp_path):
    root, det, wd, det_args, cas_args, run_cli = cascade_run
    code, out, err = run_cli(capsys, *det_args)
    assert code == 0, err
    assert "detector landmarks detected" in out  # the detector's own report has detection
    code, out, err = run_cli(capsys, *cas_args)
    assert code == 0, err
    assert "detector on train:" in out and "val (detector boxes)" in out
    report = json.loads((wd / "eval.json").read_text())
    assert report["task"] == "cascade"
    assert set(report) >= {"detection", "detector", "jittered", "oracle"}
    assert set(report["detection"]) >= {"all", "landmarks", "outlines", "patches", "per_item"}
    assert "sdr_with_misses" in report["oracle"]["landmarks"]["soft"]
    assert json.loads((wd / "cascade.json").read_text())["detector"] == str(det.resolve())
    # the joint stage wrote a second cascade (both models after joint steps) that evaluates
    assert "joint step 2/2" in out
    joint = wd / "joint"
    assert json.loads((joint / "cascade.json").read_text())["detector"].endswith("joint/detector")
    code, out, err = run_cli(capsys, "evaluate", f"--workdir={joint}", "--split=val")
    assert code == 0 and "detector landmarks detected" in out, err

    # With the detector replaced by ground truth, the cascade is the oracle path.
    from lmjax.train import cascade_predict, sam_data, sam_eval
    from lmjax.train.restore import read_config
    from lmjax.train.setup import load_splits

    config = read_config(wd)
    _, _, test = load_splits(config)
    truth = true_boxes(test)
    monkeypatch.setattr(
        "lmjax.train.detections.detect_dataset",
        lambda *a, **k: (truth, np.isfinite(truth).all(-1).astype(np.float32)),
    )
    predictor = cascade_predict.predictor(wd)
    coords, conf, regions = predictor(test)
    # The predictor's own SAM and decoder (the best checkpoint, as restore reads it),
    # prompted as evaluation prompts: a fresh cache folder, its weights id a label.
    cache = sam_data.embedding_cache(config, tmp_path, "oracle")
    pset = sam_data.prompt_set(test, config, cache, predictor.model, log=None)
    oracle = sam_eval.predict_images(
        predictor.predict, predictor.state, pset, chunk=config.sam.eval_prompts,
        prompts="oracle", fraction=0.0,
    )  # fmt: skip
    visible = np.stack([r.visible for r in test.records])
    np.testing.assert_allclose(coords[visible], oracle["coords"]["soft"][visible], atol=0.05)
    assert np.isnan(coords[~visible]).all() and (conf[~visible] == 0).all()
    kinds = [r["kind"] for img in regions for r in img]
    assert "outline" in kinds and "patch" in kinds

    # lmjax predict writes the regions into the JSON and LabelMe files
    from PIL import Image

    images = []
    for i, r in enumerate(test.records):  # the same two images (boxes still the truth)
        px = np.asarray(r.image, np.float32)
        px = (255 * (px - px.min()) / max(float(np.ptp(px)), 1e-6)).astype(np.uint8)
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(px.squeeze()).save(images[-1])
    code, out, err = run_cli(
        capsys, "predict", f"--workdir={wd}", f"--output_dir={tmp_path / 'out'}",
        *map(str, images),
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "img0.json").read_text())
    assert "regions" in doc and len(doc["landmarks"]) == len(predictor.landmark_set.names)
    lm = json.loads((tmp_path / "out" / "img0.labelme.json").read_text())
    types = {s["shape_type"] for s in lm["shapes"]}
    assert types <= {"point", "linestrip", "polygon"} and {"linestrip", "polygon"} & types

    # a detector whose classes are not the data's items: one line, exit 2
    monkeypatch.undo()
    # the whole-cascade benchmark prompts every item (score threshold 0)
    from lmjax.cascade_benchmark import benchmark_cascade, format_cascade_benchmark

    bench = benchmark_cascade(config, steps=2, warmup=1)
    assert bench["images"] == 2 and bench["images_per_s"] > 0
    assert bench["prompts_per_image"] == len(predictor.landmark_set.names)
    assert set(bench["stages_s_per_image"]) == {"detector", "encoder", "decoder"}
    assert "images/s" in format_cascade_benchmark(bench)
    saved = (det / "landmarks.json").read_text()
    renamed = json.loads(saved)
    renamed["names"][0] = "not_an_item"
    (det / "landmarks.json").write_text(json.dumps(renamed))
    try:
        code, _, err = run_cli(capsys, "evaluate", f"--workdir={wd}")
    finally:
        (det / "landmarks.json").write_text(saved)
    assert code == 2 and "are not the data's" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "override, message",
    [
        ("cascade.detector=", "cascade.detector is empty"),
        ("cascade.p_detector=1.5", "cascade.p_detector must be in [0, 1]"),
        ("cascade.landmark_reading=mean", "cascade.landmark_reading must be one of"),
        ("cascade.detector=experiments/configs/pelvis_sam_decoder.py", "not a detector"),
    ],
)
def test_bad_cascade_configs_fail_in_one_line(tmp_path, capsys, override, message):
    from tests.test_cli import run_cli

    code, _, err = run_cli(
        capsys, "train", f"--config={CONFIG}", f"--workdir={tmp_path}", f"--config.{override}"
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def joint_parts(tmp_path_factory):
    """A random heatmap detector (every class found) and a tiny SAM decoder on the
    same two phantom images, with one joint batch."""
    from lmjax import configs
    from lmjax.evaluate import eval_batches
    from lmjax.train import sam_data
    from lmjax.train.setup import build_state, load_splits

    small = ["data.input_size=(64, 64)", "data.phantom_size=12", "train.batch_size=2"]
    det_config = configs.load(
        f"{CONFIG}:heatmap.detector",
        [
            *small,
            "model.score_threshold=0.0",
            "model.backbone_options={'features': 4, 'num_levels': 2, 'upsample': 'resize'}",
        ],
    )
    sam_config = configs.load(CONFIG, [*small, *SAM_SMALL, "sam.prompts_per_image=6"])
    train, _, _ = load_splits(sam_config)
    lset = train.landmark_set
    det = build_state(det_config, lset.num_landmarks, lset, pretrained=False, log=lambda _: None)
    batch = next(iter(eval_batches(train, (64, 64), 2, fit="resize", normalize="zscore")))
    model, weights_id = sam_data.build_sam(sam_config, log=lambda _: None)
    cache = sam_data.embedding_cache(sam_config, tmp_path_factory.mktemp("joint"), weights_id)
    pset = sam_data.prompt_set(train, sam_config, cache, model, log=None)
    tx = sam_data.decoder_optimizer(sam_config)
    dec_graphdef, dec_state = sam_data.decoder_state(sam_config, model, tx)
    idx = np.asarray(batch["index"][:2])
    joint = {k: np.asarray(v)[:2] for k, v in batch.items() if k != "valid"}
    joint |= {f"sam_{k}": v for k, v in pset.batch(idx).items()}
    joint["det_to_sam"] = np.stack(
        [np.linalg.inv(pset.to_original[i]) @ batch["to_original"][j] for j, i in enumerate(idx)]
    ).astype(np.float32)
    seg = dict(
        kinds=jnp.asarray(sam_eval_kinds(pset)), k=6, fraction=0.1,
        losses={"dice": 1.0, "bce": 1.0}, loss_kwargs={"dice": {"squared": True}},
    )  # fmt: skip
    return det, (dec_graphdef, dec_state, tx), joint, seg


def sam_eval_kinds(pset):
    from lmjax.ops.item_masks import kind_ids

    return kind_ids(pset.kinds)


def test_segmentation_error_reaches_the_detector_through_its_boxes(joint_parts):
    from lmjax.train.cascade_joint import boxes_through, joint_loss

    det, (dec_graphdef, dec_state, _), batch, seg = joint_parts
    m = jnp.asarray(batch["det_to_sam"])
    boxes = jnp.array([[[1.0, 2.0, 5.0, 9.0]], [[0.0, 0.0, 3.0, 3.0]]])
    expected = np.stack([affine.apply_boxes(b, mi) for b, mi in zip(boxes, m, strict=True)])
    np.testing.assert_allclose(
        boxes_through(boxes, m), expected,
        rtol=1e-5, atol=1e-4,
    )  # fmt: skip

    @jax.jit
    def seg_grad_norm(params, growth):
        fn = lambda p: joint_loss(
            p, dec_state.params, det.state, dec_state, batch, jax.random.key(0),
            det_graphdef=det.graphdef, dec_graphdef=dec_graphdef, task=det.task, lam=1.0,
            seg={**seg, "match_growth": growth},
        )[1]["segmentation"]  # fmt: skip
        return optax.tree.norm(jax.grad(fn)(params))

    seg_grad = lambda growth: float(seg_grad_norm(det.state.params, jnp.float32(growth)))

    # boxes used as prompts: the mask loss has a gradient on the detector's weights;
    # none used (no box near its item): exactly none
    assert seg_grad(1e6) > 0
    assert seg_grad(1e-6) == 0


def test_the_joint_step_lowers_the_combined_loss(joint_parts):
    from lmjax.train.cascade_joint import make_joint_step

    det, (dec_graphdef, dec_state, tx), batch, seg = joint_parts
    step = make_joint_step(
        det.graphdef, optax.adam(1e-3), dec_graphdef, tx, task=det.task, lam=1.0,
        match_growth=1e6, **seg,
    )  # fmt: skip
    det_state = det.state.replace(opt_state=optax.adam(1e-3).init(det.state.params))
    det_state, dec_state = jax.tree.map(jnp.copy, (det_state, dec_state))
    losses = []
    for _ in range(15):
        det_state, dec_state, metrics = step(det_state, dec_state, batch)
        assert metrics["skipped"] == 0 and metrics["detector_grad_norm"] > 0
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_detector_boxes_are_clipped_to_the_image_and_dropped_outside_it():
    from lmjax.train.detections import _inside

    boxes = np.array([[-5.0, 10, 20, 30], [70, 70, 90, 90], [10, 10, 12, 12]])
    got = _inside(boxes, 64, 64)
    np.testing.assert_array_equal(got[0], [0, 10, 20, 30])
    assert np.isnan(got[1]).all()  # wholly outside: not found
    np.testing.assert_array_equal(got[2], boxes[2])
