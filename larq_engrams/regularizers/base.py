"""`ConsolidationPenalty`: a quadratic weight penalty that a Keras user attaches to a
model and that consolidates at task boundaries."""
import tensorflow as tf

from larq_engrams.callbacks.base import TaskEndCallback
from larq_engrams.protocol import variable_bytes

__all__ = ["ConsolidationPenalty", "latent"]


def latent(variable):
    """The value of a variable; for a Larq binary kernel, its hidden weights W_h
    (read outside Larq's quantized scope), which is what the penalties act on."""
    return tf.convert_to_tensor(getattr(variable, "latent_variable", variable))


class ConsolidationPenalty(TaskEndCallback):
    """Base class: a penalty on the model's trainable variables, added with
    `model.add_loss`, consolidated after each task.

    It works in both paths:
      - `ContinualTrainer` (which sets `scenario` and calls the task hooks):
        `consolidate(task)` runs in `on_task_end`;
      - plain `model.fit`, one fit per task, with the callback in `callbacks=[...]` and
        `scenario` given to the constructor: `consolidate` runs in `on_train_end`.
    The state is held in fixed-size non-trainable variables created up front, so
    compiled train functions stay valid across tasks.

    Subclasses implement `penalty()` and `consolidate(task, dataset)`.
    """

    def __init__(self, model, strength, scenario=None):
        super().__init__()
        if not float(strength) >= 0.0:
            raise ValueError(f"{type(self).__name__}: `strength` must be >= 0, got {strength!r}.")
        self.strength = float(strength)
        self.scenario = scenario
        # Not `self.params`: Keras callbacks own that name (the fit's epochs and steps).
        self.penalized_variables = list(model.trainable_variables)
        self._attached_model = model
        self.consolidated_tasks = []
        model.add_loss(self.penalty)

    def state(self, initial=0.0):
        """A non-trainable zero (or `initial`) copy of every parameter's shape."""
        return [tf.Variable(tf.fill(v.shape, tf.cast(initial, v.dtype)), trainable=False) for v in self.penalized_variables]

    def penalty(self):
        raise NotImplementedError

    def state_bytes(self):
        """The continual protocol's `(learn, predict)` bytes: the state kept across tasks
        (e.g. EWC's Fisher and anchors), needed only to learn further tasks."""
        return variable_bytes([v for group in self.checkpoint_variables().values() for v in group]), 0

    def get_state(self):
        return {**super().get_state(), "consolidated_tasks": list(self.consolidated_tasks)}

    def set_state(self, state):
        super().set_state(state)
        self.consolidated_tasks = list(state["consolidated_tasks"])

    def consolidate(self, task, dataset):
        raise NotImplementedError

    def _task_dataset(self, task):
        if self.scenario is None:
            raise RuntimeError(
                f"{type(self).__name__}: pass `scenario=` to the constructor to use it with "
                f"plain model.fit (ContinualTrainer sets it)."
            )
        return self.scenario[task].train

    def task_ended(self, task):
        self.consolidate(task, self._task_dataset(task))
        self.consolidated_tasks.append(task)
