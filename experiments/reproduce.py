"""The comparison grid: methods x scenarios x seeds, on one machine, resumable.

Writes under --outdir (default `results/`): every run's `result.json`/`result.csv`/plots,
per scenario a `summary.md`/`summary.json`, and overall `table.md` (ACC and BWT per method
and scenario), `acc.png` (ACC per method and scenario) and `memory.png` (peak host RSS of
each run, measured in its own process). Finished runs are skipped when the command is
started again.

    python experiments/reproduce.py                         # the README table (bundled data)
    python experiments/reproduce.py --seeds=0 --grid=smoke  # a minute-long check
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags

import larq_engrams  # noqa: F401  (binds tf.keras to Keras 2 first)
import numpy as np

from larq_engrams import experiment, methods
from larq_engrams.plots import figure_to_png
from larq_engrams.training import ContinualResult, write_atomically

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


def run_isolated(config, method, seed, out, logdir, command):
    """Runs one experiment in a fresh Python process; returns its saved result."""
    reused = experiment.finished_run(config, method, seed, out)  # same settings, or StaleRunError
    if reused is not None:
        return reused
    spec = {"config": dataclasses.asdict(config), "method": method, "seed": seed, "out": out,
            "logdir": logdir, "command": command}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={json.dumps(spec)}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{config.name} {method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return ContinualResult.from_json(os.path.join(out, method, f"seed_{seed}", "result.json"))


def run_child(spec_json):
    """The child side of `run_isolated`: rebuild the config and run the experiment."""
    spec = json.loads(spec_json)
    fields = spec["config"]
    hparams = fields.pop("hparams")
    hparams["hidden"] = tuple(hparams["hidden"])
    config = experiment.ExperimentConfig(**fields, hparams=methods.HyperParameters(**hparams))
    experiment.run_experiment(config, spec["method"], spec["seed"], spec["out"], spec["logdir"], verbose=0,
                              command=spec["command"], keep_checkpoints=False)


def main(argv):
    del argv
    if FLAGS.child:
        return run_child(FLAGS.child)
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
            result = run_isolated(config, method, seed, out, logdir, command)
        else:
            result = experiment.run_experiment(config, method, seed, out, logdir, verbose=0, command=command,
                                               keep_checkpoints=False)
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
    fig = Figure(figsize=(1.2 + 0.9 * len(names) * len(labels) / 3, 4))
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
    fig.tight_layout()
    figure_to_png(fig, path)


if __name__ == "__main__":
    app.run(main)
