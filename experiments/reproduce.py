"""The comparison grid: methods x scenarios x seeds, on one machine, resumable.

Writes under --outdir (default `results/`): every run's `result.json`/`result.csv`/plots,
per scenario a `summary.md`/`summary.json`, and overall `table.md` (ACC and BWT per method
and scenario), `acc.png` (ACC per method and scenario) and `memory.png` (peak host RSS of
each run, measured in its own process). Finished runs are skipped when the command is
started again.

    python experiments/reproduce.py                         # the README table (bundled data)
    python experiments/reproduce.py --seeds=0 --grid=smoke  # a minute-long check
"""
import json
import os
import sys
import time

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np

from larq_engrams import experiment, methods
from larq_engrams.plots import figure_to_png
from larq_engrams.training import write_atomically

ALL = ["finetune", "joint", "ewc", "online_ewc", "si", "lwf", "bnn", "mbnn", "engram", "engram_bnn"]
# (scenario, setting, num_tasks, methods, epochs, batch size). XdG needs the task id.
GRIDS = {
    "standard": [
        ("split_mnist", "class", None, ALL, 2, 32),
        ("split_mnist", "domain", None, ALL, 2, 32),
        ("split_mnist", "task", None, ALL + ["xdg"], 2, 32),
        ("permuted_mnist", "domain", 5, ALL, 2, 100),
    ],
    "smoke": [("split_mnist", "class", 2, ["bnn", "engram_bnn"], 1, 64)],
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("grid", "standard", list(GRIDS), "Which grid.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("hidden", ["256", "256"], "Hidden widths (every method).")
flags.DEFINE_list("methods", None, "Restrict to these methods.")
flags.DEFINE_enum("source", "auto", ["auto", "tfds", "local", "bundled"], "Data source.")
flags.DEFINE_string("data_dir", None, "TFDS data dir or folder of original files.")
flags.register_validator("data_dir", lambda d: d is None or os.path.isdir(d), "--data_dir must be an existing folder")
flags.DEFINE_string("outdir", "results", "Where results go.")
flags.DEFINE_string("logdir", None, "TensorBoard logs (none by default: the grid is large).")
flags.DEFINE_bool("isolate", True, "Run every experiment in a fresh process, so that its peak memory is its "
                  "own (in one long process the resident set only grows from run to run).")
flags.DEFINE_string("child", None, "Internal: run one experiment described by this JSON.")


def main(argv):
    del argv
    if FLAGS.child:
        experiment.run_child(FLAGS.child)
        return
    seeds = [int(s) for s in FLAGS.seeds]
    hp = methods.HyperParameters(hidden=tuple(int(h) for h in FLAGS.hidden))
    unknown = set(FLAGS.methods or []) - set(methods.names())
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}")
    runs = []
    for scenario, setting, num_tasks, names, epochs, batch in GRIDS[FLAGS.grid]:
        config = experiment.ExperimentConfig(scenario=scenario, setting=setting, num_tasks=num_tasks,
                                             epochs=epochs, batch_size=batch, source=FLAGS.source,
                                             data_dir=FLAGS.data_dir, hparams=hp)
        for method in names:
            if FLAGS.methods is None or method in FLAGS.methods:
                runs.extend((config, method, seed) for seed in seeds)
    command = " ".join(sys.argv)
    started = time.perf_counter()
    results = {}
    for i, (config, method, seed) in enumerate(runs, 1):
        label = config.name + ("" if config.num_tasks is None else f"-{config.num_tasks}tasks")
        elapsed = time.perf_counter() - started
        print(f"[{i}/{len(runs)}] {label} {method} seed {seed}  (elapsed {elapsed / 60:.1f} min)", flush=True)
        out = os.path.join(FLAGS.outdir, label)
        logdir = os.path.join(FLAGS.logdir, label) if FLAGS.logdir else None
        if FLAGS.isolate:
            result = experiment.run_in_fresh_process(os.path.abspath(__file__), config, method, seed, out, logdir,
                                                     command=command, extra_args=[f"--log_level={FLAGS.log_level}"])
        else:
            result = experiment.run_experiment(config, method, seed, out, logdir, verbose=0, command=command)
        results.setdefault(label, {}).setdefault(method, []).append(result)
        print(f"    ACC {100 * result.metrics['acc']:.1f}%  BWT {100 * result.metrics['bwt']:+.1f}%", flush=True)

    summaries = {}
    for label, by_method in results.items():
        summaries[label] = experiment.summarize(by_method)
        experiment.write_summary(os.path.join(FLAGS.outdir, label, "summary"), summaries[label], label,
                                 {"command": command})
    table = grid_table(summaries, seeds)
    write_atomically(os.path.join(FLAGS.outdir, "table.md"), table + "\n")
    write_atomically(os.path.join(FLAGS.outdir, "table.json"), json.dumps(
        {"command": command, "seeds": seeds, "hidden": list(hp.hidden), "wall_seconds": time.perf_counter() - started,
         "summaries": summaries}, indent=2))
    plot_grid(summaries, os.path.join(FLAGS.outdir, "acc.png"), "acc", "ACC (%)", scale=100)
    plot_grid(summaries, os.path.join(FLAGS.outdir, "memory.png"), "peak_rss_bytes", "peak host RSS (MiB)",
              scale=2**-20)
    print("\n" + table)
    print(f"\nWrote {FLAGS.outdir}/table.md, acc.png, memory.png and per-run results "
          f"({(time.perf_counter() - started) / 60:.1f} min).")


def grid_table(summaries, seeds):
    labels = list(summaries)
    names = []
    for label in labels:
        names += [m for m in summaries[label] if m not in names]
    source = next(iter(next(iter(summaries.values())).values()))["source"]
    lines = [f"ACC / BWT in % (mean ± s.e.m. over {len(seeds)} seeds); data: {source}", "",
             "| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in names:
        cells = []
        for label in labels:
            s = summaries[label].get(name)
            cells.append("—" if s is None else
                         f"{100 * s['acc'][0]:.1f} ± {100 * s['acc'][1]:.1f} / {100 * s['bwt'][0]:+.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_grid(summaries, path, key, ylabel, scale):
    from matplotlib.figure import Figure

    labels = list(summaries)
    names = []
    for label in labels:
        names += [m for m in summaries[label] if m not in names]
    # Room for the bars, plus the legend outside them; "constrained" fits both at any size.
    fig = Figure(figsize=(max(3.0, 0.9 * len(names) * len(labels) / 3) + 2.0, 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        values = [summaries[label][n][key] if n in summaries[label] else None for n in names]
        pairs = [(np.nan, 0.0) if v is None else (tuple(v) if isinstance(v, (list, tuple)) else (v, 0.0))
                 for v in values]  # metrics are (mean, s.e.m.); memory peaks single numbers
        means = [mean * scale for mean, _ in pairs]
        errors = [sem * scale for _, sem in pairs]
        ax.bar(np.arange(len(names)) + j * width, means, width, yerr=errors, label=label, capsize=2)
    ax.set_xticks(np.arange(len(names)) + width * (len(labels) - 1) / 2)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    figure_to_png(fig, path)


if __name__ == "__main__":
    cli.run(main)
