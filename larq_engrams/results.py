"""`ContinualResult`: what a continual run measured, serializable to JSON and CSV."""
import dataclasses
import json
import os
import platform
import subprocess
import tempfile

import larq
import numpy as np
import tensorflow as tf

import larq_engrams
from larq_engrams import metrics
from larq_engrams.plots import figure_to_png, plot_accuracy_matrix, plot_task_accuracies

__all__ = ["ContinualResult", "environment", "write_atomically"]


def write_atomically(path, data, mode="w"):
    """Writes `data` to `path` through a temporary file and `os.replace`, so that an
    interrupted run never leaves a truncated file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp's files are private (0600); results are not
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _new_file_mode():
    """The mode `open()` would give a new file: 0666 less the process' umask (read
    once, at import: reading it means setting it, which other threads could see)."""
    return _NEW_FILE_MODE


_UMASK = os.umask(0o022)
os.umask(_UMASK)
_NEW_FILE_MODE = 0o666 & ~_UMASK


def environment():
    """Versions and devices, for results files."""
    gpus = tf.config.list_physical_devices("GPU")
    details = []
    for gpu in gpus:
        try:
            details.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # device details are best effort
            details.append(gpu.name)
    commit, modified = _git_state()
    return {
        "git_commit": commit,
        "git_modified": modified,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "tf_keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
        "larq": larq.__version__ if hasattr(larq, "__version__") else None,
        "larq_engrams": larq_engrams.__version__,
        "numpy": np.__version__,
        "gpus": details,
        "device": details[0] if details else "CPU",
    }


def _git_state(folder=os.path.dirname(os.path.abspath(__file__))):
    """The checkout the larq_engrams source in use comes from: (commit, "-dirty" appended
    when tracked files hold uncommitted edits; the paths of those files, relative to the
    repository root). (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        # -z: paths unquoted, whatever their characters; entries end in NUL
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    if not commit:
        return None, None
    modified, fields = [], iter(status.split("\0"))
    for entry in fields:
        if entry:
            modified.append(entry[3:])  # "XY path": the file as it stands now
            if entry[0] in "RC":  # a rename or copy: its origin follows as a field of its own
                next(fields, None)
    return commit + ("-dirty" if modified else ""), sorted(modified)


@dataclasses.dataclass
class ContinualResult:
    """The outcome of one continual run.

    Attributes:
        accuracy_matrix: R, T x T, R[t][k] = accuracy on task k after training 0..t.
        baseline: accuracy of the untrained model on each task (b_k, for FWT).
        metrics: ACC, BWT, forgetting, FWT, average incremental accuracy.
        epoch_accuracies: with per-epoch evaluation, rows `{"task", "epoch", "accuracies"}`.
        task_inference: engram models in "infer" mode without task ids: per task, the
            fraction of its test samples whose own engram was inferred (its mean is
            `metrics["task_inference"]`); None otherwise.
        task_seconds: training wall time per task (evaluation excluded).
        observe_seconds: per task, the wall time of the pass that gives the task's data to
            the model before its training clock starts (`observe_task_data`: an engram
            router's statistics); None where the trainer makes none.
        memory: `PeakMemoryCallback.summary()`.
        config: scenario, model, optimizer and trainer settings.
        environment: versions and devices.
    """

    accuracy_matrix: list
    baseline: list
    metrics: dict
    task_seconds: list
    memory: dict
    config: dict
    environment: dict
    epoch_accuracies: list = dataclasses.field(default_factory=list)
    task_inference: list = None
    observe_seconds: list = None

    @classmethod
    def from_matrix(cls, R, baseline, **kwargs):
        R = np.asarray(R, np.float64)
        return cls(
            accuracy_matrix=R.tolist(),
            baseline=list(map(float, baseline)),
            metrics=metrics.summarize(R, baseline),
            **kwargs,
        )

    @property
    def R(self):
        return np.asarray(self.accuracy_matrix, np.float64)

    # ------------------------------------------------------------ serialization
    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            write_atomically(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_text):
        text = path_or_text
        if os.path.exists(str(path_or_text)):
            with open(path_or_text) as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data):
        """From `to_dict()`'s output (unknown keys are ignored)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def to_csv(self, path=None):
        """Two blocks: the accuracy matrix (row per t) and the metrics (name, value)."""
        T = len(self.accuracy_matrix)
        lines = ["after_task," + ",".join(f"task_{k}" for k in range(T))]
        lines += [f"{t}," + ",".join(f"{v:.6f}" for v in row) for t, row in enumerate(self.accuracy_matrix)]
        lines.append("untrained," + ",".join(f"{v:.6f}" for v in self.baseline))
        lines.append("")
        lines.append("metric,value")
        lines += [f"{name},{value:.6f}" for name, value in self.metrics.items()]
        text = "\n".join(lines) + "\n"
        if path is not None:
            write_atomically(path, text)
        return text

    @property
    def label(self):
        """"method · scenario setting-IL · seed s" from the config, as far as it is known
        (a plain `ContinualTrainer` run has no method name)."""
        scenario = self.config.get("scenario", {})
        parts = [self.config.get("method", {}).get("name")]
        if scenario.get("name"):
            parts.append(f"{scenario['name']} {scenario.get('setting', '')}-IL".replace(" -IL", ""))
        seed = scenario.get("seed", self.config.get("trainer", {}).get("seed"))
        parts.append(None if seed is None else f"seed {seed}")
        return " · ".join(p for p in parts if p)

    def save_plots(self, folder, prefix=""):
        """Writes `<prefix>accuracy_matrix.png` and `<prefix>task_accuracies.png`, each
        titled with the run's `label`."""
        os.makedirs(folder, exist_ok=True)
        paths = {
            "accuracy_matrix": os.path.join(folder, f"{prefix}accuracy_matrix.png"),
            "task_accuracies": os.path.join(folder, f"{prefix}task_accuracies.png"),
        }
        figure_to_png(plot_accuracy_matrix(self.R, label=self.label), paths["accuracy_matrix"])
        figure_to_png(plot_task_accuracies(self.R, label=self.label), paths["task_accuracies"])
        return paths

    def save(self, folder, prefix=""):
        """JSON, CSV and plots into `folder`; returns their paths."""
        paths = {
            "json": os.path.join(folder, f"{prefix}result.json"),
            "csv": os.path.join(folder, f"{prefix}result.csv"),
        }
        self.to_json(paths["json"])
        self.to_csv(paths["csv"])
        paths.update(self.save_plots(folder, prefix))
        return paths

    def format_matrix(self):
        """R as a text table in percent, for logs and terminals. Tasks not trained yet
        (k > t) print as "·": their measured values are in the JSON and CSV (FWT uses
        them), but a 0 there is not forgetting."""
        T = len(self.accuracy_matrix)
        head = "after \\ on " + " ".join(f"{f'T{k}':>6}" for k in range(T))
        cell = lambda t, k, v: f"{'·':>6}" if k > t else f"{100 * v:6.1f}"  # noqa: E731
        rows = [f"task {t:<6}" + " ".join(cell(t, k, v) for k, v in enumerate(row))
                for t, row in enumerate(self.accuracy_matrix)]
        m = self.metrics
        tail = f"ACC {100 * m['acc']:.2f}%  BWT {100 * m['bwt']:+.2f}%  forgetting {100 * m['forgetting']:.2f}%"
        if "learning_acc" in m:
            tail += f"  learning accuracy {100 * m['learning_acc']:.2f}%"
        # FWT (R[k-1][k] - b_k) needs a task's classes to be predictable before it is
        # trained; in class-IL they never were, so it measures nothing and is not printed.
        if "fwt" in m and (self.config.get("scenario") or {}).get("setting") != "class":
            tail += f"  FWT {100 * m['fwt']:+.2f}%"
        if "task_inference" in m:
            tail += f"  task inference {100 * m['task_inference']:.1f}%"
        return "\n".join([head, *rows, tail])


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
