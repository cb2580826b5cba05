"""Scenarios from a user's own arrays (as Avalanche's `nc_benchmark`, `ni_benchmark`
and `tensors_benchmark`); the named benchmarks are these applied to their datasets.

```python
from larq_engrams import benchmarks
s = benchmarks.split_by_classes(x_train, y_train, x_test, y_test, setting="class", classes_per_task=2)
s = benchmarks.permuted_tasks(x_train, y_train, x_test, y_test, num_tasks=10)
s = benchmarks.tasks_from_arrays([(x0, y0, x0_test, y0_test), (x1, y1, x1_test, y1_test)], setting="domain")
```

Images: any shape (N, ...). uint8 arrays are scaled by 1/255 (pixels in [0, 1], as
the named benchmarks); other dtypes are used as they are (cast to float32). Labels:
ints 0..C-1. `normalization=(mean, std)` standardizes after that scaling. With
`evaluate_on="validation"` the test arrays may be None: a seeded, class-stratified
`validation_fraction` of the training arrays is evaluated on instead
(`hold_out_validation`), and the test arrays are never put into a pipeline.
"""
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_positive_int, check_setting
from larq_engrams.benchmarks.scenario import Preprocessing, Scenario, ShuffleOrder, Task, make_dataset
from larq_engrams.benchmarks.sources import DatasetArrays, select_evaluation

__all__ = ["class_groups", "permuted_tasks", "pixel_permutations", "split_by_classes", "tasks_from_arrays"]


def class_groups(class_order=None, seed=0, num_classes=10, classes_per_task=2):
    """The classes of each task: consecutive groups of `classes_per_task` classes of
    `class_order` (the last group is smaller if they do not divide evenly).

    `class_order`: None for 0..C-1 in order; "random" for a shuffle seeded by `seed`;
    or an explicit permutation of 0..C-1.
    """
    num_classes = check_positive_int("num_classes", num_classes)
    classes_per_task = check_positive_int("classes_per_task", classes_per_task)
    if class_order is None:
        order = np.arange(num_classes)
    elif isinstance(class_order, str):
        if class_order != "random":
            raise ValueError(f"`class_order` must be None, 'random' or a list, got {class_order!r}.")
        order = np.random.default_rng(seed).permutation(num_classes)
    else:
        order = np.asarray(class_order)
        if sorted(order.tolist()) != list(range(num_classes)):
            raise ValueError(
                f"`class_order` must be a permutation of 0..{num_classes - 1}, got {list(class_order)}."
            )
    return [tuple(int(c) for c in order[i:i + classes_per_task])
            for i in range(0, num_classes, classes_per_task)]


def pixel_permutations(num_tasks, num_pixels=784, seed=0, first_task_unpermuted=False):
    """The seeded pixel permutations of the tasks (identity first if asked)."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(num_pixels) for _ in range(num_tasks)]
    if first_task_unpermuted:
        perms[0] = np.arange(num_pixels)
    return perms


def _preprocessing(x, flatten, normalization):
    if normalization is None:
        mean, std, normalize = 0.0, 1.0, False
    else:
        try:
            mean, std = normalization
        except (TypeError, ValueError):
            raise ValueError(f"`normalization` must be None or (mean, std), got {normalization!r}.") from None
        normalize = True
    value_range = 255.0 if np.asarray(x).dtype == np.uint8 else 1.0
    return Preprocessing(flatten=flatten, normalize=normalize, mean=mean, std=std, value_range=value_range)


def _check_arrays(what, x, y, required=True):
    """(x, y) as arrays with one int label in [0, inf) per example, or (None, None)."""
    if x is None and y is None and not required:
        return None, None
    if x is None or y is None:
        raise ValueError(f"{what}: images and labels are both needed, got "
                         f"{'None' if x is None else 'an array'} and {'None' if y is None else 'an array'}.")
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{what}: labels must be one int per example (shape (N,)), got images {x.shape} "
                         f"and labels {y.shape}.")
    if not len(y):
        raise ValueError(f"{what}: no examples.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"{what}: labels must be ints >= 0 (class indices), got dtype {y.dtype}, "
                         f"min {y.min()!r}.")
    return x, y.astype(np.int64)


def _arrays(x_train, y_train, x_test, y_test, source, evaluate_on):
    x_train, y_train = _check_arrays("training arrays", x_train, y_train)
    x_test, y_test = _check_arrays("test arrays", x_test, y_test, required=evaluate_on == "test")
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"training and test images differ in shape: {x_train.shape[1:]} and {x_test.shape[1:]}.")
    return DatasetArrays(x_train, y_train, x_test, y_test, source)


def split_by_classes(x_train, y_train, x_test, y_test, setting="class", classes_per_task=2, class_order=None,
                     seed=0, batch_size=100, eval_batch_size=1000, flatten=True, normalization=None,
                     evaluate_on="test", validation_fraction=0.1, name="split", source="arrays", num_classes=None):
    """A split benchmark: task t holds the examples of the t-th group of classes
    (`class_groups`), in the settings of van de Ven & Tolias (2019):

    - "class": original labels, one C-way output, no task id at test;
    - "domain": labels relabelled to their position within the group (a
      `classes_per_task`-way output);
    - "task": original labels and the task id as input (`(x, t)`).

    Args:
        x_train, y_train, x_test, y_test: the arrays (module docstring).
        class_order: None, "random" (seeded by `seed`) or a permutation of 0..C-1.
        seed: class order (if random), shuffling, and the validation split.
        name, source: recorded in the scenario and in results.
        num_classes: C; None: the largest training label + 1.
    """
    setting = check_setting(setting, owner=name)
    data = _arrays(x_train, y_train, x_test, y_test, source, evaluate_on)
    return split_dataset(data, name, setting, classes_per_task, class_order, seed, batch_size, eval_batch_size,
                         _preprocessing(data.x_train, flatten, normalization), evaluate_on, validation_fraction,
                         num_classes)


def split_dataset(data, name, setting, classes_per_task, class_order, seed, batch_size, eval_batch_size, prep,
                  evaluate_on, validation_fraction, num_classes=None):
    """`split_by_classes` on a `DatasetArrays` (what the named split benchmarks call)."""
    batch_size = check_positive_int("batch_size", batch_size, owner=name)
    eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size, owner=name)
    num_classes = int(data.y_train.max()) + 1 if num_classes is None else num_classes
    data = select_evaluation(data, evaluate_on, validation_fraction, seed)
    groups = class_groups(class_order, seed, num_classes, classes_per_task)
    tasks = []
    for t, group in enumerate(groups):
        relabel = np.arange(num_classes)
        if setting == "domain":
            relabel[list(group)] = np.arange(len(group))
        labels = tuple(int(relabel[c]) for c in group)
        task_id = t if setting == "task" else None

        def subset(x, y, group=group, relabel=relabel):
            keep = np.isin(y, group)
            return x[keep], relabel[y[keep]]

        x_train, y_train = subset(data.x_train, data.y_train)
        x_test, y_test = subset(data.x_test, data.y_test)
        if not len(y_train) or not len(y_test):
            raise ValueError(
                f"{name}: task {t} (classes {group}) has {len(y_train)} training and "
                f"{len(y_test)} evaluation examples in {data.source}; every task needs both."
            )
        order = ShuffleOrder(seed * 1000 + t)
        tasks.append(Task(
            task_id=t, classes=group,
            train=make_dataset(x_train, y_train, batch_size, prep, shuffle_seed=order, task_id=task_id),
            test=make_dataset(x_test, y_test, eval_batch_size, prep, task_id=task_id),
            num_train=len(y_train), num_test=len(y_test), labels=labels, train_order=order,
        ))
    return Scenario(
        name=name,
        setting=setting,
        num_classes=max(len(g) for g in groups) if setting == "domain" else num_classes,
        input_shape=prep.output_shape(data.x_train.shape[1:]),
        source=data.source,
        tasks=tasks,
        details={"class_order": [c for g in groups for c in g], "batch_size": batch_size, "seed": seed,
                 "normalize": bool(prep.normalize), "evaluated_on": evaluate_on},
        image_shape=image_shape_of(data.x_train.shape[1:]),
    )


def permuted_tasks(x_train, y_train, x_test, y_test, num_tasks=10, first_task_unpermuted=False, seed=0,
             batch_size=100, eval_batch_size=1000, normalization=None, evaluate_on="test",
             validation_fraction=0.1, name="permuted", source="arrays", num_classes=None):
    """A permuted benchmark (domain-incremental): `num_tasks` tasks, each all the data
    under its own permutation of the (flattened) input values, fixed by `seed`; one
    shared C-way output. The permutation is applied per batch inside the pipeline, so
    all tasks share one in-memory copy of the arrays. `num_classes`: None for the
    largest training label + 1."""
    data = _arrays(x_train, y_train, x_test, y_test, source, evaluate_on)
    return permuted_dataset(data, name, num_tasks, first_task_unpermuted, seed, batch_size, eval_batch_size,
                            _preprocessing(data.x_train, True, normalization), evaluate_on, validation_fraction,
                            num_classes)


def permuted_dataset(data, name, num_tasks, first_task_unpermuted, seed, batch_size, eval_batch_size, prep,
                     evaluate_on, validation_fraction, num_classes=None):
    """`permuted_tasks` on a `DatasetArrays` (what `permuted_mnist` calls)."""
    num_tasks = check_positive_int("num_tasks", num_tasks, owner=name)
    batch_size = check_positive_int("batch_size", batch_size, owner=name)
    eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size, owner=name)
    num_classes = int(data.y_train.max()) + 1 if num_classes is None else num_classes
    data = select_evaluation(data, evaluate_on, validation_fraction, seed)
    perms = pixel_permutations(num_tasks, data.x_train[0].size, seed, first_task_unpermuted)
    # One copy of the arrays in memory, shared by every task's pipelines.
    x_train, x_test = tf.constant(data.x_train), tf.constant(data.x_test)
    classes = tuple(range(num_classes))
    tasks = []
    for t, perm in enumerate(perms):
        perm = None if first_task_unpermuted and t == 0 else perm
        order = ShuffleOrder(seed * 1000 + t)
        tasks.append(Task(
            task_id=t, classes=classes,
            train=make_dataset(x_train, data.y_train, batch_size, prep, shuffle_seed=order, permutation=perm),
            test=make_dataset(x_test, data.y_test, eval_batch_size, prep, permutation=perm),
            num_train=len(data.y_train), num_test=len(data.y_test), labels=classes, train_order=order,
        ))
    return Scenario(
        name=name,
        setting="domain",
        num_classes=num_classes,
        input_shape=prep.output_shape(data.x_train.shape[1:]),
        source=data.source,
        tasks=tasks,
        details={"batch_size": batch_size, "seed": seed, "first_task_unpermuted": bool(first_task_unpermuted),
                 "normalize": bool(prep.normalize), "evaluated_on": evaluate_on},
    )


def tasks_from_arrays(tasks, setting="domain", seed=0, batch_size=100, eval_batch_size=1000, flatten=True,
                      normalization=None, evaluate_on="test", validation_fraction=0.1, name="custom",
                      source="arrays"):
    """A scenario of the tasks given, in order: `tasks` is a list of
    `(x_train, y_train, x_test, y_test)` per task, with labels in one shared label
    space 0..C-1 (C = the largest label + 1).

    `setting` says how the tasks relate, which decides evaluation: "domain" (the same
    classes in new conditions, as CORe50-NI or Avalanche's `ni_benchmark`), "class" (new
    classes per task, no task id at test) or "task" (the task id is given as input).
    With `evaluate_on="validation"`, each task holds out its own seeded, class-stratified
    `validation_fraction` (`hold_out_validation` with seed `seed * 1000 + t`).
    """
    setting = check_setting(setting, owner=name)
    batch_size = check_positive_int("batch_size", batch_size, owner=name)
    eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size, owner=name)
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise ValueError(f"{name}: `tasks` must be a non-empty list of (x_train, y_train, x_test, y_test), "
                         f"got {type(tasks).__name__}.")
    arrays = []
    for t, entry in enumerate(tasks):
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            raise ValueError(f"{name}: task {t} must be (x_train, y_train, x_test, y_test).")
        data = _arrays(*entry, f"{source} task {t}", evaluate_on)
        arrays.append(select_evaluation(data, evaluate_on, validation_fraction, seed * 1000 + t))
    shapes = {a.x_train.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{name}: every task's images must have one shape, got {sorted(shapes)}.")
    num_classes = max(int(a.y_train.max()) for a in arrays) + 1
    prep = _preprocessing(arrays[0].x_train, flatten, normalization)
    out = []
    for t, data in enumerate(arrays):
        order = ShuffleOrder(seed * 1000 + t)
        task_id = t if setting == "task" else None
        classes = tuple(int(c) for c in np.unique(data.y_train))
        out.append(Task(
            task_id=t, classes=classes,
            train=make_dataset(data.x_train, data.y_train, batch_size, prep, shuffle_seed=order, task_id=task_id),
            test=make_dataset(data.x_test, data.y_test, eval_batch_size, prep, task_id=task_id),
            num_train=len(data.y_train), num_test=len(data.y_test), labels=classes, train_order=order,
        ))
    where = (source if evaluate_on == "test"
             else f"{source} validation[{validation_fraction:g} of each task's train, seed {seed} * 1000 + t]")
    shape = shapes.pop()
    return Scenario(
        name=name, setting=setting, num_classes=num_classes, input_shape=prep.output_shape(shape),
        source=where, tasks=out, image_shape=image_shape_of(shape),
        details={"batch_size": batch_size, "seed": seed, "normalize": normalization is not None,
                 "evaluated_on": evaluate_on},
    )


def image_shape_of(example_shape):
    """An example's shape as an image, (H, W) or (H, W, C), or None for a vector."""
    shape = tuple(int(v) for v in example_shape)
    return shape if len(shape) in (2, 3) else None
