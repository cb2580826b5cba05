"""`StreamTrainer`: one pass over a task-free `Stream`, the accuracy matrix filled when the
stream passes each true task's end (the learner is never told)."""
import time

import numpy as np
import tensorflow as tf

from larq_engrams import metrics as metrics_module, protocol
from larq_engrams.benchmarks.stream import Stream, boundary_scores
from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.evaluation import TaskEvaluator
from larq_engrams.results import ContinualResult, environment
from larq_engrams.training.trainer import ContinualTrainer

__all__ = ["StreamTrainer"]


class StreamTrainer(ContinualTrainer):
    """Trains a model on a `Stream`, batch by batch, one pass.

    Each batch goes through the model's stream hooks (`larq_engrams.protocol`):
    `route_stream_batch(x, y, told)` returns the batches to train now and whether the
    model started another engram (then the optimizer starts fresh, as at a task of
    `ContinualTrainer`); each of them takes one train step, then
    `after_stream_batch(x, y)` (online replay inserts it in its buffer). A model
    without hooks trains on every batch as it comes. With `boundaries="given"` the
    trainer calls `begin_task(t)` where the told task changes, as `ContinualTrainer`.

    When the stream passes the true end of task t (`Stream.task_ends`),
    `end_stream_segment()` lets the model finish pending bookkeeping (an engram
    model's router solves its discriminant) and row t of R is measured on every
    task's test data, as `ContinualTrainer` does. The result also holds the stream's
    description, the model's own boundaries (`stream_report()`) and their precision,
    recall and F1 against the true ones (`benchmarks.stream.boundary_scores`, a
    detection matching within `tolerance` examples: default max(half the fuzzy window,
    100)).

    Callbacks: a `ContinualCallback` that learns at task ends (`in_streams="refuse"`:
    EWC's and SI's consolidation, LwF's teacher) is refused, since a stream tells no
    task end; one that observes (`"observe"`: TensorBoard, the accuracy matrix) gets
    `on_task_begin`/`on_task_end` at the true task ends with the row of R, as under
    `ContinualTrainer`; `"skip"` (replay's task-end update: the model inserts online)
    is not called.

    Args are `ContinualTrainer`'s (one pass: no `epochs`); `tolerance` as above.
    """

    def __init__(self, model, optimizer, tolerance=None, **kwargs):
        kwargs.pop("epochs", None)
        super().__init__(model, optimizer, epochs=1, **kwargs)
        self.tolerance = tolerance
        refused = [type(cb).__name__ for cb in self.user_callbacks if getattr(cb, "in_streams", None) == "refuse"]
        if refused:
            raise ValueError(f"StreamTrainer: {', '.join(refused)} learns at the end of each task, which a task-free "
                             "stream does not tell; use a method that learns online (engram_bnn, slda_rf, er, "
                             "finetune).")
        self._observers = [cb for cb in self.user_callbacks
                           if isinstance(cb, ContinualCallback) and cb.in_streams == "observe"]

    def fit(self, stream):
        """One pass over `stream`; returns a `ContinualResult`."""
        if not isinstance(stream, Stream):
            raise TypeError(f"StreamTrainer.fit takes a larq_engrams.benchmarks.Stream, got {type(stream)}.")
        scenario = stream.scenario
        if self.seed is not None:
            tf.keras.utils.set_random_seed(self.seed)
        protocol.check_scenario(self.model, scenario)
        self._check_scenario(scenario)
        T = self._num_tasks = scenario.num_tasks
        self._mask_table = None
        evaluator = TaskEvaluator(self.model, scenario, self.engram_inference, self.jit_compile, seed=self.seed or 0)
        protocol.begin_task(self.model, 0)
        baseline = TaskEvaluator(self.model, scenario, "task", self.jit_compile, seed=self.seed or 0).accuracies()
        protocol.begin_stream(self.model)
        self._prepare_optimizer(0)
        spec = (tf.TensorSpec((None, *scenario.input_shape), tf.float32), tf.TensorSpec((None,), tf.int32))
        self._train_step = self._make_train_step(spec)
        self._sums.assign(tf.zeros(4))
        self._health.assign(tf.fill([3], np.inf))
        R = np.full((T, T), np.nan)
        ends = {b: t for t, b in enumerate(stream.task_ends)}
        told_task, task_seconds, row = 0, [], 0
        progbar = tf.keras.utils.Progbar(len(stream), unit_name="batch") if self.verbose else None
        for cb in (self.memory, *self._observers):
            cb.task_hooks = True
            cb.set_model(self.model)
        for cb in self._observers:
            cb.on_train_begin()
            cb.on_task_begin(0)
        self.memory.on_task_begin(0)
        train_seconds = 0.0
        protocol.begin_epoch(self.model, self.optimizer)
        try:
            for b, batch in enumerate(stream):
                started = time.perf_counter()
                if batch.task is not None and batch.task != told_task:  # boundaries="given"
                    protocol.end_epoch(self.model)
                    protocol.end_stream_segment(self.model)
                    told_task = batch.task
                    protocol.begin_task(self.model, told_task)
                    self._fresh_optimizer()
                batches, switched = protocol.route_stream_batch(self.model, batch.x, batch.y, batch.task)
                if switched:
                    protocol.end_epoch(self.model)
                    self._fresh_optimizer()
                self._train(batches)
                train_seconds += time.perf_counter() - started
                if b == len(stream) - 1:
                    started = time.perf_counter()
                    self._train(protocol.finish_stream(self.model))
                    train_seconds += time.perf_counter() - started
                if b in ends:
                    row = ends[b]
                    protocol.end_epoch(self.model)
                    protocol.end_stream_segment(self.model)
                    self._check_health(f"true task {row}")
                    self.memory.on_task_end(row, {})
                    R[row] = evaluator.accuracies()
                    task_seconds.append(train_seconds - sum(task_seconds))
                    logs = {"accuracies": R[row].tolist(), "accuracy_matrix": R[: row + 1].tolist()}
                    for cb in self._observers:
                        cb.on_task_end(row, logs)
                    if row < T - 1:
                        self.memory.on_task_begin(row + 1)
                        for cb in self._observers:
                            cb.on_task_begin(row + 1)
                    protocol.begin_epoch(self.model, self.optimizer)
                    if self.verbose:
                        print(f"\ntrue task {row} ended (batch {b + 1} of {len(stream)}); accuracy % on tasks "
                              f"0..{row}: " + " ".join(f"{100 * a:.1f}" for a in R[row, : row + 1]))
                if progbar is not None and ((b + 1) % 50 == 0 or b == len(stream) - 1):
                    progbar.update(b + 1)
            protocol.end_epoch(self.model)
            for cb in self._observers:
                cb.on_train_end()
        except BaseException:
            self.memory.abort()
            raise
        memory = self.memory.summary()
        memory["state_bytes"] = protocol.state_bytes(self.model, self.user_callbacks)
        result = ContinualResult.from_matrix(R, baseline, task_seconds=task_seconds, memory=memory,
                                             config=self.config(scenario), environment=environment())
        result.config["trainer"]["evaluation"]["estimated"] = metrics_module.estimated_metrics(R)
        report = protocol.stream_report(self.model)
        tolerance = self.tolerance if self.tolerance is not None else max(stream.transition // 2, 100)
        result.config["stream"] = {**stream.describe(), "tolerance": tolerance, "learner": report,
                                   "train_seconds": train_seconds,
                                   "seconds_per_example": train_seconds / stream.num_examples}
        if report is not None and stream.boundaries != "given":
            scores = boundary_scores([d["at"] for d in report["boundaries"]], stream.true_boundaries, tolerance)
            result.config["stream"]["boundary_scores"] = scores
            result.metrics["boundary_f1"] = scores["f1"]
        if self.engram_inference == "infer":
            result.task_inference = evaluator.task_inference_accuracies()
            if result.task_inference is not None:
                result.metrics["task_inference"] = float(np.mean(result.task_inference))
        return result

    def _fresh_optimizer(self):
        self._prepare_optimizer(None)
        protocol.begin_epoch(self.model, self.optimizer)

    def _train(self, batches):
        for x, y in batches:
            self._train_step(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32))
            protocol.after_stream_batch(self.model, x, y)
