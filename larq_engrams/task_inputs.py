"""How a batch's task ids reach a model and its logits, in every setting.

Inputs are `x` (class- and domain-incremental) or `(x, task_ids)` (task-incremental:
the scenario gives the task id). The trainer's step, the evaluator and EWC's Fisher
all use these, so a model sees the same inputs when it trains, is tested and is
consolidated.
"""
import numpy as np
import tensorflow as tf

__all__ = ["class_mask_table", "masked_logits", "split_task_inputs"]


def split_task_inputs(x):
    """`(x, task_ids)` or `{"x": x, "task": task_ids}` -> (x, task_ids); `x` -> (x, None)."""
    if isinstance(x, dict):
        return x["x"], x.get("task")
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError("inputs must be `x` or `(x, task_ids)`.")
        return x[0], x[1]
    return x, None


def class_mask_table(scenario):
    """(num_tasks, num_classes) 0/1 table: which outputs belong to each task."""
    table = np.zeros((scenario.num_tasks, scenario.num_classes), np.float32)
    for task in scenario:
        table[task.task_id, list(task.labels)] = 1.0
    return table


def masked_logits(logits, task_ids, mask_table):
    """Logits of the classes outside the task pushed to -inf (task-incremental)."""
    if task_ids is None or mask_table is None:
        return logits
    mask = tf.gather(mask_table, task_ids)
    return tf.where(mask > 0, logits, tf.fill(tf.shape(logits), tf.constant(-1e9, logits.dtype)))
