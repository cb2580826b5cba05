"""`ContinualTrainer`: trains a model through the tasks of a scenario with a custom
tf.data loop and fills the accuracy matrix."""
import logging
import time

import numpy as np
import tensorflow as tf

from larq_engrams import metrics as metrics_module, protocol
from larq_engrams.arguments import check_choice, check_positive_int
from larq_engrams.benchmarks.scenario import Scenario
from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.callbacks.memory import PeakMemoryCallback
from larq_engrams.evaluation import TaskEvaluator
from larq_engrams.results import ContinualResult, environment
from larq_engrams.task_inputs import class_mask_table, split_task_inputs
from larq_engrams.training.checkpoints import CheckpointError, TaskCheckpoints
from larq_engrams.training.step import train_step

__all__ = ["ContinualTrainer", "CheckpointError"]

log = logging.getLogger("larq_engrams.training")


class ContinualTrainer:
    """Sequences the tasks of a `Scenario` through a model and measures forgetting.

    For each task t: `model.begin_task(t)` and, without task ids at test,
    `model.observe_task_data(task.train)` (engram models), optimizer reset or
    re-creation, `epochs` epochs of a `tf.function` train step over `task.train`, then
    evaluation on every task's test set, which fills row t of R. Before the first task
    the untrained model is evaluated on every task (b_k, for FWT; an engram model is
    evaluated gated by its first engram, which allocation does not train; in task-IL,
    where the task id picks the engram, tasks without an engram yet have no accuracy:
    NaN in b, above R's diagonal and in FWT).

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
        batchnorm_evaluation: "moving" (BatchNorm's moving statistics, the default) or
            "batch" (each mixed-task test batch normalized by its own statistics, as in
            Laborieux et al.'s reference code; `TaskEvaluator`), for R and for b.
        eval_every_epoch: also evaluate on every task after each epoch
            (`ContinualResult.epoch_accuracies`).
        future_tasks: the tasks not yet trained that R[t] measures: "all" (default,
            the whole row) or "next" (task t + 1 only, all that FWT reads; the entries
            beyond it stay NaN), which roughly halves the evaluation of long task
            sequences. ACC, BWT, FWT, learning and average incremental accuracy are the
            same either way; forgetting's max then runs over the rows from t = k - 1
            on, so it differs only where task k scored higher before it was trained than
            at any time after.
        evaluate_every: k: the past tasks are evaluated after every k-th task and after
            the last (1, the default: after every task). In between, a row measures
            only its own task (the learning accuracy) and the next one.
        past_tasks: n: a scheduled row measures n of its past tasks besides its own, the
            first n of them in one seeded order of the sequence; None: all of them. The
            last row is always complete. With either option, ACC, BWT, FWT and the learning
            accuracy stay exact; forgetting and the average incremental accuracy are
            estimated from the measured rows, and the result says so
            (`config["trainer"]["evaluation"]`, `metrics.estimated_metrics`). At T = 200
            the full matrix is 20,100 task evaluations; every 10 tasks with 20 past
            tasks, about 1,000.
        callbacks: Keras callbacks; `ContinualCallback`s also get task hooks. A
            `PeakMemoryCallback` always runs first (its peaks go into the result).
        strategy: a `tf.distribute.Strategy`; the default strategy if None. With
            `MirroredStrategy` (one machine) or `MultiWorkerMirroredStrategy` (several,
            `TF_CONFIG` on each worker; see the README), pass `model` and `optimizer` as
            callables so they are created in `strategy.scope()`.
        checkpoint_dir: if set, a checkpoint is written after every task and `fit`
            resumes from the last one when started again with the same scenario: the
            model, the optimizer, every `ContinualCallback`'s state (regularizers' and
            LwF's included, `ContinualCallback.checkpoint_variables` / `get_state`),
            the training pipelines' shuffle positions (`ShuffleOrder`), R so far and
            the memory records, so a resumed run gives the R of one run straight
            through. A run killed at any point resumes from the last task boundary;
            the previous checkpoint is removed only once the new one is complete.
            Under `MultiWorkerMirroredStrategy` every worker takes part in writing
            (TensorFlow requires it) and only the chief's copy is kept.
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
        batchnorm_evaluation="moving",
        eval_every_epoch=False,
        future_tasks="all",
        evaluate_every=1,
        past_tasks=None,
        callbacks=None,
        strategy=None,
        checkpoint_dir=None,
        jit_compile="auto",
        seed=None,
        verbose=1,
    ):
        check_choice("engram_inference", engram_inference, ("infer", "union"), owner="ContinualTrainer")
        epochs = check_positive_int("epochs", epochs, owner="ContinualTrainer")
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
        self.batchnorm_evaluation = check_choice("batchnorm_evaluation", batchnorm_evaluation, ("moving", "batch"),
                                                 owner="ContinualTrainer")
        self.eval_every_epoch = bool(eval_every_epoch)
        self.future_tasks = check_choice("future_tasks", future_tasks, ("all", "next"), owner="ContinualTrainer")
        self.evaluate_every = check_positive_int("evaluate_every", evaluate_every, owner="ContinualTrainer")
        self.past_tasks = check_positive_int("past_tasks", past_tasks, owner="ContinualTrainer", allow_none=True)
        self.memory = PeakMemoryCallback()
        self.user_callbacks = list(callbacks or [])
        self.checkpoint_dir = checkpoint_dir
        self._checkpoints = TaskCheckpoints(checkpoint_dir, self.strategy)
        compiles = protocol.compiles_step(self.model)
        if jit_compile == "auto":
            jit_compile = compiles
        elif jit_compile not in (True, False):
            raise ValueError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")
        elif jit_compile and not compiles:
            raise ValueError(
                f"jit_compile=True cannot compile {type(self.model).__name__}'s step (e.g. a sparse "
                "EngramModel's shapes depend on the engram); use jit_compile='auto' (or execution='masked', protect_engrams=False)."
            )
        self.jit_compile = bool(jit_compile)
        self.seed = seed
        self.verbose = int(verbose)
        # (sum of batch losses, correct predictions, examples, batches) of the current
        # epoch, updated on the device by the train step.
        self._sums = tf.Variable(tf.zeros(4), trainable=False, name="epoch_sums")
        # The first batch of the epoch with a non-finite input, a label outside
        # [0, outputs), a non-finite loss (inf: none): checked whenever the sums are read.
        self._health = tf.Variable(tf.fill([3], np.inf), trainable=False, name="epoch_health")

    # -------------------------------------------------------------- public API
    def fit(self, scenario):
        """Trains through every task of `scenario`; returns a `ContinualResult`."""
        if not isinstance(scenario, Scenario):
            raise TypeError(f"`scenario` must be a larq_engrams.benchmarks.Scenario, got {type(scenario)}.")
        if self.seed is not None:
            tf.keras.utils.set_random_seed(self.seed)
        protocol.check_scenario(self.model, scenario)
        self._check_scenario(scenario)
        T = self._num_tasks = scenario.num_tasks
        self._mask_table = tf.constant(class_mask_table(scenario)) if scenario.provides_task_id else None
        evaluator = TaskEvaluator(self.model, scenario, self.engram_inference, self.jit_compile,
                                  batchnorm=self.batchnorm_evaluation, seed=self.seed or 0)
        callbacks = tf.keras.callbacks.CallbackList(
            [self.memory, *self.user_callbacks], model=self.model, add_progbar=False
        )
        self._batch_hooks = _has_batch_hooks([self.memory, *self.user_callbacks])
        state = self._restore(scenario)
        R = np.full((T, T), np.nan)
        if state:
            R[: state["completed"]] = state["R"]
            baseline = state["baseline"]
            task_seconds, epoch_accuracies = state["task_seconds"], state["epoch_accuracies"]
            observe_seconds = state.get("observe_seconds", [])
            self.memory.tasks = state["memory_tasks"]
            self.memory.rss_before_bytes = state["rss_before_bytes"]
            first = state["completed"]
            log.info("Resuming from %s after task %d.", self.checkpoint_dir, first - 1)
        else:
            protocol.begin_task(self.model, 0)  # e.g. an engram's allocation: the model is still untrained
            untrained = TaskEvaluator(self.model, scenario, "task", self.jit_compile,
                                      batchnorm=self.batchnorm_evaluation, seed=self.seed or 0)
            baseline = untrained.accuracies()
            task_seconds, observe_seconds, epoch_accuracies, first = [], [], [], 0

        for cb in (self.memory, *self.user_callbacks):
            if isinstance(cb, ContinualCallback):
                cb.task_hooks = True  # before on_train_begin: no fit-as-task fallbacks
        callbacks.on_train_begin()
        try:
            for t in range(first, T):
                task = scenario[t]
                protocol.begin_task(self.model, t)
                if not scenario.provides_task_id:  # e.g. the inputs an engram model's router needs
                    observed = time.perf_counter()
                    protocol.observe_task_data(self.model, task.train)
                    observe_seconds.append(time.perf_counter() - observed)
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
                protocol.end_task(self.model, t)
                task_seconds.append(time.perf_counter() - started)
                measured = self._row_tasks(t, T)
                R[t, measured] = evaluator.accuracies([scenario.tasks[k] for k in measured])
                logs = {**logs, "accuracies": R[t].tolist(), "accuracy_matrix": R[: t + 1].tolist()}
                self.memory.on_task_end(t, logs)
                for cb in self.user_callbacks:
                    if isinstance(cb, ContinualCallback):
                        cb.on_task_end(t, logs)
                if self.verbose:
                    seen = np.nanmean(R[t, : t + 1])
                    print(f"task {t} ({t + 1} of {T}) done in {task_seconds[-1]:.1f}s; accuracy % "
                          f"on tasks 0..{t}: "
                          + " ".join("·" if np.isnan(a) else f"{100 * a:.1f}" for a in R[t, : t + 1])
                          + f" (mean {100 * seen:.1f}%)")
                self._checkpoint(scenario, t, R, baseline, task_seconds, epoch_accuracies, observe_seconds)
        except BaseException:
            self.memory.abort()  # no sampler thread outlives a failed or interrupted run
            raise
        callbacks.on_train_end()

        memory = self.memory.summary()
        # What the method keeps besides its network's weights (protocol.state_bytes).
        memory["state_bytes"] = protocol.state_bytes(self.model, self.user_callbacks)
        result = ContinualResult.from_matrix(
            R,
            baseline,
            task_seconds=task_seconds,
            observe_seconds=observe_seconds or None,
            memory=memory,
            config=self.config(scenario),
            environment=environment(),
            epoch_accuracies=epoch_accuracies,
        )
        result.config["trainer"]["evaluation"]["estimated"] = metrics_module.estimated_metrics(R)
        if self.engram_inference == "infer":
            result.task_inference = evaluator.task_inference_accuracies()
            if result.task_inference is not None:
                result.metrics["task_inference"] = float(np.mean(result.task_inference))
        return result

    def _check_scenario(self, scenario):
        """Clear errors, before any step, for data the model cannot train on."""
        try:
            outputs = int(self.model.output_shape[-1])
        except (AttributeError, RuntimeError, TypeError):  # a subclassed model not built yet
            outputs = scenario.num_classes
        self._num_outputs = outputs
        if scenario.num_tasks < 1:
            raise ValueError("ContinualTrainer: the scenario has no tasks.")
        try:
            shape = self.model.input_shape
        except (AttributeError, RuntimeError):  # not built yet
            shape = None
        # Sizes, not shapes: models that flatten take (28, 28) or (784,) alike. (A list:
        # several inputs, such as (x, task id), which the model checks itself.)
        if (isinstance(shape, tuple) and None not in shape[1:]
                and int(np.prod(shape[1:])) != int(np.prod(scenario.input_shape))):
            raise ValueError(
                f"ContinualTrainer: the model takes inputs of shape {tuple(shape[1:])} but the scenario's are "
                f"{tuple(scenario.input_shape)}; build the model with input_shape=scenario.input_shape.")
        for task in scenario:
            if not task.num_train or not task.num_test or int(task.train.cardinality()) == 0:
                raise ValueError(
                    f"ContinualTrainer: task {task.task_id} is empty ({task.num_train} training and "
                    f"{task.num_test} evaluation examples); every task needs both.")
            outside = [c for c in task.labels if not 0 <= int(c) < outputs]
            if outside:
                raise ValueError(
                    f"ContinualTrainer: task {task.task_id} has labels {outside} outside [0, {outputs}): "
                    f"the model has {outputs} outputs and the scenario {scenario.num_classes} classes.")

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
                "batchnorm_evaluation": self.batchnorm_evaluation,
                "future_tasks": self.future_tasks,
                "evaluation": {"evaluate_every": self.evaluate_every, "past_tasks": self.past_tasks},
                "jit_compile": self.jit_compile,
                "seed": self.seed,
                "strategy": type(self.strategy).__name__,
                "replicas": self.strategy.num_replicas_in_sync,
            },
        }

    # ----------------------------------------------------------------- internals
    def _row_tasks(self, t, T):
        """The tasks row t of R measures (`evaluate_every`, `past_tasks`, `future_tasks`)."""
        ahead = list(range(t + 1, T if self.future_tasks == "all" else min(t + 2, T)))
        if t < T - 1 and (t + 1) % self.evaluate_every:
            return [t, *ahead[:1]]  # the learning accuracy, and the next task for FWT
        past = list(range(t))
        if self.past_tasks is not None and t < T - 1 and t > self.past_tasks:
            # A seeded sample: the first n past tasks in one fixed order of the sequence.
            order = np.random.default_rng(self.seed or 0).permutation(T)
            past = sorted(int(k) for k in order[order < t][: self.past_tasks])
        return [*past, t, *ahead]

    def _prepare_optimizer(self, task):
        # A factory's optimizer starts every task fresh; resetting it gives the state a
        # new one would have (zero slots, step 0), without retracing the train step.
        fresh = self._optimizer_factory is not None or self.reset_optimizer
        if fresh and self.optimizer.variables():
            for variable in self.optimizer.variables():
                variable.assign(tf.zeros_like(variable))
        # Slots made now, not inside the first step: a tf.function that creates variables
        # is traced twice.
        self._build_optimizer()

    def _build_optimizer(self):
        """Builds the optimizer (a no-op once built). With an optimizer fresh at every
        task, an engram model's gets task-scoped moments: no full-size slots for the
        engram blocks, whose moments live compact for the task, then go, as a fresh
        optimizer's would (`EngramModel.build_task_optimizer`)."""
        fresh = self._optimizer_factory is not None or self.reset_optimizer
        with self.strategy.scope():
            if fresh:
                protocol.build_task_optimizer(self.model, self.optimizer)
            else:
                self.optimizer.build(self.model.trainable_variables)

    def _make_train_step(self, element_spec):
        model, optimizer, mask_table = self.model, self.optimizer, self._mask_table
        strategy = self.strategy

        outputs = self._num_outputs

        def replica_step(x, y):
            x, task_ids = split_task_inputs(x)
            # Checked before the step, whose ops may raise on such labels (reported then
            # with this context by `_run_batches`) or silently give NaN (XLA, GPU).
            bad_inputs = tf.logical_not(tf.reduce_all(tf.math.is_finite(x))) if x.dtype.is_floating else False
            y_int = tf.cast(y, tf.int32)
            bad_labels = tf.reduce_any((y_int < 0) | (y_int >= outputs))
            loss, correct, count = train_step(model, optimizer, x, y, task_ids, mask_table)
            return loss, correct, count, tf.cast(tf.stack([bad_inputs, bad_labels]), tf.float32)

        sums, health = self._sums, self._health

        def step(x, y):
            loss, correct, count, problems = strategy.run(replica_step, args=(x, y))
            reduce = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa: E731
            loss, problems = reduce(loss), reduce(problems)
            flags = tf.stack([problems[0] > 0, problems[1] > 0, tf.logical_not(tf.math.is_finite(loss))])
            health.assign(tf.minimum(health, tf.where(flags, sums[3], np.inf)))
            sums.assign_add(tf.stack([loss, reduce(correct), reduce(count), 1.0]))

        # One trace for every batch size (the last batch of an epoch is smaller), from the
        # data's own spec: tracing costs far more than these small steps.
        return tf.function(step, input_signature=element_spec, jit_compile=self.jit_compile)

    def _train_epoch(self, task, t, epoch, callbacks):
        where = f"task {t}, epoch {epoch + 1}/{self.epochs}"
        steps = int(task.train.cardinality())
        steps = steps if steps >= 0 else None  # unknown (e.g. joint training's mixture)
        progbar = (
            tf.keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"], unit_name="step")
            if self.verbose else None
        )
        if progbar is not None:
            # Tasks are named by their 0-based id everywhere (R, plots, logs); epochs count from 1, as in Keras.
            print(f"task {t} ({t + 1} of {self._num_tasks}), epoch {epoch + 1}/{self.epochs}")
        callbacks.on_epoch_begin(epoch)
        protocol.begin_epoch(self.model, self.optimizer)  # e.g. an engram's compact optimizer moments
        try:
            logs = self._run_batches(task, callbacks, progbar, where)
        finally:
            protocol.end_epoch(self.model)
        logs = {**logs, "task": t}
        callbacks.on_epoch_end(epoch, logs)
        return logs

    def _run_batches(self, task, callbacks, progbar, where):
        # Loss, correct predictions and examples are summed on the device by the step;
        # Python reads them only for callbacks with batch hooks and the progress bar.
        self._sums.assign(tf.zeros(4))
        self._health.assign(tf.fill([3], np.inf))
        batch_logs = self._batch_hooks
        every = max(1, (progbar.target or 50) // 50) if progbar is not None else 50
        batches = 0
        data = self.strategy.experimental_distribute_dataset(task.train)
        if getattr(self, "_train_step_spec", None) != data.element_spec:
            self._train_step = self._make_train_step(data.element_spec)
            self._train_step_spec = data.element_spec
        for batch, (x, y) in enumerate(data):
            callbacks.on_train_batch_begin(batch)
            try:
                self._train_step(x, y)
            except tf.errors.InvalidArgumentError as error:
                # Where the step's own ops refuse bad labels (CPU), say so as the check does.
                labels = np.concatenate([np.ravel(v) for v in self.strategy.experimental_local_results(y)])
                outside = sorted(set(labels[(labels < 0) | (labels >= self._num_outputs)].tolist()))
                problem = f"a label outside [0, {self._num_outputs}) ({outside[:5]})" if outside else "the train step failed"
                raise ValueError(f"ContinualTrainer: {problem} at {where}, step {batch + 1}: {error.message}") from error
            batches = batch + 1
            read = batch_logs or batches % every == 0
            logs = self._epoch_logs(where) if read else None
            callbacks.on_train_batch_end(batch, logs)
            if read and progbar is not None and batches != progbar.target:
                progbar.update(batches, list(logs.items()))
        if batches == 0:
            raise ValueError(f"ContinualTrainer: the training data of {where} is empty.")
        logs = self._epoch_logs(where)
        if progbar is not None:
            progbar.update(batches, list(logs.items()), finalize=True)
        return logs

    def _epoch_logs(self, where):
        self._check_health(where)
        loss, correct, count, batches = self._sums.numpy().tolist()
        return {"loss": loss / max(batches, 1.0), "accuracy": correct / max(count, 1.0)}

    def _check_health(self, where):
        """Stops training at the first sign of bad data or divergence, before anything
        is checkpointed: the last good checkpoint (the previous task's) stays."""
        first = self._health.numpy()
        if not np.isfinite(first).any():
            return
        kept = (f" The last good checkpoint, in {self.checkpoint_dir}, is kept: run again to resume from it."
                if self.checkpoint_dir else "")
        problem = int(np.argmin(first))  # the earliest; at one step, bad data before the loss
        step = int(first[problem]) + 1
        if problem == 0:
            raise FloatingPointError(f"ContinualTrainer: NaN or Inf in the inputs at {where}, step {step}: "
                                     f"check the data.{kept}")
        if problem == 1:
            raise ValueError(f"ContinualTrainer: a label outside [0, {self._num_outputs}) at {where}, step "
                             f"{step}: the model has {self._num_outputs} outputs.{kept}")
        raise FloatingPointError(f"ContinualTrainer: the loss is NaN or Inf at {where}, step {step} (the inputs "
                                 f"are finite): lower the learning rate or the regularization strength.{kept}")

    # ------------------------------------------------------------- checkpoints
    def _stateful_callbacks(self):
        """The callbacks whose state a checkpoint holds (those without state may differ
        between the run that wrote it and the one that resumes)."""
        return [cb for cb in self.user_callbacks
                if isinstance(cb, ContinualCallback) and (cb.checkpoint_variables() or cb.get_state())]

    def _checkpoint_object(self, scenario):
        callbacks = {f"callback_{i}": tf.train.Checkpoint(**cb.checkpoint_variables())
                     for i, cb in enumerate(self._stateful_callbacks())}
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                   callbacks=tf.train.Checkpoint(**callbacks),
                                   data=tf.train.Checkpoint(**scenario.data_state()))

    def _checkpoint(self, scenario, t, R, baseline, task_seconds, epoch_accuracies, observe_seconds):
        self._checkpoints.save(t, self._checkpoint_object(scenario), {
            "scenario": _scenario_key(scenario),
            "R": R[: t + 1].tolist(),
            "baseline": list(map(float, baseline)),
            "task_seconds": task_seconds,
            "observe_seconds": observe_seconds,
            "epoch_accuracies": epoch_accuracies,
            "memory_tasks": self.memory.tasks,
            "rss_before_bytes": self.memory.rss_before_bytes,
            "callbacks": [{"class": type(cb).__name__, "state": cb.get_state()}
                          for cb in self._stateful_callbacks()],
        })

    def _restore(self, scenario):
        callbacks = self._stateful_callbacks()
        state = self._checkpoints.load_state(_scenario_key(scenario), [type(cb).__name__ for cb in callbacks])
        if state is None:
            return None
        self._build_optimizer()  # slots must exist to be restored, built as the run built them
        self._checkpoints.restore(self._checkpoint_object(scenario), state)
        for cb, entry in zip(callbacks, state["callbacks"]):
            cb.set_state(entry["state"])
        protocol.begin_task(self.model, state["completed"] - 1)
        return state


def _has_batch_hooks(callbacks):
    """Whether a callback overrides a per-batch training hook (else the step's sums are
    read from the device only for the progress bar)."""
    base = tf.keras.callbacks.Callback
    names = ("on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end")
    return any(getattr(type(cb), n) is not getattr(base, n) for cb in callbacks for n in names)


def _scenario_key(scenario):
    return {"name": scenario.name, "setting": scenario.setting, "num_tasks": scenario.num_tasks,
            "source": scenario.source}


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return value
    return str(value)
