"""The joint-training upper bound as a scenario transform."""
import dataclasses

import tensorflow as tf

from larq_engrams.benchmarks.scenario import Scenario

__all__ = ["joint"]


def joint(scenario, seed=0):
    """The same tasks, but task t trains on the union of the training sets of tasks
    0..t (each example kept once, mixed at random in proportion to the task sizes); the
    test sets are unchanged. Trained through a continual loop this is the "joint"
    upper bound of van de Ven & Tolias (2019) at every step of the sequence.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"joint() takes a Scenario, got {type(scenario)}.")
    batch_size = scenario.details.get("batch_size")
    if batch_size is None:
        raise ValueError("joint(): the scenario does not record its batch size.")
    tasks = []
    for t, task in enumerate(scenario.tasks):
        seen = scenario.tasks[: t + 1]
        sizes = [s.num_train for s in seen]
        train = tf.data.Dataset.sample_from_datasets(
            [s.train.unbatch() for s in seen],
            weights=[n / sum(sizes) for n in sizes],
            seed=seed * 1000 + t,
            stop_on_empty_dataset=False,
        ).batch(batch_size).prefetch(tf.data.AUTOTUNE)
        tasks.append(dataclasses.replace(task, train=train, num_train=sum(sizes)))
    return dataclasses.replace(scenario, name=f"{scenario.name}_joint", tasks=tuple(tasks),
                               details={**scenario.details, "joint": True})
