"""TensorBoard logging of a continual run: losses, engram observables, metaplasticity,
the accuracy matrix and memory peaks."""
import itertools

import numpy as np
import tensorflow as tf

from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.layers import EngramDense
from larq_engrams.plots import figure_to_png, plot_accuracy_matrix

__all__ = ["EngramTensorBoard"]


class EngramTensorBoard(ContinualCallback):
    """Writes TensorBoard summaries for continual learning with engrams.

    Tags (step = global training step across tasks unless noted):
      - `train/loss`, `train/accuracy`: batch logs, every `update_freq` steps;
      - `engram/activation_rate/<layer>`: fraction of the layer's units that were
        non-zero in the last step (engram size x reactivation), every `update_freq` steps;
      - `metaplasticity/attenuated_fraction/<kernel>`: for `MetaplasticAdam`, the
        fraction of hidden weights whose update is attenuated, at each epoch end (where
        the optimizer's slots are exact also under sparse engram training);
      - `engram/size/<layer>`, `engram/overlap/<layer>/<s>-<t>` (|E_s and E_t| / N): at
        each task start, step = task index;
      - `eval/accuracy/task_<k>`, `eval/acc_seen`, `eval/accuracy_matrix` (an image): at
        each task end, step = task index;
      - `memory/peak_rss_mib`, `memory/peak_gpu_mib` (when a `PeakMemoryCallback` put them
        in the logs): at each task end.

    View with `tensorboard --logdir <log_dir>`.
    """

    def __init__(self, log_dir, update_freq=10):
        super().__init__()
        self.log_dir = str(log_dir)
        self.update_freq = int(update_freq)
        self.optimizer = None  # set by ContinualTrainer; else model.optimizer
        self._writer = None
        self.step = 0

    @property
    def writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def get_state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = int(state["step"])

    def _engram_layers(self):
        return [layer for layer in getattr(self.model, "layers", []) if isinstance(layer, EngramDense)] or [
            layer for layer in getattr(self.model, "engram_layers", [])
        ]

    def _optimizer(self):
        return self.optimizer or getattr(self.model, "optimizer", None)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.update_freq:
            return
        logs = logs or {}
        with self.writer.as_default(step=self.step):
            for key in ("loss", "accuracy"):
                if key in logs:
                    tf.summary.scalar(f"train/{key}", float(logs[key]))
            for layer in self._engram_layers():
                tf.summary.scalar(f"engram/activation_rate/{layer.name}", float(layer.activation_rate))

    def on_epoch_end(self, epoch, logs=None):
        fractions = getattr(self._optimizer(), "attenuated_fractions", None)
        if fractions is None:
            return
        fractions = fractions()
        cache = getattr(self.model, "slot_cache", None)  # engram models' task-scoped moments
        if cache is not None:
            fractions.update(cache.attenuated_fractions())
        with self.writer.as_default(step=self.step):
            for path, value in fractions.items():
                tf.summary.scalar(f"metaplasticity/attenuated_fraction/{path}", value)

    def on_task_begin(self, task, logs=None):
        with self.writer.as_default(step=task):
            for layer in self._engram_layers():
                tasks = layer.allocated_tasks
                if task in tasks:
                    tf.summary.scalar(f"engram/size/{layer.name}", float(layer.engram_mask(task).mean()))
                for s, t in itertools.combinations(tasks, 2):
                    tf.summary.scalar(f"engram/overlap/{layer.name}/{s}-{t}", layer.overlap(s, t))

    def on_task_end(self, task, logs=None):
        logs = logs or {}
        with self.writer.as_default(step=task):
            row = logs.get("accuracies")
            if row is not None:
                for k, value in enumerate(row):
                    tf.summary.scalar(f"eval/accuracy/task_{k}", float(value))
                tf.summary.scalar("eval/acc_seen", float(np.mean(row[: task + 1])))
            matrix = logs.get("accuracy_matrix")
            if matrix is not None:
                png = figure_to_png(plot_accuracy_matrix(matrix, title=f"R after task {task}"))
                tf.summary.image("eval/accuracy_matrix", tf.image.decode_png(png, channels=4)[None])
            for key, tag in (("peak_rss_bytes", "memory/peak_rss_mib"), ("peak_gpu_bytes", "memory/peak_gpu_mib")):
                if logs.get(key) is not None:
                    tf.summary.scalar(tag, logs[key] / 2**20)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
