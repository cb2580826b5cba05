"""Accuracy of a model on every task of a scenario, honouring the scenario's setting.

One evaluator serves `ContinualTrainer` and the plain-Keras `AccuracyMatrixCallback`, so
both fill the accuracy matrix R the same way:

- class / domain incremental: the model sees `x` only. An `EngramModel` is evaluated
  in its no-task-id inference mode (`"infer"` by default, or `"union"`).
- task incremental: the task id is given. An `EngramModel` gates by it (per-sample
  engrams); every model's logits are restricted to the task's classes (multi-head
  evaluation, as in van de Ven & Tolias 2019): argmax over `task.labels` only. A task
  whose engram is not allocated yet has no network to evaluate: its accuracy is NaN
  (so are the entries above R's diagonal and the untrained baseline b_k for k > 0 of
  an engram model in task-IL, and with them FWT), never the output of an all-off gate.
"""
import tensorflow as tf

from larq_engrams.models import EngramModel
from larq_engrams.task_inputs import class_mask_table, masked_logits, model_inputs, split_task_inputs  # noqa: F401

# The task-id helpers live in `task_inputs`; importing them from here keeps working.
__all__ = ["TaskEvaluator"]


class TaskEvaluator:
    """Computes `[accuracy on task k for k in tasks]` for a model on a scenario.

    Args:
        model: a Keras model returning logits.
        scenario: a `larq_engrams.benchmarks.Scenario`.
        engram_inference: the `EngramModel` inference mode when no task id is given:
            "infer" or "union", or "task" (the active engram: an oracle that class and
            domain settings do not allow; `ContinualTrainer` uses it only to measure the
            untrained model, gated by its first engram).
        jit_compile: compile the evaluation step with XLA.
    """

    def __init__(self, model, scenario, engram_inference="infer", jit_compile=False):
        if engram_inference not in ("infer", "union", "task"):
            raise ValueError(
                f"`engram_inference` must be 'infer', 'union' or 'task', got {engram_inference!r}."
            )
        self.model = model
        self.scenario = scenario
        self.engram_inference = engram_inference
        self.jit_compile = jit_compile
        self._mask_table = (
            tf.constant(class_mask_table(scenario)) if scenario.provides_task_id else None
        )
        self._step = None
        self._traced_for = None

    def _make_step(self):
        model, mask_table = self.model, self._mask_table

        def step(x, y):
            x, task_ids = split_task_inputs(x)
            logits = model(model_inputs(model, x, task_ids), training=False)
            logits = masked_logits(logits, task_ids, mask_table)
            predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(predictions == tf.cast(y, tf.int32), tf.int64))
            return correct, tf.cast(tf.shape(y)[0], tf.int64)

        # Test sets have batches of many sizes: one trace for all, from the data's spec.
        return tf.function(step, input_signature=self.scenario[0].test.element_spec, jit_compile=self.jit_compile)

    def _prepare(self):
        """Sets the engram inference mode; retraces when the allocated engrams changed
        (the "infer" graph loops over them)."""
        key = None
        if isinstance(self.model, EngramModel):
            if not self.scenario.provides_task_id:
                if self.model.inference_mode != self.engram_inference:
                    self.model.set_inference(self.engram_inference)
            key = tuple(self.model.allocated_tasks)
        if self._step is None or key != self._traced_for:
            self._step, self._traced_for = self._make_step(), key

    def accuracy(self, task):
        self._prepare()
        if (self.scenario.provides_task_id and isinstance(self.model, EngramModel)
                and task.task_id not in self._traced_for):
            return float("nan")  # no engram for this task yet: nothing to evaluate
        correct = total = 0
        for x, y in task.test:
            c, n = self._step(x, y)
            correct += int(c)
            total += int(n)
        return correct / max(total, 1)

    def task_inference_accuracies(self):
        """For an `EngramModel` without task ids: per task, the fraction of its test
        samples for which "infer" picks the task's own engram. None otherwise."""
        if not isinstance(self.model, EngramModel) or self.scenario.provides_task_id:
            return None
        model = self.model
        infer = tf.function(lambda x: model.infer_tasks(x), reduce_retracing=True)
        out = []
        for task in self.scenario:
            hits = total = 0
            for x, _ in task.test:
                chosen = infer(split_task_inputs(x)[0])
                hits += int(tf.reduce_sum(tf.cast(chosen == task.task_id, tf.int32)))
                total += int(chosen.shape[0])
            out.append(hits / max(total, 1))
        return out

    def accuracies(self, tasks=None):
        """Accuracy on each task (all of the scenario's by default), as floats."""
        tasks = self.scenario.tasks if tasks is None else tasks
        return [self.accuracy(task) for task in tasks]
