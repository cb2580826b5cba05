"""Split benchmarks: 5 tasks of 2 classes, in the three settings of van de Ven & Tolias
(2019): `benchmarks.split_by_classes` applied to MNIST, Fashion-MNIST and CIFAR-10.

- class-incremental: original labels, one 10-way output, no task id at test.
- domain-incremental: labels relabelled to the position within the pair (2-way output).
- task-incremental: original labels and the task id given as input (`(x, t)`), so a
  model can restrict its output to the task's classes.
"""
from larq_engrams.arguments import check_setting
from larq_engrams.benchmarks.from_arrays import class_groups, split_dataset
from larq_engrams.benchmarks.scenario import Preprocessing
from larq_engrams.benchmarks.sources import load_arrays

__all__ = ["split_mnist", "split_fashion_mnist", "split_cifar10", "class_pairs"]

_NORMALIZATION = {  # per-dataset pixel mean and std of the training set, in [0, 1]
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def class_pairs(class_order=None, seed=0, num_classes=10, classes_per_task=2):
    """The classes of each task: consecutive pairs of `class_order` (`class_groups`
    with the split benchmarks' defaults)."""
    return class_groups(class_order, seed, num_classes, classes_per_task)


def _split(name, dataset, setting, class_order, seed, source, data_dir, batch_size,
           eval_batch_size, flatten, normalize, evaluate_on, validation_fraction):
    setting = check_setting(setting, owner=name)
    mean, std = _NORMALIZATION[dataset]
    prep = Preprocessing(flatten=flatten, normalize=normalize, mean=mean, std=std)
    return split_dataset(load_arrays(dataset, source, data_dir), name, setting, 2, class_order, seed, batch_size,
                         eval_batch_size, prep, evaluate_on, validation_fraction, num_classes=10)


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
