"""Class-IL accuracy against the bytes each method keeps besides its network's weights.

For every class-IL scenario of a grid (`reproduce.py --outdir`), one point per method
(and replay budget): its ACC (mean ± s.e.m. over seeds) and its extra state
(`protocol.state_bytes`: what it keeps to learn further tasks plus what it needs to
predict, docs/method.md, section 7). The bytes are the ones each run recorded
(`memory["state_bytes"]`), or, for runs saved before results held them, the count
`record_state_bytes.py` wrote in (the method rebuilt for its scenario; the table says
which). A run with neither is counted the same way here.

    python experiments/accuracy_vs_bytes.py --grid_dir=results/paper
    # -> results/paper/accuracy_vs_bytes.png and .md
"""
import json
import os
import sys

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import experiment
from larq_engrams.metrics import format_mean_and_sem
from larq_engrams.plots import figure_to_png, plot_accuracy_against_bytes

FLAGS = flags.FLAGS
flags.DEFINE_string("grid_dir", "results/paper", "The grid's --outdir (its table.json and runs).")
flags.DEFINE_string("output", None, "Where accuracy_vs_bytes.png / .md go (default: --grid_dir).")


def _recorded_bytes(folder):
    """The state bytes the runs in `folder` recorded (the first run's), or None."""
    for seed in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, seed, "result.json")
        if seed.startswith("seed_") and os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
            found = result.get("memory", {}).get("state_bytes")
            if found is not None:
                return found, result
            return None, result
    return None, None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with open(os.path.join(FLAGS.grid_dir, "table.json")) as f:
        table = json.load(f)
    points, lines = {}, []
    for label, summary in table["summaries"].items():
        if "-class" not in label:
            continue
        lines += [f"### {label}", "", "| method | ACC % | kept to learn | kept to predict | bytes |", "|---|---|---|---|---|"]
        for method, row in summary.items():
            if method == "joint":  # the upper reference keeps every example: not a continual learner
                continue
            found, result = _recorded_bytes(os.path.join(FLAGS.grid_dir, label, method))
            if result is None:
                continue
            rebuilt = result.get("memory", {}).get("state_bytes_rebuilt_at")
            how = f"rebuilt at {rebuilt[:7]}" if rebuilt else "recorded by the run"
            if found is None:
                found, how = experiment.rebuilt_state_bytes(result["config"]["settings"]), "rebuilt now"
            points.setdefault(label, {})[method] = {"acc": row["acc"], "bytes": found["learn"] + found["predict"]}
            lines.append(f"| {method} | {format_mean_and_sem(row['acc'], int(row.get('seeds', 2)))} | "
                         f"{found['learn'] / 2**20:.2f} MiB | {found['predict'] / 2**20:.2f} MiB | {how} |")
        lines.append("")
    output = FLAGS.output or FLAGS.grid_dir
    os.makedirs(output, exist_ok=True)
    figure_to_png(plot_accuracy_against_bytes(points), os.path.join(output, "accuracy_vs_bytes.png"))
    text = "\n".join(["Class-IL ACC against the bytes a method keeps besides its network's weights "
                      "(`protocol.state_bytes`; docs/method.md, section 7).", "", *lines,
                      f"Command: `{' '.join(sys.argv)}`"])
    with open(os.path.join(output, "accuracy_vs_bytes.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    cli.run(main)
