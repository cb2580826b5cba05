"""`ContinualTrainer`: trains a model through the tasks of a scenario with a custom
tf.data loop and fills the accuracy matrix."""
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from larq_engrams.benchmarks.scenario import Scenario
from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.callbacks.memory import PeakMemoryCallback
from larq_engrams.evaluation import TaskEvaluator, class_mask_table, split_task_inputs
from larq_engrams.models import EngramModel
from larq_engrams.training.result import ContinualResult, environment, write_atomically
from larq_engrams.training.step import train_step

__all__ = ["ContinualTrainer"]

log = logging.getLogger("larq_engrams.training")
_STATE_FILE = "trainer_state.json"


class ContinualTrainer:
    """Sequences the tasks of a `Scenario` through a model and measures forgetting.

    For each task t: `model.begin_task(t)` and, without task ids at test,
    `model.observe_task_data(task.train)` (engram models), optimizer reset or
    re-creation, `epochs` epochs of a `tf.function` train step over `task.train`, then
    evaluation on every task's test set, which fills row t of R. Before the first task
    the untrained model is evaluated on every task (b_k, for FWT; an engram model is
    evaluated gated by its first engram, which allocation does not train).

    Settings: in task-incremental scenarios the task id reaches the model (engram
    models gate by it) and the logits are restricted to the task's classes, in training
    and evaluation (multi-head). Otherwise the model only sees `x`, and engram models
    are evaluated in `engram_inference` mode ("infer" by default).

    The loss is `SparseCategoricalCrossentropy(from_logits=True)` averaged over the
    global batch, plus `model.losses` (so Keras regularizers and `model.add_loss`
    penalties apply, as under `model.fit`).

    Args:
        model: a Keras model returning logits, or a zero-argument callable returning one
            (called inside `strategy.scope()`).
        optimizer: an optimizer (or a Keras identifier such as "adam"), or a
            zero-argument callable returning one. A callable's optimizer starts every
            task in its initial state, as the reference re-creating Adam per task
            (the trainer calls it once and resets it: the same state, and the compiled
            step stays valid); an instance is reset likewise if `reset_optimizer`.
        epochs: epochs per task.
        reset_optimizer: with an optimizer instance, zero its slots and step counter at
            the start of every task.
        engram_inference: "infer" or "union": how engram models are evaluated without a
            task id.
        eval_every_epoch: also evaluate on every task after each epoch
            (`ContinualResult.epoch_accuracies`).
        callbacks: Keras callbacks; `ContinualCallback`s also get task hooks. A
            `PeakMemoryCallback` always runs first (its peaks go into the result).
        strategy: a `tf.distribute.Strategy`; the default strategy if None. With
            `MirroredStrategy` (one machine) or `MultiWorkerMirroredStrategy` (several,
            `TF_CONFIG` on each worker; see the README), pass `model` and `optimizer` as
            callables so they are created in `strategy.scope()`.
        checkpoint_dir: if set, a checkpoint (model, optimizer, R so far) is written after
            every task, and `fit` resumes from it when started again with the same
            scenario.
        jit_compile: compile the train and evaluation steps with XLA: True, False or
            "auto" (default): XLA for every model but an `EngramModel` in sparse
            execution, whose engram-sized shapes XLA cannot compile as one program
            (its block updates are XLA-compiled on their own). XLA halves a dense
            BNN's step on a 2-core CPU (mbnn at 1024-1024: 12.7 -> 6.9 ms).
        seed: if set, `tf.keras.utils.set_random_seed(seed)` at the start of `fit`.
        verbose: 0 silent, 1 progress bar per epoch and a line per task.
    """

    def __init__(
        self,
        model,
        optimizer,
        epochs=1,
        reset_optimizer=True,
        engram_inference="infer",
        eval_every_epoch=False,
        callbacks=None,
        strategy=None,
        checkpoint_dir=None,
        jit_compile="auto",
        seed=None,
        verbose=1,
    ):
        if engram_inference not in ("infer", "union"):
            raise ValueError(
                f"`engram_inference` must be 'infer' or 'union' (no task id at test), got "
                f"{engram_inference!r}."
            )
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"`epochs` must be a positive int, got {epochs!r}.")
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.model = model if isinstance(model, tf.keras.Model) else model()
            if not isinstance(self.model, tf.keras.Model):
                raise TypeError(f"`model` must be a Keras model or a callable returning one, got {model!r}.")
            if isinstance(optimizer, (str, dict)):  # a Keras identifier: "adam", a config
                optimizer = tf.keras.optimizers.get(optimizer)
            if isinstance(optimizer, tf.keras.optimizers.Optimizer):
                self._optimizer_factory, self.optimizer = None, optimizer
            elif callable(optimizer):
                self._optimizer_factory, self.optimizer = optimizer, optimizer()
            else:
                self.optimizer = None
        if not isinstance(self.optimizer, tf.keras.optimizers.Optimizer):
            raise TypeError(
                f"`optimizer` must be a Keras optimizer, an identifier such as 'adam', or a "
                f"callable returning an optimizer; got {optimizer!r}."
            )
        self.epochs = int(epochs)
        self.reset_optimizer = bool(reset_optimizer)
        self.engram_inference = engram_inference
        self.eval_every_epoch = bool(eval_every_epoch)
        self.memory = PeakMemoryCallback()
        self.user_callbacks = list(callbacks or [])
        self.checkpoint_dir = checkpoint_dir
        sparse = isinstance(self.model, EngramModel) and self.model.execution == "sparse"
        if jit_compile == "auto":
            jit_compile = not sparse
        elif jit_compile not in (True, False):
            raise ValueError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")
        elif jit_compile and sparse:
            raise ValueError(
                "jit_compile=True cannot compile a sparse EngramModel's step (its shapes "
                "depend on the engram); use jit_compile='auto' or execution='masked'."
            )
        self.jit_compile = bool(jit_compile)
        self.seed = seed
        self.verbose = int(verbose)
        # (sum of batch losses, correct predictions, examples, batches) of the current
        # epoch, updated on the device by the train step.
        self._sums = tf.Variable(tf.zeros(4), trainable=False, name="epoch_sums")

    # -------------------------------------------------------------- public API
    def fit(self, scenario):
        """Trains through every task of `scenario`; returns a `ContinualResult`."""
        if not isinstance(scenario, Scenario):
            raise TypeError(f"`scenario` must be a larq_engrams.benchmarks.Scenario, got {type(scenario)}.")
        if self.seed is not None:
            tf.keras.utils.set_random_seed(self.seed)
        is_engram = isinstance(self.model, EngramModel)
        if is_engram and self.model.max_tasks < scenario.num_tasks:
            raise ValueError(
                f"the engram model holds {self.model.max_tasks} engrams but the scenario has "
                f"{scenario.num_tasks} tasks; build it with max_tasks >= {scenario.num_tasks}."
            )
        T = self._num_tasks = scenario.num_tasks
        self._mask_table = tf.constant(class_mask_table(scenario)) if scenario.provides_task_id else None
        evaluator = TaskEvaluator(self.model, scenario, self.engram_inference, self.jit_compile)
        callbacks = tf.keras.callbacks.CallbackList(
            [self.memory, *self.user_callbacks], model=self.model, add_progbar=False
        )
        state = self._restore(scenario)
        R = np.full((T, T), np.nan)
        if state:
            R[: state["completed"]] = state["R"]
            baseline = state["baseline"]
            task_seconds, epoch_accuracies = state["task_seconds"], state["epoch_accuracies"]
            self.memory.tasks = state["memory_tasks"]
            self.memory.rss_before_bytes = state["rss_before_bytes"]
            first = state["completed"]
            log.info("Resuming from %s after task %d.", self.checkpoint_dir, first - 1)
        else:
            if is_engram:
                self.model.begin_task(0)  # allocation only: the model is still untrained
            untrained = TaskEvaluator(self.model, scenario, "task", self.jit_compile)
            baseline = untrained.accuracies()
            task_seconds, epoch_accuracies, first = [], [], 0

        for cb in (self.memory, *self.user_callbacks):
            if isinstance(cb, ContinualCallback):
                cb.task_hooks = True  # before on_train_begin: no fit-as-task fallbacks
        callbacks.on_train_begin()
        for t in range(first, T):
            task = scenario[t]
            if is_engram:
                self.model.begin_task(t)
                if not scenario.provides_task_id:  # inputs for "infer"'s task inference
                    self.model.observe_task_data(task.train)
            self._prepare_optimizer(t)
            for cb in (self.memory, *self.user_callbacks):
                if isinstance(cb, ContinualCallback):
                    cb.optimizer = self.optimizer
                    if getattr(cb, "scenario", False) is None:  # penalties that need the data
                        cb.scenario = scenario
                    cb.on_task_begin(t)
            started = time.perf_counter()
            for epoch in range(self.epochs):
                logs = self._train_epoch(task, t, epoch, callbacks)
                if self.eval_every_epoch:
                    epoch_accuracies.append({"task": t, "epoch": epoch, "accuracies": evaluator.accuracies()})
            task_seconds.append(time.perf_counter() - started)
            R[t] = evaluator.accuracies()
            logs = {**logs, "accuracies": R[t].tolist(), "accuracy_matrix": R[: t + 1].tolist()}
            self.memory.on_task_end(t, logs)
            for cb in self.user_callbacks:
                if isinstance(cb, ContinualCallback):
                    cb.on_task_end(t, logs)
            if self.verbose:
                seen = np.mean(R[t, : t + 1])
                print(f"task {t}: {task_seconds[-1]:.1f}s, accuracy on tasks 0..{t}: "
                      + " ".join(f"{100 * a:.1f}" for a in R[t, : t + 1]) + f" (mean {100 * seen:.1f}%)")
            self._checkpoint(scenario, t, R, baseline, task_seconds, epoch_accuracies)
        callbacks.on_train_end()

        result = ContinualResult.from_matrix(
            R,
            baseline,
            task_seconds=task_seconds,
            memory=self.memory.summary(),
            config=self.config(scenario),
            environment=environment(),
            epoch_accuracies=epoch_accuracies,
        )
        if is_engram and self.engram_inference == "infer":
            result.task_inference = evaluator.task_inference_accuracies()
            if result.task_inference is not None:
                result.metrics["task_inference"] = float(np.mean(result.task_inference))
        return result

    def config(self, scenario=None):
        """The run's settings: JSON-serializable."""
        model_config = None
        try:
            model_config = self.model.get_config()
        except NotImplementedError:
            pass
        return {
            "scenario": scenario.describe() if scenario is not None else None,
            "model": {"class": type(self.model).__name__, "name": self.model.name, "config": model_config},
            "optimizer": {k: _plain(v) for k, v in self.optimizer.get_config().items()},
            "trainer": {
                "epochs": self.epochs,
                "reset_optimizer": self.reset_optimizer,
                "optimizer_reset_per_task": self._optimizer_factory is not None or self.reset_optimizer,
                "engram_inference": self.engram_inference,
                "jit_compile": self.jit_compile,
                "seed": self.seed,
                "strategy": type(self.strategy).__name__,
                "replicas": self.strategy.num_replicas_in_sync,
            },
        }

    # ----------------------------------------------------------------- internals
    def _prepare_optimizer(self, task):
        # A factory's optimizer starts every task fresh; resetting it gives the state a
        # new one would have (zero slots, step 0), without retracing the train step.
        fresh = self._optimizer_factory is not None or self.reset_optimizer
        if fresh and self.optimizer.variables():
            for variable in self.optimizer.variables():
                variable.assign(tf.zeros_like(variable))

    def _make_train_step(self):
        model, optimizer, mask_table = self.model, self.optimizer, self._mask_table
        strategy = self.strategy

        def replica_step(x, y):
            x, task_ids = split_task_inputs(x)
            return train_step(model, optimizer, x, y, task_ids, mask_table)

        sums = self._sums

        def step(x, y):
            loss, correct, count = strategy.run(replica_step, args=(x, y))
            reduce = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa: E731
            sums.assign_add(tf.stack([reduce(loss), reduce(correct), reduce(count), 1.0]))

        return tf.function(step, jit_compile=self.jit_compile, reduce_retracing=True)

    def _train_epoch(self, task, t, epoch, callbacks):
        if getattr(self, "_train_step", None) is None:
            self._train_step = self._make_train_step()
        steps = int(task.train.cardinality())
        steps = steps if steps >= 0 else None  # unknown (e.g. joint training's mixture)
        progbar = (
            tf.keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"], unit_name="step")
            if self.verbose else None
        )
        if progbar is not None:
            print(f"task {t + 1}/{self._num_tasks} epoch {epoch + 1}/{self.epochs}")
        callbacks.on_epoch_begin(epoch)
        if isinstance(self.model, EngramModel):  # compact optimizer moments for the epoch
            self.model.load_engram_slots(self.optimizer)
        try:
            logs = self._run_batches(task, callbacks, progbar)
        finally:
            if isinstance(self.model, EngramModel):
                self.model.flush_engram_slots()
        logs = {**logs, "task": t}
        callbacks.on_epoch_end(epoch, logs)
        return logs

    def _run_batches(self, task, callbacks, progbar):
        # Loss, correct predictions and examples are summed on the device by the step;
        # Python reads them only for callbacks with batch hooks and the progress bar.
        self._sums.assign(tf.zeros(4))
        batch_logs = callbacks._should_call_train_batch_hooks  # Keras' own flag
        every = max(1, (progbar.target or 50) // 50) if progbar is not None else None
        batches = 0
        for batch, (x, y) in enumerate(self.strategy.experimental_distribute_dataset(task.train)):
            callbacks.on_train_batch_begin(batch)
            self._train_step(x, y)
            batches = batch + 1
            read = batch_logs or (every is not None and batches % every == 0)
            logs = self._epoch_logs() if read else None
            callbacks.on_train_batch_end(batch, logs)
            if read and progbar is not None and batches != progbar.target:
                progbar.update(batches, list(logs.items()))
        logs = self._epoch_logs()
        if progbar is not None:
            progbar.update(batches, list(logs.items()), finalize=True)
        return logs

    def _epoch_logs(self):
        loss, correct, count, batches = self._sums.numpy().tolist()
        return {"loss": loss / max(batches, 1.0), "accuracy": correct / max(count, 1.0)}

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_object(self):
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)

    def _checkpoint(self, scenario, t, R, baseline, task_seconds, epoch_accuracies):
        if not self.checkpoint_dir:
            return
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        prefix = self._checkpoint_object().write(os.path.join(self.checkpoint_dir, f"after_task_{t}"))
        state = {
            "scenario": _scenario_key(scenario),
            "completed": t + 1,
            "checkpoint": os.path.basename(prefix),
            "R": R[: t + 1].tolist(),
            "baseline": list(map(float, baseline)),
            "task_seconds": task_seconds,
            "epoch_accuracies": epoch_accuracies,
            "memory_tasks": self.memory.tasks,
            "rss_before_bytes": self.memory.rss_before_bytes,
        }
        # The state file names the checkpoint it belongs to and is replaced atomically
        # after the checkpoint is complete: a run killed mid-write resumes from the
        # previous task.
        write_atomically(os.path.join(self.checkpoint_dir, _STATE_FILE), json.dumps(state, indent=1))

    def _restore(self, scenario):
        if not self.checkpoint_dir:
            return None
        path = os.path.join(self.checkpoint_dir, _STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            state = json.load(f)
        if state["scenario"] != _scenario_key(scenario):
            raise ValueError(
                f"{path} belongs to a different scenario ({state['scenario']}) than this run "
                f"({_scenario_key(scenario)}); use another checkpoint_dir or delete it."
            )
        with self.strategy.scope():  # slots must exist to be restored (build is idempotent)
            self.optimizer.build(self.model.trainable_variables)
        self._checkpoint_object().read(os.path.join(self.checkpoint_dir, state["checkpoint"])).assert_existing_objects_matched()
        if isinstance(self.model, EngramModel):
            self.model.begin_task(state["completed"] - 1)
        return state


def _scenario_key(scenario):
    return {"name": scenario.name, "setting": scenario.setting, "num_tasks": scenario.num_tasks,
            "source": scenario.source}


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return value
    return str(value)
