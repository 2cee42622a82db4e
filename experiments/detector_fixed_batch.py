"""How fast a detector config's best boxes find their items on one fixed batch.

Trains `pelvis_detector.py[:ARG]` on the first 4 training images of a 16-image
pelvis phantom without augmentation, the score threshold at 0 (every class
reports its best box), and prints every 50 steps the mean distance in input
pixels from each class's best box centre to its item's box centre, and the loss.

    python experiments/detector_fixed_batch.py [ARG] [FIELD=VALUE ...]
"""

import sys
import time

import numpy as np

from lmjax import configs, parallel
from lmjax.data.pipeline import make_pipeline
from lmjax.ops.detection_losses import batch_item_boxes
from lmjax.train import setup


def main(argv):
    arg = argv[0] if argv and "=" not in argv[0] else "tiny"
    extra = [a for a in argv if "=" in a]
    base = ["data.phantom_size=16", "train.batch_size=4", "model.score_threshold=0.0"]
    config = configs.load(
        f"experiments/configs/pelvis_detector.py:{arg}",
        [*base, "optim.warmup_steps=0", *extra],
    )
    train, _, _ = setup.load_splits(config)
    ls = train.landmark_set
    hw = tuple(config.data.input_size)
    mesh, state, train_step, eval_step, _ = setup.build(config, ls.num_landmarks, ls)
    host = next(iter(make_pipeline(train, input_size=hw, batch_size=4, augment=None, seed=0)))
    keys = setup.device_keys(setup.task_spec(config), geometry=True)
    batch = parallel.shard_batch({k: host[k] for k in keys}, mesh)
    boxes, valid = map(np.asarray, batch_item_boxes(batch, ls.item_kinds))
    gt = (boxes[..., :2] + boxes[..., 2:]) / 2

    def error(state):
        coords = np.asarray(eval_step(state, batch)["coords"])
        return float(np.mean(np.linalg.norm(coords - gt, axis=-1)[valid]))

    t0 = time.perf_counter()
    print(f"{arg} {' '.join(extra)}: step 0  centre error {error(state):.2f} px")
    for step in range(1, 301):
        state, metrics = train_step(state, batch)
        if step % 50 == 0:
            print(
                f"step {step}  centre error {error(state):.2f} px  "
                f"loss {float(metrics['loss']):.3f}  {time.perf_counter() - t0:.0f} s"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
