"""Learning without forgetting (Li & Hoiem 2017): distillation from the model as it
was before the current task."""
import tensorflow as tf

from larq_engrams.callbacks.base import ContinualCallback

__all__ = ["LearningWithoutForgetting", "distillation_loss", "LwFUpdate"]


def distillation_loss(teacher_logits, student_logits, temperature):
    r"""Hinton et al.'s soft-target cross-entropy, scaled by T^2 (so gradients keep their
    size as T changes), averaged over the batch:

    ```
    L_KD = -T^2 * mean_batch sum_c softmax(z_old / T)_c * log softmax(z_new / T)_c
    ```
    """
    targets = tf.nn.softmax(teacher_logits / temperature, axis=-1)
    log_probs = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    return -(temperature**2) * tf.reduce_mean(tf.reduce_sum(targets * log_probs, axis=-1))


class LearningWithoutForgetting(tf.keras.Model):
    """Wraps a model: while training, adds `strength * L_KD(teacher(x), model(x))`, the
    teacher being a frozen copy of the model from the end of the previous task (no
    distillation during the first task). The teacher's softmax over the whole output
    is the target (in class-incremental settings it covers the old classes).

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

    def call(self, inputs, training=None):
        logits = self.student(inputs, training=training)
        if training:
            old = tf.stop_gradient(self.teacher(inputs, training=False))
            self.add_loss(self.strength * self.distilling * distillation_loss(old, logits, self.temperature))
        return logits

    def update_teacher(self):
        """The teacher becomes a copy of the current model; distillation is on."""
        self.teacher.set_weights(self.student.get_weights())
        self.distilling.assign(1.0)


class LwFUpdate(ContinualCallback):
    """Updates a `LearningWithoutForgetting` teacher at the end of each task (trainer
    task hook, or each `model.fit` under the plain Keras path)."""

    def __init__(self, lwf_model):
        super().__init__()
        self.lwf_model = lwf_model

    def on_task_end(self, task, logs=None):
        self.lwf_model.update_teacher()

    def on_train_end(self, logs=None):
        if not self.task_hooks:  # plain model.fit: each fit is one task
            self.lwf_model.update_teacher()
