"""`ContinualCallback`: a Keras callback with task hooks."""
import tensorflow as tf

__all__ = ["ContinualCallback", "TaskEndCallback"]


class ContinualCallback(tf.keras.callbacks.Callback):
    """A `tf.keras.callbacks.Callback` that also hears about task boundaries.

    `ContinualTrainer` calls `on_task_begin(task)` before the first epoch of each task
    and `on_task_end(task, logs)` after its evaluation, where `logs` holds the row of
    the accuracy matrix just measured and every entry other callbacks added. Under plain
    `model.fit`, one call of `fit` per task, the hooks are not called; callbacks that
    need task boundaries then treat each `fit` (train begin/end) as one task.

    Before `on_train_begin` the trainer sets `self.task_hooks = True`: callbacks that
    treat each `fit` as one task check it. Before `on_task_begin` it sets
    `self.optimizer` (the optimizer of this task: it may be re-created per task) and,
    where a callback has a `scenario` attribute left at None, `self.scenario`.

    Resuming: a callback whose method keeps state across tasks (a regularizer's
    importances, a step counter) returns it from `checkpoint_variables()` (TensorFlow
    variables, saved in the trainer's per-task checkpoint) and `get_state()` (plain
    JSON-serializable values, saved in its state file); `set_state` takes the latter
    back. A run resumed from a task boundary then continues as if never stopped.
    """

    optimizer = None
    task_hooks = False
    # In a task-free stream (`StreamTrainer`): "observe" hears the true task ends (logs
    # and plots only: the learner is not told); "refuse" learns at task ends, which a
    # stream does not give (the trainer raises); "skip": the model does its work online.
    in_streams = "observe"

    def checkpoint_variables(self):
        """`{name: tf.Variable or list of them}` a resumed run needs (default: none)."""
        return {}

    def get_state(self):
        """JSON-serializable values a resumed run needs (default: none)."""
        return {}

    def set_state(self, state):
        """Restores what `get_state` returned."""

    def on_task_begin(self, task, logs=None):
        """Called before training on `task` (an int)."""

    def on_task_end(self, task, logs=None):
        """Called after training on and evaluating `task`."""


class TaskEndCallback(ContinualCallback):
    """A `ContinualCallback` whose work happens when a task ends, in both paths:
    `task_ended(task)` runs from `on_task_end` under `ContinualTrainer`, and at the end
    of each plain `model.fit` otherwise (the k-th fit is task k; the count is saved for
    resuming). Subclasses implement `task_ended`."""

    in_streams = "refuse"  # it learns at task ends

    def __init__(self):
        super().__init__()
        self._fits = 0

    def get_state(self):
        return {"fits": self._fits}

    def set_state(self, state):
        self._fits = int(state["fits"])

    def task_ended(self, task):
        raise NotImplementedError

    def on_task_end(self, task, logs=None):
        self.task_ended(task)

    def on_train_end(self, logs=None):
        if not self.task_hooks:  # plain model.fit: each fit is one task
            task, self._fits = self._fits, self._fits + 1
            self.task_ended(task)
