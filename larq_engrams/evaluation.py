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
import numpy as np
import tensorflow as tf

from larq_engrams import protocol
from larq_engrams.protocol import model_inputs
from larq_engrams.task_inputs import class_mask_table, masked_logits, split_task_inputs

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
        batchnorm: "moving" (BatchNormalization uses its moving statistics: the
            standard evaluation) or "batch" (the protocol of Laborieux et al.'s
            reference code: BatchNorm normalizes each test batch by its own statistics).
            With "batch", the test examples of every task of the scenario are mixed
            (seeded shuffle, `mixed_batch_size` per batch) so that a batch's statistics
            do not reveal its task; the model runs with `training=True` and its moving
            statistics are restored afterwards, and R[t][k] is the accuracy on task k's
            examples within the mixed batches. Not for `EngramModel`s (their gating is
            stochastic in training mode).
        mixed_batch_size, seed: the mixed batches of `batchnorm="batch"`.
    """

    def __init__(self, model, scenario, engram_inference="infer", jit_compile=False, batchnorm="moving",
                 mixed_batch_size=100, seed=0):
        if engram_inference not in ("infer", "union", "task"):
            raise ValueError(
                f"`engram_inference` must be 'infer', 'union' or 'task', got {engram_inference!r}."
            )
        if batchnorm not in ("moving", "batch"):
            raise ValueError(f"`batchnorm` must be 'moving' or 'batch', got {batchnorm!r}.")
        if batchnorm == "batch" and protocol.stochastic_in_training(model):
            raise ValueError(f"batchnorm='batch' evaluates in training mode, where {type(model).__name__} is "
                             "stochastic (an EngramModel's gating): use it for models without engrams (bnn, "
                             "mbnn, the MLP baselines).")
        self.batchnorm = batchnorm
        self.mixed_batch_size = int(mixed_batch_size)
        self.seed = int(seed)
        self._mixed = None
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
        if not self.scenario.provides_task_id:
            protocol.set_inference(self.model, self.engram_inference)
        key = protocol.has_networks_for(self.model)
        if self._step is None or key != self._traced_for:
            self._step, self._traced_for = self._make_step(), key

    def accuracy(self, task):
        self._prepare()
        if (self.scenario.provides_task_id and self._traced_for is not None
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
        if not protocol.infers_tasks(self.model) or self.scenario.provides_task_id:
            return None
        model = self.model
        # One trace for every batch size (the last batch is smaller), as the step's.
        infer = tf.function(lambda x: model.infer_tasks(x), input_signature=[self.scenario[0].test.element_spec[0]])
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
        if self.batchnorm == "batch":
            by_task = self._mixed_batch_accuracies()
            return [by_task[task.task_id] for task in tasks]
        return [self.accuracy(task) for task in tasks]

    def _mixed_batches(self):
        """Every task's test examples with their task index, shuffled once (seeded)."""
        if self._mixed is None:
            xs, ys, ks = [], [], []
            for task in self.scenario:
                for x, y in task.test:
                    xs.append(tf.nest.map_structure(lambda t: t.numpy(), x))
                    ys.append(y.numpy())
                    ks.append(np.full(len(ys[-1]), task.task_id, np.int32))
            order = np.random.default_rng(self.seed).permutation(sum(len(y) for y in ys))
            x = tf.nest.map_structure(lambda *parts: np.concatenate(parts)[order], *xs)
            self._mixed = (x, np.concatenate(ys)[order], np.concatenate(ks)[order])
        return self._mixed

    def _mixed_batch_accuracies(self):
        """{task id: accuracy} under BatchNorm batch statistics on mixed-task batches."""
        x, y, k = self._mixed_batches()
        model, mask_table = self.model, self._mask_table
        moving = [v for layer in model.submodules if isinstance(layer, tf.keras.layers.BatchNormalization)
                  for v in (layer.moving_mean, layer.moving_variance)]
        saved = [v.numpy() for v in moving]
        if self._step is None:  # one trace (two batch sizes at most) for every evaluation

            def step(xb):
                xb, task_ids = split_task_inputs(xb)
                logits = model(model_inputs(model, xb, task_ids), training=True)
                return tf.argmax(masked_logits(logits, task_ids, mask_table), axis=-1, output_type=tf.int32)

            self._step = tf.function(step, reduce_retracing=True)
        predict = self._step

        hits = np.zeros(self.scenario.num_tasks)
        counts = np.zeros(self.scenario.num_tasks)
        try:
            for start in range(0, len(y), self.mixed_batch_size):
                part = slice(start, start + self.mixed_batch_size)
                right = predict(tf.nest.map_structure(lambda t: t[part], x)).numpy() == y[part]
                np.add.at(hits, k[part], right)
                np.add.at(counts, k[part], 1)
        finally:
            for v, value in zip(moving, saved):  # training=True moved them; evaluation must not
                v.assign(value)
        return {t: hits[t] / max(counts[t], 1) for t in range(self.scenario.num_tasks)}
