"""The task router's float32 statistics against a float64 computation.

`task_inference.InputDiscriminant` keeps its statistics in float32 (the within-group
scatter merged batch by batch and stored once as a symmetric matrix). This script
streams a data set's training split through it, class-IL task by task (5 tasks of 2
classes), and computes the same statistics in float64 with NumPy from the same random
features; then it reports:

- the covariance's error: max |Sigma_32 - Sigma_64| / max |Sigma_64| and the relative
  Frobenius error;
- the router alone on validation data (never the test split): the share of samples
  whose best (engram, class) group is their own class, with each version's discriminant
  (float32 statistics; float64 statistics, float64 solve), and how often the two agree;
- the bytes the router's variables hold.

    python experiments/router_statistics.py --dataset=fashion_mnist

Writes `results/router_statistics/<dataset>.json` and `.md`.
"""
import json
import os
import sys

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np
import tensorflow as tf

from larq_engrams import benchmarks
from larq_engrams.task_inference import DEFAULT_FEATURES, DEFAULT_SHRINKAGE, InputDiscriminant, unpack_symmetric
from larq_engrams.training import write_atomically

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist"], "Data set (its training split).")
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_integer("features", DEFAULT_FEATURES, "M, the router's random features.", lower_bound=1)
flags.DEFINE_float("shrinkage", DEFAULT_SHRINKAGE, "lambda.")
flags.DEFINE_integer("batch_size", 1000, "Batch size of the streaming updates.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the projection and the validation split.")
flags.DEFINE_string("outdir", "results/router_statistics", "Where the report goes.")


def _float64_discriminant(features, tasks, labels, shrinkage, num_tasks, num_classes):
    """Means, covariance and (kernel, bias) of the discriminant, all in float64."""
    groups = tasks * num_classes + labels
    count = np.bincount(groups, minlength=num_tasks * num_classes).astype(np.float64)
    sums = np.zeros((num_tasks * num_classes, features.shape[1]))
    np.add.at(sums, groups, features)
    means = sums / np.maximum(count, 1)[:, None]
    scatter = np.zeros((features.shape[1],) * 2)
    for start in range(0, len(features), 5000):  # the residuals, in float64, a block at a time
        resid = features[start:start + 5000] - means[groups[start:start + 5000]]
        scatter += resid.T @ resid
    covariance = scatter / count.sum()
    m = covariance.shape[0]
    shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / m * np.eye(m)
    kernel = np.linalg.solve(shrunk, means.T).T
    bias = np.where(count > 0, -0.5 * np.sum(kernel * means, 1), -1e9)
    return covariance, kernel, bias


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    arrays = benchmarks.hold_out_validation(benchmarks.load_arrays(FLAGS.dataset, FLAGS.source), 0.1, FLAGS.seed)
    x = arrays.x_train.reshape(len(arrays.x_train), -1).astype(np.float32) / 255.0
    y = arrays.y_train.astype(np.int64)
    x_val = arrays.x_test.reshape(len(arrays.x_test), -1).astype(np.float32) / 255.0
    y_val = arrays.y_test.astype(np.int64)
    num_tasks, num_classes = 5, 10
    task = y // 2  # class-IL, classes (0, 1), (2, 3), ...: task t holds classes 2t, 2t + 1
    router = InputDiscriminant(num_tasks, num_classes, FLAGS.features, FLAGS.shrinkage, seed=FLAGS.seed)
    router.build((None, x.shape[1]))
    for t in range(num_tasks):  # task by task, as in training
        xt, yt = x[task == t], y[task == t]
        for start in range(0, len(xt), FLAGS.batch_size):
            router.observe(xt[start:start + FLAGS.batch_size], yt[start:start + FLAGS.batch_size], t)
    router.refresh()
    total = float(tf.reduce_sum(router.counts))
    cov32 = unpack_symmetric(router.scatter, router.num_features).numpy().astype(np.float64) / total

    projection = router.projection().numpy().astype(np.float64)
    features = np.maximum(x.astype(np.float64) @ projection, 0)
    cov64, kernel64, bias64 = _float64_discriminant(features, task, y, FLAGS.shrinkage, num_tasks, num_classes)
    del features
    error = np.abs(cov32 - cov64)

    f_val = np.maximum(x_val.astype(np.float64) @ projection, 0)
    best64 = (f_val @ kernel64.T + bias64).argmax(1) % num_classes
    scores32 = router.group_scores(x_val).numpy().reshape(len(x_val), -1)
    best32 = scores32.argmax(1) % num_classes
    held = sum(int(tf.size(v)) * v.dtype.size for v in router.weights)
    report = {
        "dataset": FLAGS.dataset, "source": arrays.source, "training_examples": int(len(y)),
        "features": router.num_features, "shrinkage": FLAGS.shrinkage, "batch_size": FLAGS.batch_size,
        "covariance_max_error_relative_to_max": float(error.max() / np.abs(cov64).max()),
        "covariance_frobenius_error_relative": float(np.linalg.norm(cov32 - cov64) / np.linalg.norm(cov64)),
        "validation_accuracy_float32": float(np.mean(best32 == y_val)),
        "validation_accuracy_float64": float(np.mean(best64 == y_val)),
        "validation_agreement": float(np.mean(best32 == best64)),
        "router_bytes_held": held, "router_mib_held": held / 2 ** 20,
        "memory_bits": dict(zip(("inference", "statistics"), router.memory_bits())),
        "command": " ".join(sys.argv),
    }
    os.makedirs(FLAGS.outdir, exist_ok=True)
    base = os.path.join(FLAGS.outdir, FLAGS.dataset)
    write_atomically(base + ".json", json.dumps(report, indent=1))
    lines = [
        f"Router statistics, float32 (as held) against float64: {FLAGS.dataset} ({arrays.source}), "
        f"{len(y):,} training examples in 5 class-IL tasks, M = {router.num_features}, "
        f"lambda = {FLAGS.shrinkage:g}, batches of {FLAGS.batch_size}.",
        "",
        "| quantity | value |", "|---|---|",
        f"| covariance: max error / max entry | {report['covariance_max_error_relative_to_max']:.1e} |",
        f"| covariance: relative Frobenius error | {report['covariance_frobenius_error_relative']:.1e} |",
        f"| router alone, validation class-IL, float32 statistics | {100 * report['validation_accuracy_float32']:.2f} % |",
        f"| router alone, validation class-IL, float64 statistics | {100 * report['validation_accuracy_float64']:.2f} % |",
        f"| same prediction | {100 * report['validation_agreement']:.2f} % |",
        f"| variables held | {report['router_mib_held']:.2f} MiB |",
        "", f"Command: `{report['command']}`",
    ]
    write_atomically(base + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
