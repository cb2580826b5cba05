"""Long task sequences: accuracy and training time against the number of tasks.

Reads the runs of one or more `run.py` output folders (a scenario's folder: method /
seed_k / result.json) and writes `long_sequence.png` (the accuracy on the tasks seen so
far and the seconds per task, against the tasks trained) and `long_sequence.md`: per
method, its final ACC (mean ± s.e.m. over seeds), the seconds per task around task 10
and at the end (the median of the 5 tasks up to there) and their ratio, and the bytes it
keeps besides its network's weights.

    python experiments/long_sequence.py --runs=results/issue44/permuted_mnist-100-tasks --output=results/issue44
"""
import glob
import json
import os

import numpy as np
from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams.metrics import format_mean_and_sem, mean_and_sem
from larq_engrams.plots import figure_to_png, plot_long_sequence

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "run.py output folders (one scenario each).")
flags.DEFINE_string("output", None, "Where long_sequence.png / .md go.")
flags.DEFINE_integer("early_task", 10, "The task the end's seconds per task are compared with.", lower_bound=5)

MIB = 2 ** 20


def _seconds_around(seconds, task):
    """The median seconds of the 5 tasks up to `task` (1-based)."""
    return float(np.median(seconds[max(0, task - 5):task]))


def _accuracy_on_seen(R):
    """Per row t, the mean of its measured entries on tasks 0..t, where it measured a past
    task (or t = 0); NaN elsewhere: a row of the evaluation schedule that measured only its
    own task gives its learning accuracy, not the accuracy on the tasks seen."""
    seen = np.full(len(R), np.nan)
    for t in range(len(R)):
        if t == 0 or not np.isnan(R[t, :t]).all():
            seen[t] = np.nanmean(R[t, : t + 1])
    return seen


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.runs or not FLAGS.output:
        raise app.UsageError("give --runs and --output.")
    series, rows = {}, []
    for folder in FLAGS.runs:
        scenario = os.path.basename(os.path.normpath(folder))
        for method_dir in sorted(glob.glob(os.path.join(folder, "*", ""))):
            results = []
            for path in sorted(glob.glob(os.path.join(method_dir, "seed_*", "result.json"))):
                with open(path) as f:
                    results.append(json.load(f))
            if not results:
                continue
            method = os.path.basename(os.path.normpath(method_dir))
            first = results[0]
            R = np.array(first["accuracy_matrix"], dtype=float)
            tasks = len(R)
            seen = _accuracy_on_seen(R)
            seconds = np.asarray(first["task_seconds"], dtype=float)
            series[f"{method} ({scenario}, seed {first['config']['trainer'].get('seed', 0)})"] = {
                "tasks": list(range(1, tasks + 1)), "acc": seen, "seconds": seconds}
            accs = [r["metrics"]["acc"] for r in results]
            kept = first["memory"].get("state_bytes") or {}
            early = _seconds_around(seconds, min(FLAGS.early_task, tasks))
            late = _seconds_around(seconds, tasks)
            rows.append(f"| {scenario} | {method} | {tasks} | {len(results)} | {format_mean_and_sem(mean_and_sem(accs), len(accs))} | "
                        f"{early:.1f} | {late:.1f} | {late / early:.2f} | "
                        f"{(kept.get('learn', 0) + kept.get('predict', 0)) / MIB:.2f} |")
    os.makedirs(FLAGS.output, exist_ok=True)
    figure_to_png(plot_long_sequence(series), os.path.join(FLAGS.output, "long_sequence.png"))
    lines = [f"Seconds per task: the median of the 5 tasks up to task {FLAGS.early_task} and up to the last "
             "(the first seed's run); kept MiB: what the method keeps besides its network's weights "
             "(docs/method.md, section 7). `experiments/long_sequence.py`.", "",
             f"| scenario | method | tasks | seeds | ACC % | s / task at {FLAGS.early_task} | s / task at the end | ratio | "
             "kept MiB |", "|---|---|---|---|---|---|---|---|---|", *rows]
    with open(os.path.join(FLAGS.output, "long_sequence.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
