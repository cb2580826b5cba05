"""What each part of engram_bnn adds: metaplasticity, gating and the router's class
evidence, ablated (resumable; one JSON per finished run).

Trained variants, per scenario and seed (all 1024-1024 unless --hidden; the engrams are
not protected, `protect_engrams=False`, so that they can forget):

| variant | engrams | optimizer |
|---|---|---|
| `m=<m> rho=<rho> beta=<beta>` | `engram_fraction` rho, `excitability` beta | `MetaplasticAdam(m)`; m = 0 is Adam |
| `bnn`, `mbnn` | none (the plain Larq BNN) | Adam / `MetaplasticAdam(m)` |

over m in `--m` (default 0 and 1.3, the validated value; an entry such as `output=10` or
`hidden_0=10+hidden_1=10` sets m per layer, the layers not named get 0), rho in 0.2, 0.5,
1.0 (1.0: no gating) and beta in 6 (the default) and 0 (no preference for unused units; not
for rho = 1).
Every trained engram model is then evaluated several ways on the same weights (Kim et al.
2022 split a class-IL score into task prediction and within-task prediction):

- `acc`: the model as it ships ("infer": the router picks the engram, the output is the
  engram's network times the router's class evidence to the model's `lda_weight`; the
  committed ablation ran at 0.2, the default then);
- `acc_networks`: the router picks the engram, the network alone predicts (`lda_weight = 0`);
- `acc_router`: the router alone (its best (engram, class) group; no network);
- `acc_task_given`: each task's data through its own engram, predicting among its classes
  (within-task prediction);
- `task_inference`: the share of samples routed to their own engram (task prediction);

with BWT, forgetting and learning accuracy of `acc`'s matrix R. `--forgetting_sources` also
asks where the networks forget: when each task ends, its accuracy with the task given and
the networks' parts are kept (hidden kernels, hidden BatchNorm, output kernel, output
BatchNorm); at the end every past task is scored with the task given as the networks are,
and with each part (and all) put back as it was. What a part gives back is the forgetting
that lives in it; metaplasticity acts on the kernels only, BatchNorm gets plain Adam.

Epochs and the learning rate are fixed per scenario (`SCENARIOS`): the epochs the issue
asks for, the learning rate the paper grid chose on validation data for the engram family
(results/paper/*/selection/engram/chosen.json; 0.005 where no choice exists).

    python experiments/ablation.py --scenarios=split_fashion_mnist-class --seeds=0,1,2
    python experiments/ablation.py --scenarios=permuted_mnist-10x20   # hours on 2 cores
    python experiments/ablation.py --notrain   # the table of every finished run, nothing trained
    python experiments/ablation.py --scenarios=permuted_mnist-50x3 --plan   # the runs, in order

Writes `<outdir>/<scenario>/<variant>/seed_<k>.json`, and `table.json`, `table.md` and
`ablation.png` over every finished run (and `forgetting_sources.png` where runs have them).
Several processes may share one `--outdir` (say, one per seed): a run another process is
training holds its lock (`run_lock.RunLock`, `seed_<k>.lock`) and is skipped here.
"""
import json
import os
import shutil
import sys
import time

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np
import tensorflow as tf

from larq_engrams import benchmarks, methods
from larq_engrams.callbacks import TaskEndCallback
from larq_engrams.metrics import backward_transfer, forgetting, learning_accuracy, mean_and_sem
from larq_engrams.optimizers import parse_strength
from larq_engrams.plots import figure_to_png
from larq_engrams.run_lock import RunInProgressError, RunLock
from larq_engrams.task_inputs import split_task_inputs
from larq_engrams.training import ContinualTrainer, environment, write_atomically

# name: (constructor, its arguments, epochs per task, the grid scenario whose validated learning rate is used)
SCENARIOS = {
    "split_fashion_mnist-class": ("split_fashion_mnist", {"setting": "class"}, 2, "split_fashion_mnist-class"),
    "split_fashion_mnist-domain": ("split_fashion_mnist", {"setting": "domain"}, 2, "split_fashion_mnist-domain"),
    "permuted_mnist-10x20": ("permuted_mnist", {"num_tasks": 10}, 20, "permuted_mnist-domain-10tasks"),
    "permuted_mnist-50x3": ("permuted_mnist", {"num_tasks": 50}, 3, "permuted_mnist-domain-10tasks"),
    "split_mnist-class": ("split_mnist", {"setting": "class"}, 5, "split_mnist-class"),  # small: for checks
}
# The rows of R beyond the next task are read by no column here; at 50 tasks measuring
# them would double each run's evaluation (ContinualTrainer's `future_tasks`).
FUTURE_TASKS = {"permuted_mnist-50x3": "next"}

FLAGS = flags.FLAGS
flags.DEFINE_list("scenarios", ["split_fashion_mnist-class"], f"Of: {', '.join(SCENARIOS)}.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("m", ["0", "1.3"], "Metaplasticity strengths m (0: Adam); per layer as 'output=10' or "
                  "'hidden_0=10+hidden_1=10' (layers not named get m = 0).")
flags.DEFINE_list("engram_fraction", ["0.2", "0.5", "1.0"], "Engram fractions rho.")
flags.DEFINE_list("excitability", ["6", "0"], "Excitabilities beta (not varied at rho = 1).")
flags.DEFINE_list("hidden", ["1024", "1024"], "Hidden widths.")
flags.DEFINE_bool("plain", True, "Also train bnn and mbnn (no engrams) at the same epochs.")
flags.DEFINE_integer("epochs", None, "Override the scenario's epochs per task (checks).")
flags.DEFINE_integer("num_tasks", None, "Only the first N tasks (checks).")
flags.DEFINE_enum("evaluate_on", "test", list(benchmarks.EVALUATION_SPLITS), "test, or validation for a search.")
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_string("grid_dir", "results/paper", "Where the grid's validated learning rates are read.")
flags.DEFINE_string("outdir", "results/ablation", "Where results go.")
flags.DEFINE_bool("forgetting_sources", False, "Also find where the networks forget: for each past task, put each "
                  "part of the networks (hidden kernels, hidden BatchNorm, output kernel, output BatchNorm) back as "
                  "it was when the task ended, and score the task given (engram variants).")
flags.DEFINE_bool("plan", False, "Only print the runs in the order they would run (the finished ones marked), "
                  "and exit.")
flags.DEFINE_bool("train", True, "--notrain: only write the table and figure from the finished runs in --outdir "
                  "(e.g. runs copied in from other machines).")


def _scenario(name, seed):
    constructor, kwargs, _, _ = SCENARIOS[name]
    scenario = getattr(benchmarks, constructor)(**kwargs, seed=seed, source=FLAGS.source,
                                                evaluate_on=FLAGS.evaluate_on)
    return scenario.take(FLAGS.num_tasks) if FLAGS.num_tasks else scenario


def _learning_rate(name):
    path = os.path.join(FLAGS.grid_dir, SCENARIOS[name][3], "selection", "engram", "chosen.json")
    if os.path.exists(path):
        with open(path) as f:
            return float(json.load(f)["learning_rate"]), path
    return 0.005, None


def variants():
    """[(name, method, hyperparameter changes)] of the trained variants."""
    out = []
    for m in map(_strength, FLAGS.m):
        for rho in map(float, FLAGS.engram_fraction):
            for beta in (map(float, FLAGS.excitability) if rho < 1.0 else [float(FLAGS.excitability[0])]):
                out.append((f"m={_label(m)} rho={rho:g} beta={beta:g}", "engram_bnn",
                            {"m": m, "engram_fraction": rho, "excitability": beta}))
    if FLAGS.plain:
        m = _strength(FLAGS.m[-1])
        out += [("bnn", "bnn", {}), (f"mbnn m={_label(m)}", "mbnn", {"m": m})]
    return out


def _strength(text):
    try:
        return parse_strength(text, separator="+")
    except ValueError:
        raise app.UsageError(f"--m: each entry is a float >= 0 or 'layer=value+...', got {text!r}") from None


def _label(m):
    """m as a variant's name shows it: '1.3', or 'output=10', 'hidden_0=10+hidden_1=10'."""
    return f"{m:g}" if isinstance(m, float) else "+".join(f"{k}={v:g}" for k, v in m.items())


def _m_order(m):
    """Floats first, by value, then per-layer strengths by name."""
    return (0, m, "") if isinstance(m, (int, float)) else (1, 0.0, _label(m))


def run_order(variant_list, seeds):
    """[(variant, seed)]: variants that differ only in m (`m=0 rho=0.2 beta=6` and
    `m=1.3 rho=0.2 beta=6`; bnn and mbnn) run next to each other, seed by seed, so that a
    grid stopped part-way has already compared metaplasticity on matched seeds."""
    groups = {}
    for variant in variant_list:
        _, method, changes = variant
        key = tuple(sorted((k, v) for k, v in changes.items() if k != "m")) if method == "engram_bnn" else "plain"
        groups.setdefault(key, []).append(variant)
    return [(variant, seed) for group in groups.values() for seed in seeds for variant in group]


def _arrays(dataset):
    xs, ys = [], []
    for x, y in dataset:
        xs.append(split_task_inputs(x)[0].numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _predict(model, x, batch=1000):
    return np.concatenate([model(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)])


def task_given_accuracy(model, k, x, y):
    """Within-task prediction: task k's inputs through engram k, among its classes."""
    model.set_inference("task", task=k)
    logits = np.where(model.engram_classes.numpy()[k] > 0, _predict(model, x), -np.inf)
    return float(np.mean(logits.argmax(-1) == y))


def engram_evaluations(model, tests):
    """The engram model's accuracies on each task's evaluation data `tests` ([(x, y)]),
    evaluated the ways of the module docstring (at the end of training)."""
    out = {"acc_networks": [], "acc_router": [], "acc_task_given": []}
    weight = model.lda_weight
    model.lda_weight = 0.0
    model.set_inference("infer")
    for x, y in tests:
        out["acc_networks"].append(float(np.mean(_predict(model, x).argmax(-1) == y)))
    model.lda_weight = weight
    model.set_inference("infer")
    router = model.task_discriminant
    for x, y in tests:
        logits = np.concatenate([router.predict_classes(model.flatten(tf.constant(x[i:i + 1000]))).numpy()
                                 for i in range(0, len(x), 1000)])
        out["acc_router"].append(float(np.mean(logits.argmax(-1) == y)))
    for k, (x, y) in enumerate(tests):
        out["acc_task_given"].append(task_given_accuracy(model, k, x, y))
    model.set_inference("infer")
    return {key: float(np.mean(values)) for key, values in out.items()}


def network_parts(model):
    """{part: [variables]}: an engram model's networks, in the parts `--forgetting_sources`
    puts back (everything a task's prediction with the task given reads, the router aside)."""
    return {"hidden kernels": [layer.dense.kernel for layer in model.engram_layers],
            "hidden BatchNorm": [v for layer in model.engram_layers
                                 for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)],
            "output kernel": [model.classifier.kernel],
            "output BatchNorm": list(model.classifier_norm.variables)}


class TaskEndSnapshots(TaskEndCallback):
    """When task k ends: its accuracy with the task given, and the networks' parts, in
    `<folder>/task_<k>.npz` (on disk: a run resumed from a checkpoint keeps them)."""

    def __init__(self, model, tests, folder):
        super().__init__()
        self.engram_model, self.tests, self.folder = model, tests, folder

    def task_ended(self, task):
        # Inside the trainer's loop: a run's train_seconds include this evaluation.
        mode = self.engram_model.inference_mode
        accuracy = task_given_accuracy(self.engram_model, task, *self.tests[task])
        self.engram_model.set_inference(mode)
        values = [v.numpy() for part in network_parts(self.engram_model).values() for v in part]
        np.savez(os.path.join(self.folder, f"task_{task}.npz"), accuracy, *values)


def forgetting_sources(model, tests, folder):
    """Per past task k (all but the last), its accuracy with the task given at the end of
    training ("end"), when task k ended ("at task end"), and at the end with one part of the
    networks (or all, "all parts") put back as it was when task k ended. What a part gives
    back is the forgetting that lives in it; metaplasticity acts on the two kernels only."""
    parts = network_parts(model)
    index = {v.ref(): i for i, v in enumerate(model.weights)}
    final = model.get_weights()
    out = {"end": [], "at task end": [], **{part: [] for part in parts}, "all parts": []}
    for k, (x, y) in enumerate(tests[:-1]):
        with np.load(os.path.join(folder, f"task_{k}.npz")) as saved:
            accuracy, *values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        out["end"].append(task_given_accuracy(model, k, x, y))
        out["at task end"].append(float(accuracy))
        values = iter(values)  # saved in the order of `network_parts`
        snapshot = {part: {index[v.ref()]: next(values) for v in variables} for part, variables in parts.items()}
        snapshot["all parts"] = {j: value for part in parts for j, value in snapshot[part].items()}
        for part, restored in snapshot.items():
            weights = list(final)
            for j, value in restored.items():
                weights[j] = value
            model.set_weights(weights)  # an EngramModel's set_weights drops its cached blocks
            out[part].append(task_given_accuracy(model, k, x, y))
        model.set_weights(final)
    model.set_inference("infer")
    return out


def _settings(name, variant, method, changes, seed):
    """What a run's record must match to be reused, and where the record goes."""
    settings = {"scenario": name, "variant": variant, "method": method, "changes": changes, "seed": seed,
                "epochs": FLAGS.epochs or SCENARIOS[name][2], "learning_rate": _learning_rate(name)[0],
                "hidden": [int(h) for h in FLAGS.hidden], "evaluate_on": FLAGS.evaluate_on,
                "num_tasks": FLAGS.num_tasks, "source": FLAGS.source}
    if FLAGS.forgetting_sources and method == "engram_bnn":
        settings["forgetting_sources"] = True  # only then: earlier records stay reusable
    return settings, os.path.join(FLAGS.outdir, name, variant.replace(" ", "_"), f"seed_{seed}.json")


def _finished(settings, path):
    """The record at `path` if it was run with `settings`, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if record["settings"] == settings else None


def run_one(name, variant, method, changes, seed):
    """Trains one variant (reusing a finished run of the same settings) and returns its record."""
    settings, path = _settings(name, variant, method, changes, seed)
    record = _finished(settings, path)
    if record is not None:
        print(f"    reusing {path}", flush=True)
        return record
    with RunLock(path):  # another process training it: RunInProgressError, nothing touched
        return _train(settings, path, name, method, changes, seed)


def _train(settings, path, name, method, changes, seed):
    """`run_one`'s training, under the run's lock."""
    record = _finished(settings, path)  # finished by another process since the first look
    if record is not None:
        return record
    epochs, lr, hidden = settings["epochs"], settings["learning_rate"], tuple(settings["hidden"])
    lr_source = _learning_rate(name)[1]
    # Per-task checkpoints next to the record (git-ignored), for runs killed mid-way;
    # those of other settings are dropped.
    checkpoints = path[: -len(".json")] + ".checkpoints"
    marker = os.path.join(checkpoints, "settings.json")
    if os.path.isdir(checkpoints) and (not os.path.exists(marker) or json.load(open(marker)) != settings):
        shutil.rmtree(checkpoints)
    os.makedirs(checkpoints, exist_ok=True)
    write_atomically(marker, json.dumps(settings))
    scenario = _scenario(name, seed)
    # Unprotected, as the committed ablation ran: it studies where the networks forget and
    # what metaplasticity saves, which `protect_engrams` (the default since) rules out.
    hp = methods.HyperParameters(hidden=hidden, learning_rate=lr, seed=seed, protect_engrams=False, **changes)
    setup = methods.build(method, scenario, hp)
    tests = [_arrays(task.test) for task in scenario] if method == "engram_bnn" else None
    callbacks, snapshots = list(setup.callbacks), os.path.join(checkpoints, "snapshots")
    if settings.get("forgetting_sources"):
        os.makedirs(snapshots, exist_ok=True)
        callbacks.append(TaskEndSnapshots(setup.model, tests, snapshots))
    started = time.perf_counter()
    future = FUTURE_TASKS.get(name, "all")
    result = ContinualTrainer(setup.model, setup.optimizer, callbacks=callbacks, epochs=epochs, seed=seed,
                              future_tasks=future, verbose=0, checkpoint_dir=checkpoints).fit(setup.scenario)
    R = result.R
    record = {"settings": settings, "learning_rate_chosen_in": lr_source,
              "acc": result.metrics["acc"], "bwt": backward_transfer(R), "forgetting": forgetting(R),
              "learning_acc": learning_accuracy(R), "task_inference": result.metrics.get("task_inference"),
              "R": R.tolist(), "future_tasks": future, "train_seconds": time.perf_counter() - started,
              "commit": environment().get("git_commit"), "command": " ".join(sys.argv)}
    if method == "engram_bnn":
        record.update(engram_evaluations(setup.model, tests))
    if settings.get("forgetting_sources"):
        record["sources"] = forgetting_sources(setup.model, tests, snapshots)
    write_atomically(path, json.dumps(record, indent=1))
    shutil.rmtree(checkpoints)
    return record


COLUMNS = ("acc", "acc_networks", "acc_router", "acc_task_given", "task_inference", "learning_acc", "forgetting",
           "bwt")


def finished_runs(outdir):
    """{(scenario, variant): [records]} of every finished run in `outdir`."""
    runs = {}
    for name in sorted(os.listdir(outdir)) if os.path.isdir(outdir) else []:
        folder = os.path.join(outdir, name)
        if name not in SCENARIOS or not os.path.isdir(folder):
            continue
        for variant in sorted(os.listdir(folder)):
            for entry in sorted(os.listdir(os.path.join(folder, variant))):
                if entry.endswith(".json"):  # not a run's checkpoints
                    with open(os.path.join(folder, variant, entry)) as f:
                        record = json.load(f)
                    runs.setdefault((name, record["settings"]["variant"]), []).append(record)
    return runs


def _row_order(item):
    """Rows that differ only in m side by side: engram settings by (rho, beta), then m;
    then bnn before mbnn."""
    (name, variant), records = item
    settings = records[0]["settings"]
    changes = settings["changes"]
    if settings["method"] == "engram_bnn":
        return name, 0, changes["engram_fraction"], -changes["excitability"], _m_order(changes["m"])
    return name, 1, 0.0, 0.0, _m_order(changes.get("m", 0.0))


def source_columns(sources):
    """One run's `forgetting_sources`, as the table shows it: the past tasks' mean accuracy
    at the end and when each ended, what was forgotten (their difference), and the points
    each part gives back (put back minus end), paired within the run."""
    end, at_task_end = float(np.mean(sources["end"])), float(np.mean(sources["at task end"]))
    out = {"end": end, "at task end": at_task_end, "forgotten": at_task_end - end}
    for part, values in sources.items():
        if part not in ("end", "at task end"):
            out[f"given back: {part}"] = float(np.mean(values)) - end
    return out


def summarize(runs):
    """{scenario: {variant: {column: (mean, sem), "seeds": n}}} of `finished_runs`, rows
    that differ only in m side by side."""
    table = {}
    for (name, variant), records in sorted(runs.items(), key=_row_order):
        row = {"seeds": len(records), "factors": records[0]["settings"]["changes"],
               "method": records[0]["settings"]["method"]}
        for column in COLUMNS:
            values = [r[column] for r in records if r.get(column) is not None]
            if values:
                row[column] = mean_and_sem(values)
        sources = [source_columns(r["sources"]) for r in records if r.get("sources")]
        if sources:  # paired within each run, then mean and s.e.m. over runs
            row["sources"] = {key: mean_and_sem([s[key] for s in sources]) for key in sources[0]}
            row["sources_seeds"] = len(sources)
        table.setdefault(name, {})[variant] = row
    return table


def provenance(runs):
    """Markdown lines: the commits and commands of `finished_runs` (a table may gather
    runs of several sittings and machines)."""
    records = [r for variant_runs in runs.values() for r in variant_runs]
    commits = sorted({(r.get("commit") or "?")[:7] for r in records})
    commands = sorted({r.get("command") or "?" for r in records})
    return ([f"Runs: {len(records)}, at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}; "
             f"their commands:", ""] + [f"    {c}" for c in commands])


def to_markdown(table):
    lines = []
    for name, rows in table.items():
        lines += [f"### {name}", "", "| variant | seeds | " + " | ".join(COLUMNS) + " |",
                  "|---|---|" + "---|" * len(COLUMNS)]
        for variant, row in rows.items():
            cells = [f"{100 * row[c][0]:.1f} ± {100 * row[c][1]:.1f}" if c in row else "—" for c in COLUMNS]
            lines.append(f"| {variant} | {row['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
        sourced = {variant: row["sources"] for variant, row in rows.items() if "sources" in row}
        if sourced:
            parts = list(next(iter(sourced.values())))
            lines += ["Where the networks forget: the past tasks' accuracy with the task given at the end and when "
                      "each task ended, and the points each part gives back when put back as it was then "
                      "(paired within each run):", "",
                      "| variant | seeds | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
            for variant, sources in sourced.items():
                cells = [f"{100 * sources[p][0]:.1f} ± {100 * sources[p][1]:.1f}" for p in parts]
                lines.append(f"| {variant} | {rows[variant]['sources_seeds']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(table):
    from matplotlib.figure import Figure

    columns = min(2, max(1, len(table)))  # two panels a row: the figure stays readable
    rows_of_panels = -(-max(1, len(table)) // columns)
    figure = Figure(figsize=(7 * columns, 4.5 * rows_of_panels))
    axes = np.atleast_1d(figure.subplots(rows_of_panels, columns)).ravel()
    for ax in axes[len(table):]:
        ax.set_visible(False)
    for ax, (name, rows) in zip(axes, table.items()):
        names, lowest = list(rows), 100.0
        for offset, column, color in ((-0.2, "acc", "tab:red"), (0.0, "acc_task_given", "tab:blue"),
                                      (0.2, "task_inference", "tab:green")):
            values = [100 * rows[v][column][0] if column in rows[v] else np.nan for v in names]
            errors = [100 * rows[v][column][1] if column in rows[v] else 0.0 for v in names]  # s.e.m.
            ax.bar(np.arange(len(names)) + offset, values, 0.2, yerr=errors, capsize=2, color=color, label=column)
            lowest = np.nanmin([lowest, *values])
        ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, max(len(names), 6) - 0.4)  # a scenario with few rows keeps narrow bars
        ax.set_ylim(max(0.0, lowest - 5), 100)  # every bar's top in view, small differences readable
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8, frameon=False,
                  title="mean ± s.e.m. over seeds", title_fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.1 / rows_of_panels))
    return figure


def plot_forgetting_sources(table):
    """Per scenario and variant with `sources`: the points the past tasks lost (task given)
    and what each part of the networks gives back when put back; None if no run has them."""
    from matplotlib.figure import Figure

    scenarios = {name: {v: row["sources"] for v, row in rows.items() if "sources" in row}
                 for name, rows in table.items()}
    scenarios = {name: rows for name, rows in scenarios.items() if rows}
    if not scenarios:
        return None
    figure = Figure(figsize=(7 * len(scenarios), 4.5))
    for ax, (name, rows) in zip(np.atleast_1d(figure.subplots(1, len(scenarios))), scenarios.items()):
        bars = [key for key in next(iter(rows.values())) if key == "forgotten"
                or (key.startswith("given back: ") and key != "given back: all parts")]
        width = 0.8 / len(bars)
        for i, bar in enumerate(bars):
            means = [100 * s[bar][0] for s in rows.values()]
            errors = [100 * s[bar][1] for s in rows.values()]  # s.e.m. over runs
            ax.bar(np.arange(len(rows)) + (i - (len(bars) - 1) / 2) * width, means, width, yerr=errors,
                   capsize=2, label=bar.replace("given back: ", ""))
        ax.set_xticks(np.arange(len(rows)), list(rows), rotation=30, ha="right", fontsize=7)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_ylabel("points (past tasks, task given)")
        ax.set_title(f"{name}: forgotten, and given back by each part put back", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.require_known("scenarios", FLAGS.scenarios, SCENARIOS)
    plan = [(name, *variant, int(seed)) for name in FLAGS.scenarios
            for variant, seed in run_order(variants(), FLAGS.seeds)] if FLAGS.train or FLAGS.plan else []
    if FLAGS.plan:
        for i, (name, variant, method, changes, seed) in enumerate(plan):
            done = _finished(*_settings(name, variant, method, changes, seed)) is not None
            print(f"[{i + 1}/{len(plan)}] {name} {variant} seed {seed}" + ("  (finished)" if done else ""))
        return
    started = time.perf_counter()
    for i, (name, variant, method, changes, seed) in enumerate(plan):
        elapsed = (time.perf_counter() - started) / 60
        print(f"[{i + 1}/{len(plan)}] {name} {variant} seed {seed}  (elapsed {elapsed:.1f} min)", flush=True)
        try:
            record = run_one(name, variant, method, changes, seed)
        except RunInProgressError as error:  # the table below takes it if it is finished by then
            print(f"    skipped: {error}", flush=True)
            continue
        print("    " + ", ".join(f"{c} {100 * record[c]:.1f}" for c in COLUMNS if record.get(c) is not None)
              + f"; trained in {record['train_seconds'] / 60:.1f} min", flush=True)
    runs = finished_runs(FLAGS.outdir)
    table = summarize(runs)
    write_atomically(os.path.join(FLAGS.outdir, "table.json"), json.dumps(table, indent=1))
    markdown = to_markdown(table)
    write_atomically(os.path.join(FLAGS.outdir, "table.md"), "\n".join(
        [markdown, f"Table written by `{' '.join(sys.argv)}` over every finished run in `{FLAGS.outdir}`.", ""]
        + provenance(runs)) + "\n")
    figure_to_png(plot(table), os.path.join(FLAGS.outdir, "ablation.png"))
    sources = plot_forgetting_sources(table)
    if sources is not None:
        figure_to_png(sources, os.path.join(FLAGS.outdir, "forgetting_sources.png"))
    print(markdown)


if __name__ == "__main__":
    cli.run(main)
