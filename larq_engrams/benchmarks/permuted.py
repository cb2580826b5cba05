"""Permuted MNIST (domain-incremental): task k sees MNIST with a fixed pixel permutation."""
import numpy as np
import tensorflow as tf

from larq_engrams.benchmarks.scenario import (
    Preprocessing,
    Scenario,
    ShuffleOrder,
    Task,
    check_batch_size,
    make_dataset,
)
from larq_engrams.benchmarks.sources import load_arrays, select_evaluation

__all__ = ["permuted_mnist", "pixel_permutations"]


def pixel_permutations(num_tasks, num_pixels=784, seed=0, first_task_unpermuted=False):
    """The seeded pixel permutations of the tasks (identity first if asked)."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(num_pixels) for _ in range(num_tasks)]
    if first_task_unpermuted:
        perms[0] = np.arange(num_pixels)
    return perms


def permuted_mnist(
    num_tasks=10,
    first_task_unpermuted=False,
    seed=0,
    source="auto",
    data_dir=None,
    batch_size=100,
    eval_batch_size=1000,
    normalize=False,
    evaluate_on="test",
    validation_fraction=0.1,
):
    """Permuted MNIST: `num_tasks` tasks, each all 10 digits under its own permutation
    of the 784 pixels, fixed by `seed`. One shared 10-way output (domain-incremental).

    The permutation is applied per batch inside the pipeline (`tf.gather`), so all tasks
    share one in-memory uint8 array. `evaluate_on="validation"`: evaluate on a held-out
    part of the training data, never on the test split (see `split_mnist`).
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"`num_tasks` must be a positive int, got {num_tasks!r}.")
    batch_size, eval_batch_size = check_batch_size(batch_size), check_batch_size(eval_batch_size)
    data = select_evaluation(load_arrays("mnist", source, data_dir), evaluate_on, validation_fraction, seed)
    prep = Preprocessing(flatten=True, normalize=normalize, mean=0.1307, std=0.3081)
    perms = pixel_permutations(num_tasks, data.x_train[0].size, seed, first_task_unpermuted)
    # One copy of the images in memory, shared by every task's pipelines.
    x_train, x_test = tf.constant(data.x_train), tf.constant(data.x_test)
    tasks = []
    for t, perm in enumerate(perms):
        identity = first_task_unpermuted and t == 0
        perm = None if identity else perm
        order = ShuffleOrder(seed * 1000 + t)
        tasks.append(
            Task(
                task_id=t,
                classes=tuple(range(10)),
                train=make_dataset(x_train, data.y_train, batch_size, prep, shuffle_seed=order, permutation=perm),
                test=make_dataset(x_test, data.y_test, eval_batch_size, prep, permutation=perm),
                num_train=len(data.y_train),
                num_test=len(data.y_test),
                labels=tuple(range(10)),
                train_order=order,
            )
        )
    return Scenario(
        name="permuted_mnist",
        setting="domain",
        num_classes=10,
        input_shape=prep.output_shape(data.x_train.shape[1:]),
        source=data.source,
        tasks=tasks,
        details={"batch_size": batch_size, "seed": seed, "first_task_unpermuted": bool(first_task_unpermuted),
                 "normalize": bool(normalize), "evaluated_on": evaluate_on},
    )
