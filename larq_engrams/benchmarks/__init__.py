"""Continual-learning benchmarks on tf.data (docs/method.md, section 5).

```python
from larq_engrams import benchmarks
scenario = benchmarks.split_mnist("class")          # offline: bundled MNIST sample
for task in scenario:
    model.fit(task.train, epochs=1)
```

A user's own arrays: `split_by_classes`, `permuted_tasks` and `tasks_from_arrays`
(`benchmarks.from_arrays`); the named benchmarks are thin wrappers of the first two.
"""
from larq_engrams.benchmarks.core50 import core50_ni
from larq_engrams.benchmarks.from_arrays import class_groups, permuted_tasks, split_by_classes, tasks_from_arrays
from larq_engrams.benchmarks.formats import (
    DataFormatError,
    DataNotFoundError,
    DataSourceError,
    read_cifar10,
    read_core50,
    read_idx,
)
from larq_engrams.benchmarks.joint import joint
from larq_engrams.benchmarks.permuted import permuted_mnist, pixel_permutations
from larq_engrams.benchmarks.scenario import SETTINGS, Preprocessing, Scenario, ShuffleOrder, Task, make_dataset
from larq_engrams.benchmarks.sources import (
    EVALUATION_SPLITS,
    SOURCES,
    DatasetArrays,
    hold_out_validation,
    load_arrays,
    load_bundled_mnist,
    resolve_source,
    validation_source,
)
from larq_engrams.benchmarks.stream import BOUNDARIES, Stream, StreamBatch, boundary_scores
from larq_engrams.benchmarks.split import class_pairs, split_cifar10, split_fashion_mnist, split_mnist

__all__ = [
    "BOUNDARIES", "Stream", "StreamBatch", "boundary_scores",
    "DataFormatError", "DataNotFoundError", "DataSourceError", "DatasetArrays", "EVALUATION_SPLITS", "Preprocessing", "SETTINGS", "SOURCES",
    "Scenario", "ShuffleOrder", "Task", "class_groups", "class_pairs", "permuted_tasks", "split_by_classes",
    "tasks_from_arrays", "core50_ni", "hold_out_validation", "joint", "load_arrays",
    "load_bundled_mnist", "make_dataset", "permuted_mnist", "pixel_permutations", "read_cifar10", "read_core50", "read_idx",
    "resolve_source", "split_cifar10", "split_fashion_mnist", "split_mnist", "validation_source",
]
