"""Learning without forgetting (Li & Hoiem 2017): distillation from the model as it
was before the current task."""
import tensorflow as tf

from larq_engrams.callbacks.base import TaskEndCallback
from larq_engrams.protocol import variable_bytes

__all__ = ["LearningWithoutForgetting", "distillation_loss", "LwFUpdate"]


def distillation_loss(teacher_logits, student_logits, temperature, classes=None):
    r"""Hinton et al.'s soft-target cross-entropy, scaled by T^2 (so gradients keep their
    size as T changes), averaged over the batch:

    ```
    L_KD = -T^2 * mean_batch sum_{c in C} softmax_C(z_old / T)_c * log softmax_C(z_new / T)_c
    ```

    with both softmaxes taken over the classes C (a 0/1 mask; all classes if None).
    """
    if classes is not None:
        outside = tf.constant(-1e9, teacher_logits.dtype)
        teacher_logits = tf.where(classes > 0, teacher_logits, outside)
        student_logits = tf.where(classes > 0, student_logits, outside)
    targets = tf.nn.softmax(teacher_logits / temperature, axis=-1)
    log_probs = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    log_probs = tf.where(targets > 0, log_probs, tf.zeros_like(log_probs))  # 0 * -inf -> 0
    return -(temperature**2) * tf.reduce_mean(tf.reduce_sum(targets * log_probs, axis=-1))


class LearningWithoutForgetting(tf.keras.Model):
    """Wraps a model: while training, adds `strength * L_KD(teacher(x), model(x))`, the
    teacher being a frozen copy of the model from the end of the previous task (no
    distillation during the first task).

    The distillation covers the classes of the previous tasks (`old_classes`, recorded
    by `update_teacher(classes)`), as in the standard class-incremental protocol (van de
    Ven et al.): the new task's classes are left to the task loss. Without recorded
    classes it covers the whole output. (Distilling the whole output in class-IL also
    suppresses the new classes, to which the teacher gives almost no probability: on
    Split MNIST that kept 41% ACC where the published protocol gives about 24%.)

    Update the teacher at task boundaries with the `LwFUpdate` callback (or
    `update_teacher()`); `ContinualTrainer` and `model.fit` both run it.

    Args:
        model: the Keras model returning logits.
        temperature: T (2 in Li & Hoiem 2017 and the standard benchmark code).
        strength: weight of the distillation term (1.0: equal to the task loss).
    """

    def __init__(self, model, temperature=2.0, strength=1.0, **kwargs):
        super().__init__(name=kwargs.pop("name", f"lwf_{model.name}"), **kwargs)
        if not float(temperature) > 0:
            raise ValueError(f"LearningWithoutForgetting: `temperature` must be > 0, got {temperature!r}.")
        self.student = model
        self.teacher = tf.keras.models.clone_model(model)
        self.teacher.set_weights(model.get_weights())
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.strength = float(strength)
        self.distilling = tf.Variable(0.0, trainable=False, name="distilling")
        outputs = int(model.output_shape[-1])
        self.old_classes = tf.Variable(tf.ones(outputs), trainable=False, name="old_classes")
        # A variable, not a Python flag, so that checkpoints of the model hold it.
        self.classes_recorded = tf.Variable(False, trainable=False, name="classes_recorded")

    def call(self, inputs, training=None):
        logits = self.student(inputs, training=training)
        if training:
            old = tf.stop_gradient(self.teacher(inputs, training=False))
            loss = distillation_loss(old, logits, self.temperature, self.old_classes)
            self.add_loss(self.strength * self.distilling * loss)
        return logits

    def state_bytes(self):
        """The continual protocol's `(learn, predict)` bytes: the teacher's weights and
        the old classes' mask, kept only to learn further tasks."""
        return variable_bytes(self.teacher.weights) + variable_bytes([self.old_classes]), 0

    def update_teacher(self, classes=None):
        """The teacher becomes a copy of the current model; distillation is on.

        Args:
            classes: the labels of the task just learned; they join `old_classes`.
        """
        self.teacher.set_weights(self.student.get_weights())
        self.distilling.assign(1.0)
        if classes is not None:
            recorded = bool(self.classes_recorded.numpy())
            mask = self.old_classes.numpy() if recorded else tf.zeros_like(self.old_classes).numpy()
            mask[list(classes)] = 1.0
            self.old_classes.assign(mask)
            self.classes_recorded.assign(True)


class LwFUpdate(TaskEndCallback):
    """Updates a `LearningWithoutForgetting` teacher at the end of each task (trainer
    task hook, or each `model.fit` under the plain Keras path), passing the task's
    labels from `scenario` (set by the trainer, or given here for `model.fit`)."""

    def __init__(self, lwf_model, scenario=None):
        super().__init__()
        self.lwf_model = lwf_model
        self.scenario = scenario

    def task_ended(self, task):
        self.lwf_model.update_teacher(None if self.scenario is None else self.scenario[task].labels)
