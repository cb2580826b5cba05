"""Choose settings on validation data only: a grid of hyperparameters, each run on a
scenario whose evaluation split is held out of the *training* data.

Every run uses `evaluate_on="validation"` (`benchmarks.hold_out_validation`): the test
split is dropped before any pipeline is built, so nothing here can read test data.
The table ranks the settings by mean validation ACC over the seeds; the best one is
written to `chosen.json`, to be evaluated once on the test split with `run.py`.

    python experiments/tune.py --scenario=split_mnist --setting=class --method=engram_bnn \\
        --grid="engram_fraction=0.1,0.2,0.4;excitability=0,6" --hidden=256,256 --epochs=2 --seeds=0,1
    # writes runs/selection/<scenario>-<setting>-<method>/selection.md, selection.json, chosen.json
"""
import dataclasses
import itertools
import json
import os
import sys
import time

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import benchmarks, experiment, methods
from larq_engrams.training import CheckpointError, write_atomically

FLAGS = flags.FLAGS
flags.DEFINE_enum("scenario", "split_mnist", [s for s in experiment.SCENARIOS if s != "core50_ni"], "Benchmark.")
flags.DEFINE_enum("setting", "class", list(benchmarks.SETTINGS), "Split benchmarks: class/domain/task incremental.")
flags.DEFINE_integer("num_tasks", None, "Tasks (permuted MNIST: how many; others: the first N).", lower_bound=1)
flags.DEFINE_string("method", "engram_bnn", f"One method: {', '.join(methods.names())}.")
flags.DEFINE_string("grid", "engram_fraction=0.1,0.2,0.4",
                    "Settings to compare: 'name=v1,v2;name2=w1,w2' over the fields of "
                    "methods.HyperParameters, or 'epochs=...'.")
flags.DEFINE_integer("epochs", 2, "Epochs per task (unless the grid varies it).", lower_bound=1)
flags.DEFINE_integer("batch_size", 100, "Training batch size.", lower_bound=1)
flags.DEFINE_list("hidden", ["256", "256"], "Hidden layer widths.")
flags.DEFINE_float("lr", 0.005, "Learning rate (unless the grid varies it).", lower_bound=0.0)
flags.DEFINE_list("seeds", ["0"], "Seeds (each also draws its own validation split).")
flags.DEFINE_float("validation_fraction", 0.1, "Fraction of the training data held out.")
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_string("data_dir", None, "Folder of original files (--source=local).")
flags.register_validator("data_dir", lambda d: d is None or os.path.isdir(d), "--data_dir must be an existing folder")
flags.DEFINE_string("outdir", "runs/selection", "Where the selection goes.")
flags.DEFINE_integer("verbose", 0, "0: a line per run; 1: progress bars.")

_HPARAMS = {f.name: f.type for f in dataclasses.fields(methods.HyperParameters)}


def parse_grid(text):
    """'a=1,2;b=x' -> [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}] (values typed by field)."""
    axes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name != "epochs" and name not in _HPARAMS:
            raise app.UsageError(f"--grid: unknown setting {name!r}; use epochs or one of {sorted(_HPARAMS)}.")
        if not values:
            raise app.UsageError(f"--grid: {name!r} has no values.")
        axes.append([(name, _typed(name, v.strip())) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def _typed(name, value):
    if name == "epochs":
        return int(value)
    if _HPARAMS.get(name) in (int, float):
        return _HPARAMS[name](value)
    try:
        return float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        return value


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    grid = parse_grid(FLAGS.grid)
    seeds = [int(s) for s in FLAGS.seeds]
    setting = FLAGS.setting if FLAGS.scenario.startswith("split") else "domain"
    name = f"{FLAGS.scenario}-{setting}-{FLAGS.method}"
    root = os.path.join(FLAGS.outdir, name)
    command = " ".join(sys.argv)
    rows = []
    started = time.perf_counter()
    for i, point in enumerate(grid):
        epochs = point.get("epochs", FLAGS.epochs)
        hparams = methods.HyperParameters(hidden=tuple(int(h) for h in FLAGS.hidden), learning_rate=FLAGS.lr)
        hparams = dataclasses.replace(hparams, **{k: v for k, v in point.items() if k != "epochs"})
        config = experiment.ExperimentConfig(
            scenario=FLAGS.scenario, setting=setting, num_tasks=FLAGS.num_tasks, epochs=epochs,
            batch_size=FLAGS.batch_size, source=FLAGS.source, data_dir=FLAGS.data_dir,
            evaluate_on="validation", validation_fraction=FLAGS.validation_fraction, hparams=hparams,
        )
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "defaults"
        accs, inference = [], []
        for seed in seeds:
            # One folder per setting (not per position), so a changed grid reuses what it can.
            point_dir = os.path.join(root, "point_" + ("_".join(f"{k}={v}" for k, v in point.items()) or "defaults"))
            try:
                result = experiment.run_experiment(config, FLAGS.method, seed, point_dir,
                                                   logdir=None, verbose=FLAGS.verbose, command=command)
            except (experiment.StaleRunError, CheckpointError) as error:
                sys.exit(f"error: {error}")  # one clear line, no traceback
            accs.append(result.metrics["acc"])
            if "task_inference" in result.metrics:
                inference.append(result.metrics["task_inference"])
        mean = sum(accs) / len(accs)
        print(f"[{i + 1}/{len(grid)}] {label}: validation ACC {100 * mean:.1f}%")
        rows.append({"setting": point, "label": label, "validation_acc": accs, "mean_validation_acc": mean,
                     "task_inference": inference})
    rows.sort(key=lambda r: -r["mean_validation_acc"])
    lines = [f"# Selection for {FLAGS.method} on {FLAGS.scenario} ({setting}): validation ACC only",
             "", f"Command: `{command}`", f"Seeds: {seeds}; validation: {FLAGS.validation_fraction:g} of the "
             "training data, stratified by class, per seed; the test split was not read.", "",
             "| rank | setting | validation ACC % (mean) | per seed | task inference % |", "|---|---|---|---|---|"]
    for rank, row in enumerate(rows, 1):
        ti = f"{100 * sum(row['task_inference']) / len(row['task_inference']):.1f}" if row["task_inference"] else "—"
        lines.append(f"| {rank} | {row['label']} | {100 * row['mean_validation_acc']:.1f} | "
                     + " ".join(f"{100 * a:.1f}" for a in row["validation_acc"]) + f" | {ti} |")
    lines += ["", f"Chosen: **{rows[0]['label']}** (highest mean validation ACC)."]
    os.makedirs(root, exist_ok=True)
    write_atomically(os.path.join(root, "selection.md"), "\n".join(lines) + "\n")
    write_atomically(os.path.join(root, "selection.json"), json.dumps(
        {"command": command, "rows": rows, "wall_seconds": time.perf_counter() - started}, indent=1))
    write_atomically(os.path.join(root, "chosen.json"), json.dumps(rows[0]["setting"], indent=1))
    print("\n".join(lines))
    print(f"\nSelection: {root}/selection.md; chosen setting: {root}/chosen.json")


if __name__ == "__main__":
    cli.run(main)
