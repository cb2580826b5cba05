"""Peak GPU and host memory per task (docs/method.md, section 7)."""
import os
import threading
import time

import tensorflow as tf

from larq_engrams.callbacks.base import ContinualCallback

__all__ = ["PeakMemoryCallback", "current_rss_bytes"]


def current_rss_bytes():
    """Resident set size of this process, in bytes."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is a dependency
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _read_vmhwm_bytes():
    """Linux' high-water mark of the resident set (VmHWM), or None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_vmhwm():
    """Resets VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler(threading.Thread):
    """Samples the RSS every `interval` seconds until stopped; keeps the maximum."""

    def __init__(self, interval, initial):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = initial
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())

    def stop(self):
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak


class PeakMemoryCallback(ContinualCallback):
    """Records, per task and overall, the peak GPU memory and the peak host RSS.

    - GPU (where one exists): `tf.config.experimental.reset_memory_stats(device)` at
      task start, `get_memory_info(device)["peak"]` at task end, per GPU. Without a GPU
      the GPU entries are None ("absent"), never an error. Where the reset fails (an
      allocator without it), the peak read at the task's end is the process' lifetime
      peak: it is recorded as such (`peak_gpu_scope: "lifetime"`, else "task"), with
      the reason, never passed off as the task's; a peak that cannot be read is None.
    - Host: the RSS before training (at the start of the first task), each task's RSS
      at its start, and the peak RSS during each task (never below its start): the larger of
      Linux' VmHWM (reset at task start through /proc/self/clear_refs) and an RSS
      sampled every `sample_interval` seconds by a background thread (which also
      covers systems without VmHWM). `ru_maxrss` is a lifetime maximum and is not used.

    Results: `self.tasks` (a list of dicts, one per task), `self.summary()`, and the
    keys `peak_rss_bytes`, `rss_before_bytes`, `peak_gpu_bytes` added to the logs of
    `on_task_end` (and of `on_train_end` under plain `model.fit`).
    """

    def __init__(self, sample_interval=0.05):
        super().__init__()
        self.sample_interval = float(sample_interval)
        self.rss_before_bytes = None
        self.tasks = []
        self._sampler = None
        self._task = None
        self._gpu_reset_errors = {}

    @staticmethod
    def gpu_devices():
        return [d.name.replace("/device:", "") for d in tf.config.list_logical_devices("GPU")]

    # -------------------------------------------------------------- measuring
    def _begin(self, task):
        # One reading for the task's start: it is the first sample of the task's peak
        # (a peak over an interval includes its start) and, for the first task, the RSS
        # before training. Two readings could disagree as memory is freed in between.
        start = current_rss_bytes()
        if self.rss_before_bytes is None:
            self.rss_before_bytes = start
        self._gpu_reset_errors = {}
        for device in self.gpu_devices():
            try:
                tf.config.experimental.reset_memory_stats(device)
            except (ValueError, tf.errors.OpError) as error:
                self._gpu_reset_errors[device] = str(error).splitlines()[0]
        self._vmhwm_reset = _reset_vmhwm()
        self._sampler = _RssSampler(self.sample_interval, initial=start)
        self._sampler.start()
        self._start_rss = start
        self._task = task
        self._started = time.perf_counter()

    def _end(self, logs):
        if self._sampler is None:
            return
        sampled = self._sampler.stop()
        self._sampler = None
        hwm = _read_vmhwm_bytes() if self._vmhwm_reset else None
        gpu = {}
        for device in self.gpu_devices():
            try:
                gpu[device] = int(tf.config.experimental.get_memory_info(device)["peak"])
            except (ValueError, tf.errors.OpError):
                gpu[device] = None
        record = {
            "task": self._task,
            "rss_before_bytes": self.rss_before_bytes,
            "rss_at_start_bytes": self._start_rss,
            "peak_rss_bytes": max(sampled, hwm or 0),
            "peak_rss_method": "VmHWM+sampled" if hwm else "sampled",
            "peak_gpu_bytes": max(gpu.values()) if gpu and None not in gpu.values() else None,
            "peak_gpu_bytes_per_device": gpu or None,
            "peak_gpu_scope": (None if not gpu else "lifetime" if self._gpu_reset_errors else "task"),
            "peak_gpu_reset_errors": self._gpu_reset_errors or None,
            "seconds": time.perf_counter() - self._started,
        }
        self.tasks.append(record)
        if logs is not None:
            logs.update({k: record[k] for k in ("peak_rss_bytes", "rss_before_bytes", "peak_gpu_bytes",
                                                "peak_gpu_scope")})

    def abort(self):
        """Stops measuring the current task without recording it (a run that failed)."""
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    def summary(self):
        """Overall peaks across tasks: a JSON-serializable dict."""
        gpu = [t["peak_gpu_bytes"] for t in self.tasks]
        scopes = {t.get("peak_gpu_scope") for t in self.tasks} - {None}
        return {
            "rss_before_bytes": self.rss_before_bytes,
            "peak_rss_bytes": max((t["peak_rss_bytes"] for t in self.tasks), default=None),
            "peak_gpu_bytes": max(gpu) if gpu and None not in gpu else None,
            "peak_gpu_scope": ("lifetime" if "lifetime" in scopes else "task") if scopes else None,
            "gpu_devices": self.gpu_devices(),
            "tasks": list(self.tasks),
        }

    # ------------------------------------------------------------------ hooks
    def on_task_begin(self, task, logs=None):
        self._begin(task)

    def on_task_end(self, task, logs=None):
        self._end(logs)

    def on_train_begin(self, logs=None):
        if not self.task_hooks:  # plain model.fit: each fit is one task
            self._begin(len(self.tasks))

    def on_train_end(self, logs=None):
        if not self.task_hooks:
            self._end(logs)
