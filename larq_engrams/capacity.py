"""Weights with one row per engram, which grow when a model learns more tasks than it
was built for.

A weight made by `add_engram_rows_weight` has a first axis of unknown static size
(shape `(None, ...)`), initialized with `tasks` rows; `grow_rows` assigns it a longer
array, the new rows filled with a constant. Graphs read its current size, checkpoints
and `set_weights` restore any number of rows into it, and under a `tf.distribute`
strategy every replica's copy grows alike (one whole-variable assignment).
"""
import tensorflow as tf

__all__ = ["add_engram_rows_weight", "grow_rows", "rows_of"]


def add_engram_rows_weight(layer, name, tasks, shape, initializer="zeros", **kwargs):
    """`layer.add_weight(name, (tasks, *shape))` whose first axis can grow (`grow_rows`)."""
    init = tf.keras.initializers.get(initializer)
    rows, shape = int(tasks), tuple(int(s) for s in shape)
    return layer.add_weight(name, shape=(None, *shape),
                            initializer=lambda _, dtype=None: init((rows, *shape), dtype=dtype), **kwargs)


def rows_of(variable):
    """The current length of `variable`'s first axis (a Python int; eager)."""
    return int(tf.shape(variable)[0])  # the variable's shape, not a copy of its value


def grow_rows(variable, rows, fill=0.0):
    """Extends `variable`'s first axis to `rows` rows (no-op if it has as many), the new
    rows at `fill`; eager."""
    current = rows_of(variable)
    if rows <= current:
        return
    pad = tf.fill([rows - current, *variable.shape[1:]], tf.constant(fill, variable.dtype))
    variable.assign(tf.concat([tf.convert_to_tensor(variable), pad], axis=0))
