"""Choose settings on validation data only: a grid of hyperparameters, each run on a
scenario whose evaluation split is held out of the *training* data.

Every run uses `evaluate_on="validation"` (`benchmarks.hold_out_validation`): the test
split is dropped before any pipeline is built, so nothing here can read test data.
The table ranks the settings by mean validation ACC over the seeds (and over the
methods, when `--method` names a family that is to share one setting); the best one is
written to `chosen.json`, to be evaluated once on the test split with `run.py`
(`larq_engrams.selection` does the work; `reproduce.py --grid=paper` uses it too).

    python experiments/tune.py --scenario=split_mnist --setting=class --method=engram_bnn \\
        --grid="engram_fraction=0.1,0.2,0.4;excitability=0,6" --hidden=256,256 --epochs=2 --seeds=0,1
    # writes runs/selection/<scenario>-<setting>-<method>/selection.md, selection.json, chosen.json
    python experiments/tune.py --method=bnn,mbnn --grid="epochs=2,5;learning_rate=0.001,0.005" ...
    # one setting for both: runs/selection/<scenario>-<setting>-bnn+mbnn/
"""
import os
import sys

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import benchmarks, experiment, methods, selection
from larq_engrams.training import CheckpointError

FLAGS = flags.FLAGS
flags.DEFINE_enum("scenario", "split_mnist", [s for s in experiment.SCENARIOS if s != "core50_ni"], "Benchmark.")
flags.DEFINE_enum("setting", "class", list(benchmarks.SETTINGS), "Split benchmarks: class/domain/task incremental.")
flags.DEFINE_integer("num_tasks", None, "Tasks (permuted MNIST: how many; others: the first N).", lower_bound=1)
flags.DEFINE_list("method", ["engram_bnn"], f"One method, or a family that shares one setting (ranked by "
                  f"the mean over its methods): {', '.join(methods.names())}.")
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

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        grid = selection.parse_grid(FLAGS.grid)
    except ValueError as error:
        raise app.UsageError(f"--grid: {error}")
    unknown = sorted(m for m in FLAGS.method if not methods.known(m))
    if unknown:
        raise app.UsageError(f"--method: unknown {unknown}; choose from {', '.join(methods.names())}")
    setting = FLAGS.setting if FLAGS.scenario.startswith("split") else "domain"
    name = f"{FLAGS.scenario}-{setting}-{'+'.join(FLAGS.method)}"
    hparams = methods.HyperParameters(hidden=tuple(int(h) for h in FLAGS.hidden), learning_rate=FLAGS.lr)
    config = experiment.ExperimentConfig(
        scenario=FLAGS.scenario, setting=setting, num_tasks=FLAGS.num_tasks, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, source=FLAGS.source, data_dir=FLAGS.data_dir,
        validation_fraction=FLAGS.validation_fraction, hparams=hparams,
    )
    try:
        chosen = selection.select_on_validation(
            config, FLAGS.method, grid, [int(s) for s in FLAGS.seeds], os.path.join(FLAGS.outdir, name),
            command=" ".join(sys.argv), verbose=FLAGS.verbose)
    except (experiment.StaleRunError, CheckpointError) as error:
        sys.exit(f"error: {error}")  # one clear line, no traceback
    print(open(os.path.join(chosen.folder, "selection.md")).read())
    print(f"Selection: {chosen.folder}/selection.md; chosen setting: {chosen.folder}/chosen.json")


if __name__ == "__main__":
    cli.run(main)
