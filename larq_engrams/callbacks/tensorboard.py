"""TensorBoard logging of a continual run: losses, engram observables, metaplasticity,
the accuracy matrix and memory peaks."""
import numpy as np
import tensorflow as tf

from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.plots import figure_to_png, plot_accuracy_matrix, plot_engram_overlap

__all__ = ["EngramTensorBoard"]


class EngramTensorBoard(ContinualCallback):
    """Writes TensorBoard summaries for continual learning with engrams.

    Each group (the tag's first part, a section of TensorBoard's pages) has one x axis:

    - `train/`, step = training step, counted across tasks: `loss` and `accuracy` (%)
      from the batch logs, every `update_freq` steps.
    - `engram/`, step = training step, counted across tasks: `activation_rate/<layer>`
      (% of the layer's units non-zero in the last step: engram size x reactivation),
      every `update_freq` steps; `size/<layer>` (|E_t| / N in %) when task t begins;
      `overlap/<layer>` (an image: the tasks x tasks heat map of |E_s and E_t| / N,
      sizes on its diagonal) and `unit_usage/<layer>` (a histogram of u_i, how many
      engrams each unit belongs to) when each task ends.
    - `metaplasticity/`, step = training step: for `MetaplasticAdam`,
      `attenuated_fraction/<kernel>`, the % of hidden weights whose update is
      attenuated, at each epoch end (where the optimizer's slots are exact also under
      sparse engram training).
    - `eval/`, step = task index t: `accuracy/task_<k>` (%) for the tasks trained so far
      (k <= t), `acc_seen` (their mean, %), and `accuracy_matrix` (an image).
    - `memory/`, step = task index: `peak_rss_mib`, `peak_gpu_mib` (when a
      `PeakMemoryCallback` put them in the logs).

    View with `tensorboard --logdir <log_dir>`. The eval curves have one point per
    task: set the Smoothing slider to 0 to read them as measured.
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
        """An `EngramModel`'s, or the engram layers of any other Keras model."""
        layers = getattr(self.model, "engram_layers", None)
        if layers is None:
            layers = [layer for layer in getattr(self.model, "layers", []) if hasattr(layer, "engram_mask")]
        return list(layers)

    def _optimizer(self):
        return self.optimizer or getattr(self.model, "optimizer", None)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.update_freq:
            return
        logs = logs or {}
        with self.writer.as_default(step=self.step):
            if "loss" in logs:
                tf.summary.scalar("train/loss", float(logs["loss"]))
            if "accuracy" in logs:
                tf.summary.scalar("train/accuracy", 100.0 * float(logs["accuracy"]))
            for layer in self._engram_layers():
                tf.summary.scalar(f"engram/activation_rate/{layer.name}", 100.0 * float(layer.activation_rate))

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
                tf.summary.scalar(f"metaplasticity/attenuated_fraction/{path}", 100.0 * value)

    def on_task_begin(self, task, logs=None):
        with self.writer.as_default(step=self.step):
            for layer in self._engram_layers():
                if task in layer.allocated_tasks:
                    tf.summary.scalar(f"engram/size/{layer.name}", 100.0 * float(layer.engram_mask(task).mean()))

    def on_task_end(self, task, logs=None):
        logs = logs or {}
        with self.writer.as_default(step=self.step):
            for layer in self._engram_layers():
                tasks = layer.allocated_tasks
                if not tasks:
                    continue
                overlap = layer.overlap_matrix(tasks)
                png = figure_to_png(plot_engram_overlap(overlap, tasks, title=(
                    f"{layer.name}: overlap |E_s ∩ E_t| / N (%)\nafter task {task}")))
                tf.summary.image(f"engram/overlap/{layer.name}", tf.image.decode_png(png, channels=4)[None])
                tf.summary.histogram(f"engram/unit_usage/{layer.name}", layer.usage.astype(np.float32),
                                     buckets=max(1, len(tasks) + 1))
        with self.writer.as_default(step=task):
            row = logs.get("accuracies")
            if row is not None:
                seen = np.asarray(row[: task + 1], np.float64)
                for k, value in enumerate(seen):
                    tf.summary.scalar(f"eval/accuracy/task_{k}", 100.0 * float(value))
                tf.summary.scalar("eval/acc_seen", 100.0 * float(np.nanmean(seen)))
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
