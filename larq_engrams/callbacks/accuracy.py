"""`AccuracyMatrixCallback`: the accuracy matrix under plain `model.fit`, one fit per task."""
import time

import numpy as np

from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.evaluation import TaskEvaluator
from larq_engrams.results import ContinualResult, environment

__all__ = ["AccuracyMatrixCallback"]


class AccuracyMatrixCallback(ContinualCallback):
    """Fills R from the plain Keras path: call `model.fit` once per task, in order.

    ```python
    acc = AccuracyMatrixCallback(scenario)
    for task in scenario:
        model.begin_task(task.task_id)            # engram models
        model.fit(task.train, epochs=1, callbacks=[acc])
    result = acc.result()                         # a ContinualResult, as the trainer's
    ```

    At the start of the first fit the untrained model is evaluated on every task (b_k);
    at the end of each fit, on every task (row t of R). Evaluation is the same as
    `ContinualTrainer`'s (`larq_engrams.evaluation.TaskEvaluator`), so both paths give
    the same kind of R. In task-incremental scenarios the model must accept the
    `(x, task_id)` inputs the datasets yield (as `EngramModel` does).

    Args:
        scenario: the `Scenario` being trained.
        engram_inference: "infer" or "union", for engram models without a task id.
        memory: an optional `PeakMemoryCallback` (also passed to `fit`) whose peaks go
            into the result.
    """

    def __init__(self, scenario, engram_inference="infer", memory=None):
        super().__init__()
        self.scenario = scenario
        self.engram_inference = engram_inference
        self.memory = memory
        self.baseline = None
        self.rows = []
        self.task_seconds = []
        self._evaluators = None

    def _evaluator(self, mode):
        if self._evaluators is None or self._evaluators[0].model is not self.model:
            self._evaluators = (
                TaskEvaluator(self.model, self.scenario, self.engram_inference),
                TaskEvaluator(self.model, self.scenario, "task"),
            )
        return self._evaluators[0 if mode == "trained" else 1]

    def on_train_begin(self, logs=None):
        if len(self.rows) >= self.scenario.num_tasks:
            raise RuntimeError(
                f"AccuracyMatrixCallback: all {self.scenario.num_tasks} tasks already have "
                f"their row of R; use a new callback for a new run."
            )
        if self.baseline is None:
            self.baseline = self._evaluator("untrained").accuracies()
        self._started = time.perf_counter()

    def on_train_end(self, logs=None):
        self.task_seconds.append(time.perf_counter() - self._started)
        self.rows.append(self._evaluator("trained").accuracies())
        if logs is not None:
            logs["accuracies"] = self.rows[-1]

    @property
    def accuracy_matrix(self):
        """R so far: rows for the fits done, NaN for the tasks still to come."""
        T = self.scenario.num_tasks
        R = np.full((T, T), np.nan)
        R[: len(self.rows)] = self.rows
        return R

    def result(self, config=None):
        """The `ContinualResult` once every task has been fitted."""
        if len(self.rows) != self.scenario.num_tasks:
            raise RuntimeError(
                f"AccuracyMatrixCallback: {len(self.rows)} of {self.scenario.num_tasks} tasks "
                f"fitted so far; R is complete after the last one."
            )
        return ContinualResult.from_matrix(
            self.accuracy_matrix,
            self.baseline,
            task_seconds=self.task_seconds,
            memory=self.memory.summary() if self.memory is not None else {},
            config={"scenario": self.scenario.describe(), "path": "model.fit", **(config or {})},
            environment=environment(),
        )
