"""CORe50 New Instances (NI, domain-incremental): the same 50 objects in 8 training
sessions (one task each) and one common test set of the 3 test sessions (Lomonaco &
Maltoni 2017), read from the official files in a local folder."""
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_positive_int
from larq_engrams.benchmarks.formats import read_core50
from larq_engrams.benchmarks.scenario import (
    Preprocessing,
    Scenario,
    ShuffleOrder,
    Task,
    make_dataset,
)

__all__ = ["core50_ni"]


def _gather_resized(images, indices, image_size, chunk=2048):
    """images[indices], resized to image_size x image_size (area averaging), as uint8."""
    out = []
    for start in range(0, len(indices), chunk):
        batch = np.asarray(images[np.sort(indices[start:start + chunk])])
        order = np.argsort(np.argsort(indices[start:start + chunk]))
        batch = batch[order]
        if image_size is not None and batch.shape[1:3] != (image_size, image_size):
            batch = tf.image.resize(batch, (image_size, image_size), method="area").numpy()
            batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
        out.append(batch)
    return np.concatenate(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)


def core50_ni(data_dir, labels="object", run=0, image_size=32, batch_size=100,
              eval_batch_size=1000, flatten=True, normalize=False):
    """CORe50-NI from `data_dir` (holding core50_imgs.npz or core50_imgs.bin, LUP.pkl,
    labels.pkl; nothing is downloaded).

    Args:
        labels: "object" (50 classes) or "category" (10 classes, object // 5).
        run: which of the official runs (session orders) to use.
        image_size: images are resized from 128x128 to this (None keeps 128); a
            dense backbone sees image_size^2 * 3 inputs.
    """
    if labels not in ("object", "category"):
        raise ValueError(f"`labels` must be 'object' or 'category', got {labels!r}.")
    batch_size = check_positive_int("batch_size", batch_size, owner="core50_ni")
    eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size, owner="core50_ni")
    images, sessions, (test_idx, test_y) = read_core50(data_dir, "ni", run)
    to_label = (lambda y: y // 5) if labels == "category" else (lambda y: y)
    prep = Preprocessing(flatten=flatten, normalize=normalize, mean=0.5, std=0.25)
    x_test = _gather_resized(images, test_idx, image_size)
    test = make_dataset(x_test, to_label(test_y), eval_batch_size, prep)
    tasks = []
    for t, (idx, y) in enumerate(sessions):
        y = to_label(y)
        order = ShuffleOrder(run * 1000 + t)
        tasks.append(
            Task(
                task_id=t,
                classes=tuple(int(c) for c in np.unique(y)),
                train=make_dataset(_gather_resized(images, idx, image_size), y, batch_size, prep,
                                   shuffle_seed=order),
                test=test,
                num_train=len(y),
                num_test=len(test_y),
                labels=tuple(int(c) for c in np.unique(y)),
                train_order=order,
            )
        )
    return Scenario(
        name="core50_ni",
        setting="domain",
        num_classes=50 if labels == "object" else 10,
        input_shape=prep.output_shape(x_test.shape[1:]),
        source=f"local:{data_dir}",
        tasks=tasks,
        details={"batch_size": batch_size, "run": run, "labels": labels, "image_size": image_size},
        image_shape=tuple(int(v) for v in x_test.shape[1:]),
    )
