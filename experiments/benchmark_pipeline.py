"""Input-pipeline benchmark: is tf.data ever the bottleneck?

Prints, in one run on this machine: the time to build `permuted_mnist(num_tasks)`, the
time to iterate one epoch of every task through its tf.data pipeline (consumed in the
graph, as training does, and from Python), the time to produce the same batches
(shuffle, scale, flatten, permute) from NumPy arrays, their ratios, and the ratio of
the pipeline's time per batch to one engram_bnn training step.

    python experiments/benchmark_pipeline.py --num_tasks=10 --source=auto
"""
import time

from absl import flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np
import tensorflow as tf

import larq_engrams
from larq_engrams import benchmarks
from larq_engrams.training import train_step

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_tasks", 10, "Number of permuted MNIST tasks.")
flags.DEFINE_integer("batch_size", 100, "Training batch size.")
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_string("data_dir", None, "TFDS data dir, or the IDX folder for --source=local.")
flags.DEFINE_integer("repeats", 3, "Epochs timed per path; the best is reported.")
flags.DEFINE_list("hidden", ["2048", "2048"], "Hidden widths of the engram_bnn whose "
                  "training step the pipeline is compared with.")


def train_step_seconds(scenario, batches=30):
    """Seconds per training step of engram_bnn + MetaplasticAdam on in-memory batches."""
    model = larq_engrams.engram_bnn(scenario.input_shape, 10, hidden=[int(h) for h in FLAGS.hidden])
    model.begin_task(0)
    optimizer = larq_engrams.MetaplasticAdam(0.005)

    @tf.function
    def step(x, y):
        return train_step(model, optimizer, x, y)[0]  # the trainer's own step

    x, y = next(iter(scenario[0].train))
    step(x, y)
    t0 = time.perf_counter()
    for _ in range(batches):
        step(x, y)
    float(step(x, y))
    return (time.perf_counter() - t0) / (batches + 1)


def numpy_epoch(x_uint8, y, perm, batch_size, rng):
    """The same work as the pipeline, from NumPy: shuffle, slice, scale, flatten, permute."""
    flat = x_uint8.reshape(len(x_uint8), -1)
    order = rng.permutation(len(y))
    checksum = 0.0
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        xb = flat[idx][:, perm].astype(np.float32) / 255.0
        checksum += float(xb[0, 0]) + float(y[idx][0])
    return checksum


def main(argv):
    del argv
    start = time.perf_counter()
    scenario = benchmarks.permuted_mnist(
        FLAGS.num_tasks, source=FLAGS.source, data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size
    )
    build_s = time.perf_counter() - start
    examples = sum(t.num_train for t in scenario)

    def tfdata_epoch_python():
        """Iterating batches from Python (eager), as a hand-written loop does."""
        n = 0
        for task in scenario:
            for x, _ in task.train:
                n += int(x.shape[0])
        assert n == examples

    def tfdata_epoch_graph():
        """Consuming batches inside the graph, as model.fit and ContinualTrainer do."""
        n = 0
        for task in scenario:
            n += int(task.train.reduce(0, lambda acc, batch: acc + tf.shape(batch[0])[0]))
        assert n == examples

    tfdata_epoch_python()  # warm-up: traces the map functions
    tfdata_epoch_graph()

    arrays = benchmarks.load_arrays("mnist", FLAGS.source, FLAGS.data_dir)
    perms = benchmarks.pixel_permutations(FLAGS.num_tasks, seed=scenario.details["seed"])
    rng = np.random.default_rng(0)

    def best(fn):
        times = []
        for _ in range(FLAGS.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    py_s = best(tfdata_epoch_python)
    tf_s = best(tfdata_epoch_graph)
    np_s = best(lambda: [numpy_epoch(arrays.x_train, arrays.y_train, p, FLAGS.batch_size, rng)
                         for p in perms])
    step_s = train_step_seconds(scenario)
    batches = examples / FLAGS.batch_size
    print(f"source: {scenario.source}")
    print(f"permuted_mnist({FLAGS.num_tasks}): {examples} training examples, batch {FLAGS.batch_size}")
    print(f"build time:                 {build_s:8.3f} s")
    print(f"one epoch, tf.data in graph:  {tf_s:8.3f} s  ({examples / tf_s:,.0f} examples/s)")
    print(f"one epoch, tf.data from Python: {py_s:6.3f} s  ({examples / py_s:,.0f} examples/s)")
    print(f"one epoch, NumPy (same work): {np_s:8.3f} s  ({examples / np_s:,.0f} examples/s)")
    print(f"ratio tf.data in graph / NumPy:   {tf_s / np_s:6.2f}")
    print(f"ratio tf.data from Python / NumPy: {py_s / np_s:5.2f}")
    print(f"engram_bnn {'-'.join(FLAGS.hidden)} training step (batch {FLAGS.batch_size}): "
          f"{step_s * 1000:.2f} ms")
    print(f"pipeline time per batch / training step time: {tf_s / batches / step_s:6.3f}  "
          f"(< 1: the pipeline, prefetched in parallel, is not the bottleneck)")


if __name__ == "__main__":
    cli.run(main)
