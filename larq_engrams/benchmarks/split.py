"""Split benchmarks: 5 tasks of 2 classes, in the three settings of van de Ven & Tolias
(2019).

- class-incremental: original labels, one 10-way output, no task id at test.
- domain-incremental: labels relabelled to the position within the pair (2-way output).
- task-incremental: original labels and the task id given as input (`(x, t)`), so a
  model can restrict its output to the task's classes.
"""
import numpy as np

from larq_engrams.benchmarks.scenario import (
    Preprocessing,
    Scenario,
    ShuffleOrder,
    Task,
    check_batch_size,
    check_setting,
    make_dataset,
)
from larq_engrams.benchmarks.sources import load_arrays, select_evaluation

__all__ = ["split_mnist", "split_fashion_mnist", "split_cifar10", "class_pairs"]

_NORMALIZATION = {  # per-dataset pixel mean and std of the training set, in [0, 1]
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def class_pairs(class_order=None, seed=0, num_classes=10, classes_per_task=2):
    """The classes of each task: consecutive pairs of `class_order`.

    `class_order`: None for 0..9 in order; "random" for a shuffle seeded by `seed`; or
    an explicit permutation of 0..9.
    """
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


def _split(name, dataset, setting, class_order, seed, source, data_dir, batch_size,
           eval_batch_size, flatten, normalize, evaluate_on, validation_fraction):
    setting = check_setting(setting)
    batch_size, eval_batch_size = check_batch_size(batch_size), check_batch_size(eval_batch_size)
    data = select_evaluation(load_arrays(dataset, source, data_dir), evaluate_on, validation_fraction, seed)
    mean, std = _NORMALIZATION[dataset]
    prep = Preprocessing(flatten=flatten, normalize=normalize, mean=mean, std=std)
    pairs = class_pairs(class_order, seed)
    tasks = []
    for t, pair in enumerate(pairs):
        relabel = np.arange(10)
        if setting == "domain":
            relabel[list(pair)] = np.arange(len(pair))
        labels = tuple(int(relabel[c]) for c in pair)
        task_id = t if setting == "task" else None

        def subset(x, y, pair=pair, relabel=relabel):
            keep = np.isin(y, pair)
            return x[keep], relabel[y[keep]]

        x_train, y_train = subset(data.x_train, data.y_train)
        x_test, y_test = subset(data.x_test, data.y_test)
        if not len(y_train) or not len(y_test):
            raise ValueError(
                f"{name}: task {t} (classes {pair}) has {len(y_train)} training and "
                f"{len(y_test)} test examples in {data.source}; every task needs both."
            )
        order = ShuffleOrder(seed * 1000 + t)
        tasks.append(
            Task(
                task_id=t,
                classes=pair,
                train=make_dataset(x_train, y_train, batch_size, prep, shuffle_seed=order, task_id=task_id),
                test=make_dataset(x_test, y_test, eval_batch_size, prep, task_id=task_id),
                num_train=len(y_train),
                num_test=len(y_test),
                labels=labels,
                train_order=order,
            )
        )
    return Scenario(
        name=name,
        setting=setting,
        num_classes=2 if setting == "domain" else 10,
        input_shape=prep.output_shape(data.x_train.shape[1:]),
        source=data.source,
        tasks=tasks,
        details={"class_order": [c for p in pairs for c in p], "batch_size": batch_size, "seed": seed,
                 "normalize": bool(normalize), "evaluated_on": evaluate_on},
    )


def split_mnist(setting="class", class_order=None, seed=0, source="auto", data_dir=None,
                batch_size=100, eval_batch_size=1000, flatten=True, normalize=False,
                evaluate_on="test", validation_fraction=0.1):
    """Split MNIST: digits {0,1}, {2,3}, ..., {8,9} by default. See the module docstring
    for the settings; `source` as in `larq_engrams.benchmarks.sources.load_arrays`.

    `evaluate_on="validation"` builds the scenario for model selection: every task is
    evaluated on its classes' part of a seeded, class-stratified `validation_fraction`
    of the training data (`hold_out_validation`), trains on the rest, and the test
    split is never loaded into a pipeline. The same holds for every benchmark."""
    return _split("split_mnist", "mnist", setting, class_order, seed, source, data_dir,
                  batch_size, eval_batch_size, flatten, normalize, evaluate_on, validation_fraction)


def split_fashion_mnist(setting="class", class_order=None, seed=0, source="auto", data_dir=None,
                        batch_size=100, eval_batch_size=1000, flatten=True, normalize=False,
                        evaluate_on="test", validation_fraction=0.1):
    """Split Fashion-MNIST: 5 tasks of 2 clothing classes (no bundled sample: TFDS, the
    Debian package's files, or local IDX files; see `load_arrays`)."""
    return _split("split_fashion_mnist", "fashion_mnist", setting, class_order, seed, source,
                  data_dir, batch_size, eval_batch_size, flatten, normalize, evaluate_on, validation_fraction)


def split_cifar10(setting="class", class_order=None, seed=0, source="auto", data_dir=None,
                  batch_size=100, eval_batch_size=1000, flatten=True, normalize=False,
                  evaluate_on="test", validation_fraction=0.1):
    """Split CIFAR-10: 5 tasks of 2 classes (TFDS or the local python pickles). Images
    are flattened to 3072 values for dense backbones unless `flatten=False`."""
    return _split("split_cifar10", "cifar10", setting, class_order, seed, source, data_dir,
                  batch_size, eval_batch_size, flatten, normalize, evaluate_on, validation_fraction)
