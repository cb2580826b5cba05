"""The data model: a `Scenario` is a sequence of `Task`s, each with tf.data pipelines.

Images stay in memory as uint8; every pipeline shuffles (train), batches, then
preprocesses whole batches at once (scale, normalize, flatten, permute) and prefetches,
so tasks that differ only by a pixel permutation share one array.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = ["SETTINGS", "Preprocessing", "ShuffleOrder", "Task", "Scenario", "make_dataset"]

from larq_engrams.arguments import SETTINGS  # noqa: F401  (re-exported: benchmarks.SETTINGS)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Batch preprocessing, applied in this order:

    ```
    x = images / value_range               # uint8 pixels / 255: in [0, 1] (the reference's scaling)
    x = (x - mean) / std                   # only if `normalize`
    x = reshape(x, (batch, -1))            # only if `flatten` (dense backbones)
    x = x[:, permutation]                  # only for permuted tasks
    ```
    """

    flatten: bool = True
    normalize: bool = False
    mean: float | tuple = 0.0
    std: float | tuple = 1.0
    value_range: float = 255.0  # 1.0 for inputs that are already floats (own data)

    def __call__(self, images, permutation=None):
        x = tf.cast(images, tf.float32)
        if self.value_range != 1.0:
            x = x / self.value_range
        if self.normalize:
            x = (x - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)
        if self.flatten or permutation is not None:
            x = tf.reshape(x, (tf.shape(x)[0], -1))
        if permutation is not None:
            x = tf.gather(x, permutation, axis=1)
        return x

    def output_shape(self, image_shape):
        return (int(np.prod(image_shape)),) if self.flatten else tuple(image_shape)


class ShuffleOrder(tf.Module):
    """The order in which a training pipeline visits its examples, as a function of
    how many passes were made over it:

    ```
    pass e (the e-th iteration of the dataset, e = 0, 1, ...) visits
        stateless_shuffle(range(n), seed=(seed, e))
    ```

    The pass count is a variable (`passes`), incremented when an iteration starts.
    Checkpointing it, as `ContinualTrainer` does, makes a run resumed in a new process
    see exactly the orders a run straight through would have seen (tf.data's own
    `reshuffle_each_iteration` keeps its position in a hidden resource that cannot be
    saved). Every replica and worker of a `tf.distribute` strategy draws the same order.
    """

    def __init__(self, seed, name=None):
        super().__init__(name=name)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"ShuffleOrder: `seed` must be an int, got {seed!r}.")
        self.seed = int(seed)
        self.passes = tf.Variable(0, dtype=tf.int64, trainable=False, name="passes")

    def indices(self, n):
        """A dataset of the indices 0..n-1 in the order of the current pass."""
        seed, passes = tf.constant(self.seed, tf.int64), self.passes

        def order(_):
            e = passes.assign_add(1) - 1
            return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed, e]))

        return tf.data.Dataset.from_tensors(0).map(order).unbatch()


def make_dataset(
    images,
    labels,
    batch_size,
    preprocessing,
    shuffle_seed=None,
    permutation=None,
    task_id=None,
):
    """A batched, in-memory, prefetched `tf.data.Dataset` of `(x, y)` or `((x, t), y)`.

    Args:
        images: uint8 array or tensor (N, ...). Pass one tensor to several datasets
            to share the memory (as permuted MNIST's tasks do).
        labels: int array (N,).
        shuffle_seed: None for a fixed order (test sets); for training sets a
            `ShuffleOrder`, reshuffling every pass. Give the same one to the `Task`
            (`train_order`) so that a trainer's checkpoints hold its position; an int
            seed makes one of its own, which resumed runs restart from pass 0.
        permutation: optional int array over the flattened pixels.
        task_id: if given, inputs are `(x, task_id)` (task-incremental settings).
    """
    # The arrays live in memory once, as tensors shared by every dataset built on them;
    # the pipeline shuffles and batches indices and gathers whole batches. (Measured: as
    # fast as slicing (image, label) tuples; the point is the sharing.)
    images = tf.convert_to_tensor(images)  # no copy when already a tensor
    labels = tf.convert_to_tensor(np.asarray(labels, np.int32))
    n = int(labels.shape[0])
    if shuffle_seed is None:
        ds = tf.data.Dataset.range(n)
    else:
        order = shuffle_seed if isinstance(shuffle_seed, ShuffleOrder) else ShuffleOrder(shuffle_seed)
        ds = order.indices(n)
    ds = ds.batch(batch_size)
    perm = None if permutation is None else tf.constant(permutation, tf.int32)

    def prepare(index):
        x = preprocessing(tf.gather(images, index), perm)
        y = tf.gather(labels, index)
        if task_id is not None:
            x = (x, tf.fill(tf.shape(y), tf.constant(task_id, tf.int32)))
        return x, y

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a scenario.

    Attributes:
        task_id: position in the sequence (0-based).
        classes: the original class labels present in this task.
        train, test: datasets of `(x, y)`, or `((x, task_id), y)` where the setting
            gives the task id (task-incremental).
        num_train, num_test: example counts.
        labels: the labels `y` takes in this task (== `classes` unless the setting
            relabels, as domain-incremental split benchmarks do).
        train_order: the `ShuffleOrder` of `train` (its pass count is checkpointed
            with a run), or None.
    """

    task_id: int
    classes: tuple
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_test: int
    labels: tuple
    train_order: ShuffleOrder = None


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A continual-learning benchmark: an ordered sequence of tasks.

    Attributes:
        name: e.g. "split_mnist".
        setting: "class", "domain" or "task" incremental (van de Ven & Tolias 2019).
        num_classes: the size of the shared output layer.
        input_shape: the shape of one preprocessed example.
        source: where the data came from (see `larq_engrams.benchmarks.sources`).
        tasks: the `Task`s in training order.
        details: scenario-specific facts (class order, permutation seed, ...), for results.
        image_shape: (H, W) or (H, W, C) where the inputs are images (flattened or not)
            whose pixels keep their places, so a feature map may use neighbourhoods (the
            router's `router_features="conv"`); None otherwise (permuted pixels, vectors).
    """

    name: str
    setting: str
    num_classes: int
    input_shape: tuple
    source: str
    tasks: Sequence
    details: dict = dataclasses.field(default_factory=dict)
    image_shape: tuple = None

    @property
    def num_tasks(self):
        return len(self.tasks)

    @property
    def provides_task_id(self):
        """Whether the task id is given to the model (at test time included)."""
        return self.setting == "task"

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self):
        return len(self.tasks)

    def __getitem__(self, index):
        return self.tasks[index]

    def data_state(self):
        """`{name: ShuffleOrder}` of the training pipelines: what a checkpoint must hold
        for a resumed run to see the same data orders."""
        return {f"task_{t.task_id}": t.train_order for t in self.tasks if t.train_order is not None}

    def take(self, num_tasks):
        """The same scenario restricted to its first `num_tasks` tasks (quick runs)."""
        if not 1 <= int(num_tasks) <= self.num_tasks:
            raise ValueError(f"`num_tasks` must be in [1, {self.num_tasks}], got {num_tasks!r}.")
        return dataclasses.replace(self, tasks=tuple(self.tasks[: int(num_tasks)]))

    def describe(self):
        """A JSON-serializable summary, for results files."""
        return {
            "name": self.name,
            "setting": self.setting,
            "num_tasks": self.num_tasks,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "source": self.source,
            "tasks": [
                {"task_id": t.task_id, "classes": list(t.classes), "num_train": t.num_train,
                 "num_test": t.num_test}
                for t in self.tasks
            ],
            **({"image_shape": list(self.image_shape)} if self.image_shape else {}),
            **{k: v for k, v in self.details.items()},
        }

