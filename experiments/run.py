"""One continual-learning run: methods x seeds on one scenario.

Writes, per method and seed, `result.json`, `result.csv` and plots under
`--outdir/<run>/<method>/seed_<s>/`, TensorBoard logs under `--logdir/<run>/...`, and a
summary (mean and standard error over seeds) as `summary.json` and `summary.md`.

    python experiments/run.py --preset=quick
    python experiments/run.py --scenario=permuted_mnist --num_tasks=5 --method=mbnn,bnn --epochs=5
    tensorboard --logdir runs/logs
"""
import os
import sys
import time

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import benchmarks, experiment, methods
from larq_engrams.optimizers import parse_strength
from larq_engrams.task_free import DEFAULTS as TASK_FREE_DEFAULTS
from larq_engrams.task_inference import check_patch_floor
from larq_engrams.training import CheckpointError

# Named configurations. A preset sets defaults; flags given on the command line win.
PRESETS = {
    # The README's main command: minutes on a 2-core CPU, bundled data.
    "quick": dict(scenario="split_mnist", setting="class", method="engram_bnn,bnn", hidden="256,256",
                  epochs=2, batch_size=32),
    # The engram paper's Split MNIST network (2048-2048).
    "paper_split_mnist": dict(scenario="split_mnist", setting="class", hidden="2048,2048",
                              epochs=5, batch_size=100, lr=0.005),
    # CORe50-NI with the paper's 4096-4096 network.
    "core50": dict(scenario="core50_ni", hidden="4096,4096", epochs=5, batch_size=100, lr=0.005),
    # Laborieux et al. 2021 permuted MNIST: 784-4096-4096-10, batch 100, Adam 0.005, m 1.3.
    "laborieux_pmnist": dict(scenario="permuted_mnist", num_tasks=10, hidden="4096,4096", epochs=20,
                             batch_size=100, lr=0.005, m="1.3", method="mbnn,bnn"),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", None, list(PRESETS), "Named configuration (flags given explicitly win).")
flags.DEFINE_enum("scenario", "split_mnist", list(experiment.SCENARIOS), "Benchmark.")
flags.DEFINE_enum("setting", "class", list(benchmarks.SETTINGS), "Split benchmarks: class/domain/task incremental.")
flags.DEFINE_integer("num_tasks", None, "Tasks (permuted MNIST: how many; others: the first N).", lower_bound=1)
flags.DEFINE_enum("class_order", None, ["random"], "Split benchmarks: the classes in a random order (seeded by "
                  "the run's seed) instead of 0..9.")
flags.DEFINE_integer("evaluate_every", None, "Evaluate the past tasks after every k-th task (default: every task "
                     "up to 50 tasks, about 20 times beyond).", lower_bound=1)
flags.DEFINE_integer("past_tasks", None, "Past tasks sampled per evaluation (default: all up to 50 tasks, 20 "
                     "beyond; the last evaluation is whole).", lower_bound=1)
flags.DEFINE_list("method", ["engram_bnn"], f"Comma-separated methods: {', '.join(methods.names())}; replay "
                  "methods with a buffer size: er@1000 (examples), er@equal (engram_bnn's learning bytes).")
flags.DEFINE_integer("epochs", 1, "Epochs per task.", lower_bound=1)
flags.DEFINE_integer("batch_size", 100, "Training batch size.", lower_bound=1)
flags.DEFINE_list("hidden", ["2048", "2048"], "Hidden layer widths.")
flags.DEFINE_float("lr", 0.005, "Learning rate.", lower_bound=0.0)
flags.DEFINE_string("m", "1.3", "Metaplasticity: a float, or per layer 'hidden_0=1.3,hidden_1=1.5'.")
flags.DEFINE_float("engram_fraction", None, "rho: expected fraction of units per engram; default: min(0.2, 1 / T) "
                   "for a model of T engrams (larq_engrams.layers.engram_fraction_for).")
flags.DEFINE_float("activation_probability", 0.9, "q: stochastic reactivation probability.")
flags.DEFINE_float("excitability", 6.0, "beta: allocation bias towards little-used units.", lower_bound=0.0)
flags.DEFINE_enum("router_features", "auto", ["dense", "conv", "auto"], "The router's random features (engram "
                  "methods, slda_rf, ncm_rf): of the flat pixels, convolutional over images, or auto (conv where images).")
flags.DEFINE_list("router_conv", [str(v) for v in methods.HyperParameters.router_conv], "The convolutional router features' filter size k and pooling p "
                  "(slda_rf and ncm_rf so far; the engram methods keep 5,4).")
flags.DEFINE_string("router_patch_floor", str(methods.HyperParameters.router_patch_floor), "The convolutional "
                    "router features' contrast floor eps: each k x k patch normalized by sqrt(var + eps), or 'none' "
                    "(not normalized).")
flags.DEFINE_integer("lda_features", None, "The router's random features M (engram methods, slda_rf, ncm_rf, "
                     "er@equal's bytes; default: larq_engrams.task_inference.DEFAULT_FEATURES).", lower_bound=1)
flags.DEFINE_enum("router_class_covariance", methods.HyperParameters.router_class_covariance,
                  ["auto", "shared", "task"], "The router's class evidence inside a task (engram methods, "
                  "slda_rf): from the covariance shared by every task, from the task's own, or auto (the task's "
                  "own where tasks share labels, domain-IL).")
flags.DEFINE_integer("router_shortlist", None, "The router's shortlist k (engram methods, slda_rf, ncm_rf): "
                     "beyond k engrams only the k with the best mean group score their groups; default: every "
                     "group up to 50 tasks, 16 beyond (methods.router_shortlist).", lower_bound=1)
flags.DEFINE_bool("protect_engrams", methods.HyperParameters.protect_engrams, "Engram methods: freeze what earlier "
                  "engrams use while a later one trains (--noprotect_engrams: later tasks retrain what engrams share).")
flags.DEFINE_enum("boundaries", "given", ["given", "none", "fuzzy"], "given: tasks told, --epochs per task; none "
                  "or fuzzy: one pass over a task-free stream (batches of --batch_size; the learner is told no task "
                  "id and no boundary; fuzzy mixes --transition examples around each boundary).")
flags.DEFINE_integer("transition", None, "--boundaries=fuzzy: examples mixed around each boundary (default: 10 % "
                     "of a task).", lower_bound=2)
flags.DEFINE_integer("max_engrams", None, "Engram methods: engrams the model holds (default: one per task; "
                     "with --boundaries=none|fuzzy twice the tasks, room for the model's own boundaries).",
                     lower_bound=1)
flags.DEFINE_string("task_free", None, "Engram methods in a stream: the boundary test's settings, e.g. "
                    "'alpha=1e-6,confirm=50' (larq_engrams.task_free.DEFAULTS; default: those).")
flags.DEFINE_enum("inference", "infer", ["infer", "union"], "Engram inference without task id.")
flags.DEFINE_enum("batchnorm_evaluation", "moving", ["moving", "batch"],
                  "BatchNorm at evaluation: its moving statistics, or each mixed-task test batch's own statistics "
                  "(Laborieux et al.'s reference code; not for engram models).")
flags.DEFINE_list("seeds", ["0"], "Seeds; several give mean and standard error.")
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_string("data_dir", None, "TFDS data dir, or the folder of original files (--source=local, CORe50).")
flags.DEFINE_enum("evaluate_on", "test", list(benchmarks.EVALUATION_SPLITS),
                  "'validation': evaluate on a held-out part of the training data (for choosing "
                  "settings; the test split is never read); 'test': the final evaluation.")
flags.DEFINE_float("validation_fraction", 0.1, "With --evaluate_on=validation: the fraction of training "
                   "data held out (stratified by class, seeded by the run's seed).")
flags.DEFINE_string("outdir", "runs/results", "Where results go.")
flags.DEFINE_string("logdir", "runs/logs", "Where TensorBoard logs go.")
flags.DEFINE_string("name", None, "Run name (default: scenario-setting).")
flags.DEFINE_bool("isolate", True, "Run every method and seed in a fresh process, so that its peak memory (the "
                  "summary's RSS column) is its own.")
flags.DEFINE_bool("keep_checkpoints", False, "Keep each finished run's per-task checkpoints (model, optimizer, "
                  "callbacks after every task); by default they are deleted once the run is finished.")
flags.DEFINE_bool("resume", True, "Resume interrupted runs from their per-task checkpoints.")
flags.DEFINE_integer("verbose", 1, "0: silent; 1: progress bars and a line per task.")


def apply_preset():
    if FLAGS.preset is None:
        return
    for key, value in PRESETS[FLAGS.preset].items():
        if not FLAGS[key].present:
            FLAGS[key].parse(value)


def validate():
    """Every flag checked before any data is loaded or model built."""
    errors = []
    try:
        hidden = tuple(int(h) for h in FLAGS.hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError
    except ValueError:
        errors.append(f"--hidden must be positive ints, got {FLAGS.hidden}")
        hidden = None
    try:
        m = parse_strength(FLAGS.m)
    except ValueError:
        errors.append(f"--m must be a float >= 0 or 'layer=value,...', got {FLAGS.m!r}")
        m = None
    unknown = [name for name in FLAGS.method if not methods.known(name)]
    if unknown or not FLAGS.method:
        errors.append(f"--method: unknown {unknown}; available: {', '.join(methods.names())}")
    try:
        router_conv = tuple(int(v) for v in FLAGS.router_conv)
        if len(router_conv) != 2 or min(router_conv) < 1:
            raise ValueError
    except ValueError:
        errors.append(f"--router_conv must be 'k,p', two positive ints, got {','.join(FLAGS.router_conv)!r}")
        router_conv = None
    if router_conv not in (None, methods.HyperParameters.router_conv) and not unknown:
        ignoring = [name for name in FLAGS.method if "router_conv" not in methods.hyperparameters_read(name)]
        if ignoring:
            default = ",".join(str(v) for v in methods.HyperParameters.router_conv)
            errors.append(f"--router_conv: {', '.join(ignoring)} keep the default {default} (slda_rf and ncm_rf read it)")
    patch_floor = None
    if FLAGS.router_patch_floor.lower() != "none":
        try:
            patch_floor = check_patch_floor(float(FLAGS.router_patch_floor))
        except ValueError:
            errors.append(f"--router_patch_floor must be a float > 0 or 'none', got {FLAGS.router_patch_floor!r}")
    for name in ("engram_fraction", "activation_probability"):
        if getattr(FLAGS, name) is not None and not 0.0 < getattr(FLAGS, name) <= 1.0:
            errors.append(f"--{name} must be in (0, 1], got {getattr(FLAGS, name)}")
    if FLAGS.lr <= 0:
        errors.append(f"--lr must be > 0, got {FLAGS.lr}")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        errors.append(f"--seeds must be ints, got {FLAGS.seeds}")
        seeds = None
    if FLAGS.scenario == "core50_ni" and not FLAGS.data_dir:
        errors.append("--scenario=core50_ni needs --data_dir (the folder of the official CORe50 files)")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        errors.append(f"--data_dir {FLAGS.data_dir!r} is not a folder")
    if FLAGS.scenario in ("permuted_mnist", "core50_ni") and FLAGS["setting"].present and FLAGS.setting != "domain":
        errors.append(f"--setting: {FLAGS.scenario} is domain-incremental only")
    if FLAGS.boundaries != "given" and FLAGS.epochs != 1:
        errors.append(f"--boundaries={FLAGS.boundaries} is one pass over the stream: --epochs must be 1")
    if FLAGS.boundaries != "given" and FLAGS.scenario.startswith("split") and FLAGS.setting == "task":
        errors.append("--boundaries: a task-free stream gives no task id; use --setting=class or domain")
    if FLAGS.transition is not None and FLAGS.boundaries != "fuzzy":
        errors.append("--transition is for --boundaries=fuzzy")
    task_free = None
    if FLAGS.task_free:
        try:
            task_free = {k.strip(): float(v) for k, v in (item.split("=") for item in FLAGS.task_free.split(","))}
            unknown = set(task_free) - set(TASK_FREE_DEFAULTS)
            if unknown:
                raise ValueError
            task_free = {k: type(TASK_FREE_DEFAULTS[k])(v) for k, v in task_free.items()}
        except ValueError:
            errors.append(f"--task_free must be 'name=value,...' of {sorted(TASK_FREE_DEFAULTS)}, got {FLAGS.task_free!r}")
    if errors:
        raise app.UsageError("\n".join(errors))
    return hidden, m, seeds, task_free, router_conv, patch_floor


def _tasks_in(flags_):
    """The scenario's task count, known before its data is read."""
    return flags_.num_tasks or {"permuted_mnist": 10, "core50_ni": 8}.get(flags_.scenario, 5)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    apply_preset()
    hidden, m, seeds, task_free, router_conv, patch_floor = validate()
    setting = FLAGS.setting if FLAGS.scenario.startswith("split") else "domain"
    config = experiment.ExperimentConfig(
        scenario=FLAGS.scenario, setting=setting, num_tasks=FLAGS.num_tasks, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, source=FLAGS.source, data_dir=FLAGS.data_dir,
        engram_inference=FLAGS.inference, evaluate_on=FLAGS.evaluate_on,
        batchnorm_evaluation=FLAGS.batchnorm_evaluation,
        validation_fraction=FLAGS.validation_fraction,
        evaluate_every=FLAGS.evaluate_every, past_tasks=FLAGS.past_tasks, class_order=FLAGS.class_order,
        boundaries=FLAGS.boundaries, transition=FLAGS.transition,
        hparams=methods.HyperParameters(
            hidden=hidden, learning_rate=FLAGS.lr, m=m, engram_fraction=FLAGS.engram_fraction,
            activation_probability=FLAGS.activation_probability, excitability=FLAGS.excitability,
            protect_engrams=FLAGS.protect_engrams, router_features=FLAGS.router_features,
            router_conv=router_conv, router_patch_floor=patch_floor, lda_features=FLAGS.lda_features,
            router_class_covariance=FLAGS.router_class_covariance, router_shortlist=FLAGS.router_shortlist,
            task_free=task_free,
            max_engrams=FLAGS.max_engrams or (None if FLAGS.boundaries == "given" else 2 * _tasks_in(FLAGS)),
        ),
    )
    name = FLAGS.name or config.name
    out_root, log_root = os.path.join(FLAGS.outdir, name), os.path.join(FLAGS.logdir, name)
    command = " ".join(sys.argv)
    started = time.perf_counter()
    results = {}
    for method in FLAGS.method:
        for seed in seeds:
            print(f"\n=== {method} (seed {seed}) on {name} ===")
            try:
                common = dict(resume=FLAGS.resume, verbose=FLAGS.verbose, command=command,
                              keep_checkpoints=FLAGS.keep_checkpoints)
                if FLAGS.isolate:
                    result = experiment.run_in_fresh_process(config, method, seed, out_root, log_root, **common,
                                                             log_level=FLAGS.log_level)
                else:
                    result = experiment.run_experiment(config, method, seed, out_root, log_root, **common)
            except experiment.RunInProgressError as error:  # the summary below keeps it once it is finished
                print(f"skipped: {error}")
                continue
            except (experiment.StaleRunError, CheckpointError, experiment.ChildRunError) as error:
                sys.exit(f"error: {error}")  # one clear line, no traceback
            print(result.format_matrix())
            results.setdefault(method, []).append(result)  # a method whose every seed was skipped has no row here
    # The summary holds every finished run in the folder: methods of earlier commands
    # into the same --name keep their rows (with their own epochs and widths).
    everything = experiment.collect_results(out_root)
    earlier = sorted(set(everything) - set(results))
    if earlier:
        print(f"\nThe summary also keeps the rows of earlier runs in {out_root}: {', '.join(earlier)}.")
    title = f"{config.scenario} ({config.setting})"
    table = experiment.write_summary(os.path.join(out_root, "summary"), experiment.summarize({**everything, **results}),
                                     title, {"command": command, "wall_seconds": time.perf_counter() - started})
    print("\n" + table)
    print(f"\nResults: {out_root}/  (summary.md, per method and seed: result.json/csv and plots)")
    print(f"TensorBoard: tensorboard --logdir {log_root}")


if __name__ == "__main__":
    cli.run(main)
