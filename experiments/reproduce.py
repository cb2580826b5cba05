"""The comparison grid: methods x scenarios x seeds, on one machine, resumable.

Writes under --outdir (default `results/`): every run's `result.json`/`result.csv`/plots,
per scenario a `summary.md`/`summary.json`, and overall `table.md` (ACC and BWT per method
and scenario), `acc.png` (ACC per method and scenario) and `memory.png` (peak host RSS of
each run, measured in its own process). Finished runs are skipped when the command is
started again.

    python experiments/reproduce.py                         # the README table (bundled data)
    python experiments/reproduce.py --seeds=0 --grid=smoke  # a minute-long check
    python experiments/reproduce.py --grid=paper --outdir=results/paper   # the paper's scale (days on 2 cores)

`--grid=paper` is 2048-2048 for every method, with epochs per task and learning rate
*chosen on validation data*: for each scenario and method family (`FAMILIES`), every
point of the dataset's selection grid (`SELECTION_GRIDS`: epochs 2, 5, 10 on the
bundled MNIST sample, 2, 5 on the full-size data, which has 5-7.5x the steps per epoch;
learning rate 0.001, 0.005; or `--selection_grid`) is run on seed 0 with a validation
split held out of the training data (`larq_engrams.selection`), the point with the best
mean validation ACC over the family's continual learners (`joint`, the upper reference,
is left out and follows its family) is chosen, and only then is every method run on
the test split for every seed, with that setting. The selection runs go to `--selection_dir`;
their tables are copied to `<outdir>/<scenario>/selection/<family>/`. Scenarios run
cheapest first, and everything finished is reused, so the grid can run over many
sittings: commit `<outdir>` (each run's results and plots, each choice's tables) and a
fresh checkout reuses the choices and the finished runs. `--scenarios` splits the grid
between processes that share `--outdir`; `table.md` covers every finished scenario.

    python experiments/reproduce.py --grid=paper --outdir=results/paper --scenarios=split_mnist-class &
    python experiments/reproduce.py --grid=paper --outdir=results/paper --scenarios=split_mnist-domain
"""
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np

from larq_engrams import benchmarks, experiment, methods, selection
from larq_engrams.metrics import format_mean_and_sem
from larq_engrams.plots import figure_to_png
from larq_engrams.training import environment, write_atomically

ALL = ["finetune", "joint", "ewc", "online_ewc", "si", "lwf", "bnn", "mbnn", "engram", "engram_bnn"]
# The router alone and replay at 200 and 1,000 examples and at engram_bnn's learning bytes.
REPLAY_ROWS = [f"{m}@{b}" for m in ("er", "derpp", "er_bnn") for b in ("200", "1000", "equal")]
PAPER = ALL + ["ncm", "slda", "ncm_rf", "slda_rf"] + REPLAY_ROWS
# Task-IL gives the task id: nothing to route (no routers alone) and replay is for class-
# and domain-IL (it raises there); XdG needs the task id.
PAPER_TASK_IL = ALL + ["ncm", "slda", "xdg"]
# Methods that share one setting (epochs per task, learning rate) in --grid=paper.
FAMILIES = {
    "mlp": ("finetune", "joint", "ewc", "online_ewc", "si", "lwf", "xdg"),
    "bnn": ("bnn", "mbnn"),
    "engram": ("engram", "engram_bnn"),
    "class_statistics": ("ncm", "slda", "ncm_rf", "slda_rf"),
    # Replay: settings chosen at the smallest buffer, kept for every size.
    "replay": ("er@200", "derpp@200", "er@1000", "derpp@1000", "er@equal", "derpp@equal"),
    "replay_bnn": ("er_bnn@200", "er_bnn@1000", "er_bnn@equal"),
}
# Class statistics take one pass over each task's data and have no optimizer: nothing to choose.
FIXED = {"class_statistics": {"epochs": 1}}
# Joint training (all data seen so far) is the upper reference, not a continual learner:
# it runs with its family's setting, chosen on the continual learners alone (its own
# selection runs would cost 3x, with 10 tasks 5.5x, a continual learner's).
REFERENCES = ("joint",)
# Members that run with their family's setting without weighing in its choice: the
# upper reference, and replay at the larger buffers (chosen at 200 examples).
FOLLOWERS = REFERENCES + tuple(m for m in REPLAY_ROWS if not m.endswith("@200"))
# Points compared on validation per dataset, unless --selection_grid is given. The epochs
# span a like range of optimizer steps per task (batch 100): the bundled MNIST sample has
# 1,440 training images per task in Split MNIST (2-10 epochs: 29-144 steps), full
# Fashion-MNIST 10,800 (2-5 epochs: 216-540 steps), Permuted MNIST 7,200 (144-360 steps).
SELECTION_GRIDS = {
    "split_mnist": "epochs=2,5,10;learning_rate=0.001,0.005",
    "split_fashion_mnist": "epochs=2,5;learning_rate=0.001,0.005",
    "permuted_mnist": "epochs=2,5;learning_rate=0.001,0.005",
}
CHOSEN = None  # in a grid row: epochs per task chosen on validation data
# (scenario, setting, num_tasks, methods, epochs, batch size). XdG needs the task id.
GRIDS = {
    "standard": [
        ("split_mnist", "class", None, ALL, 2, 32),
        ("split_mnist", "domain", None, ALL, 2, 32),
        ("split_mnist", "task", None, ALL + ["xdg"], 2, 32),
        ("permuted_mnist", "domain", 5, ALL, 2, 100),
    ],
    "smoke": [("split_mnist", "class", 2, ["bnn", "engram_bnn"], 1, 64)],
    # Cheapest first: the bundled MNIST sample (7,200 training images), then the full
    # Fashion-MNIST (54,000).
    "paper": [
        ("split_mnist", "class", None, PAPER, CHOSEN, 100),
        ("split_mnist", "domain", None, PAPER, CHOSEN, 100),
        ("split_mnist", "task", None, PAPER_TASK_IL, CHOSEN, 100),
        ("permuted_mnist", "domain", 10, PAPER, CHOSEN, 100),
        ("split_fashion_mnist", "class", None, PAPER, CHOSEN, 100),
        ("split_fashion_mnist", "domain", None, PAPER, CHOSEN, 100),
        ("split_fashion_mnist", "task", None, PAPER_TASK_IL, CHOSEN, 100),
    ],
    "paper_smoke": [("split_mnist", "class", 2, ["finetune", "joint", "bnn", "mbnn", "ncm"], CHOSEN, 64)],
}
HIDDEN = {"paper": ("2048", "2048")}  # the others: 256-256

FLAGS = flags.FLAGS
flags.DEFINE_enum("grid", "standard", list(GRIDS), "Which grid.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("hidden", None, "Hidden widths (every method); default 2048,2048 for --grid=paper, "
                  "else 256,256.")
flags.DEFINE_string("selection_grid", None,
                    "Grids with chosen epochs: the points compared on validation data per method family, "
                    "for every scenario; default per dataset: " +
                    "; ".join(f"{k}: '{v}'" for k, v in SELECTION_GRIDS.items()) + ".")
flags.DEFINE_list("selection_seeds", ["0"], "Grids with chosen epochs: the seeds of the selection runs.")
flags.DEFINE_string("selection_dir", "runs/paper-selection", "Grids with chosen epochs: where selection runs go.")
flags.DEFINE_list("methods", None, "Run only these methods on test. With --grid=paper a family's setting is "
                  "still chosen on validation over all its learners, and the scenario's summary keeps the rows "
                  "other commands wrote.")
flags.DEFINE_list("scenarios", None, "Restrict to these scenarios, by label (e.g. split_mnist-class, "
                  "permuted_mnist-domain-10tasks): two processes can share one --outdir, each on its own.")
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_string("data_dir", None, "TFDS data dir or folder of original files.")
flags.register_validator("data_dir", lambda d: d is None or os.path.isdir(d), "--data_dir must be an existing folder")
flags.DEFINE_string("outdir", "results", "Where results go.")
flags.DEFINE_string("logdir", None, "TensorBoard logs (none by default: the grid is large).")
flags.DEFINE_bool("isolate", True, "Run every experiment in a fresh process, so that its peak memory is its "
                  "own (in one long process the resident set only grows from run to run).")


def main(argv):
    del argv
    seeds = [int(s) for s in FLAGS.seeds]
    hidden = FLAGS.hidden or HIDDEN.get(FLAGS.grid, ("256", "256"))
    hp = methods.HyperParameters(hidden=tuple(int(h) for h in hidden))
    unknown = {m for m in FLAGS.methods or [] if not methods.known(m)}
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}")
    try:
        selection_grids = {scenario: selection.parse_grid(FLAGS.selection_grid or text)
                           for scenario, text in SELECTION_GRIDS.items()}
    except ValueError as error:
        raise app.UsageError(f"--selection_grid: {error}")
    command = " ".join(sys.argv)
    started = time.perf_counter()
    compute = {"test": 0.0, "selection": 0.0}  # seconds this command spent running them (reused runs: ~0)

    def run(config, method, seed, outdir, logdir=None, part="test"):
        begun = time.perf_counter()
        if FLAGS.isolate:
            result = experiment.run_in_fresh_process(config, method, seed, outdir, logdir, command=command,
                                                     log_level=FLAGS.log_level)
        else:
            result = experiment.run_experiment(config, method, seed, outdir, logdir, verbose=0, command=command)
        compute[part] += time.perf_counter() - begun
        return result

    rows = GRIDS[FLAGS.grid]
    labels = [_label(row) for row in rows]
    unknown = set(FLAGS.scenarios or []) - set(labels)
    if unknown:
        raise app.UsageError(f"--scenarios: unknown {sorted(unknown)}; --grid={FLAGS.grid} has {', '.join(labels)}")
    rows = [row for row, label in zip(rows, labels) if FLAGS.scenarios is None or label in FLAGS.scenarios]
    total = sum(len(seeds) * len(_wanted(names)) for *_, names, _, _ in rows)
    done, summaries, choices = 0, {}, {}
    for scenario, setting, num_tasks, names, epochs, batch in rows:
        base = experiment.ExperimentConfig(scenario=scenario, setting=setting, num_tasks=num_tasks,
                                           epochs=epochs or 1, batch_size=batch, source=FLAGS.source,
                                           data_dir=FLAGS.data_dir, hparams=hp)
        label = _label((scenario, setting, num_tasks))
        out = os.path.join(FLAGS.outdir, label)
        logdir = os.path.join(FLAGS.logdir, label) if FLAGS.logdir else None
        results = {}
        whole = dict(_families(names))  # --methods picks what runs on test, not whom a family's choice weighs
        for family, members in _families(_wanted(names)):
            config = base
            if epochs is CHOSEN:
                point = choose_on_validation(base, label, family, whole[family], selection_grids[scenario], out, run)
                choices.setdefault(label, {})[family] = point
                config = selection.apply_point(base, point)
            for method in members:
                for seed in seeds:
                    done += 1
                    elapsed = time.perf_counter() - started
                    print(f"[{done}/{total}] {label} {method} seed {seed}  (elapsed {elapsed / 60:.1f} min)",
                          flush=True)
                    result = run(config, method, seed, out, logdir)
                    results.setdefault(method, []).append(result)
                    print(f"    ACC {100 * result.metrics['acc']:.1f}%  BWT {100 * result.metrics['bwt']:+.1f}%",
                          flush=True)
        # Each finished scenario is summarized at once: a long grid can be committed part by part.
        summaries[label] = experiment.summarize(results)
        if FLAGS.methods is not None:  # keep the rows of the methods other commands ran
            earlier = _finished_summary(out)
            summaries[label] = {**{m: row for m, row in earlier.get("methods", {}).items() if m in names},
                                **summaries[label]}
            summaries[label] = {m: summaries[label][m] for m in names if m in summaries[label]}  # grid order
            choices[label] = {**(earlier.get("chosen") or {}), **choices.get(label, {})}
        experiment.write_summary(os.path.join(out, "summary"), summaries[label], label,
                                 {"command": command, "chosen": choices.get(label)})

    # The table covers every finished scenario of the grid in --outdir: those of this
    # command, of earlier sittings and of processes given other --scenarios.
    for label in labels:
        finished = _finished_summary(os.path.join(FLAGS.outdir, label))
        if label not in summaries and finished:
            summaries[label] = finished["methods"]
            if finished.get("chosen"):
                choices[label] = finished["chosen"]
    summaries = {label: summaries[label] for label in labels if label in summaries}
    all_sittings = recorded_compute(FLAGS.outdir, summaries)
    provenance = recorded_provenance(FLAGS.outdir, summaries)
    table = grid_table(summaries, seeds, choices)
    note = provenance_note(command, provenance, all_sittings)
    write_atomically(os.path.join(FLAGS.outdir, "table.md"), table + "\n\n" + "\n".join(note) + "\n")
    write_atomically(os.path.join(FLAGS.outdir, "table.json"), json.dumps(
        {"command": command, "seeds": seeds, "hidden": list(hp.hidden), "wall_seconds": time.perf_counter() - started,
         "compute_seconds": compute, "compute_seconds_all_sittings": all_sittings, "provenance": provenance,
         "machine": environment(), "chosen": choices, "summaries": summaries}, indent=2))
    plot_grid(summaries, os.path.join(FLAGS.outdir, "acc.png"), "acc", "ACC (%)", scale=100)
    plot_grid(summaries, os.path.join(FLAGS.outdir, "memory.png"), "peak_rss_bytes", "peak host RSS (MiB)",
              scale=2**-20)
    print("\n" + table)
    print(f"\nWrote {FLAGS.outdir}/table.md, acc.png, memory.png and per-run results "
          f"({(time.perf_counter() - started) / 60:.1f} min, of which running experiments: "
          f"{compute['test'] / 3600:.2f} h test, {compute['selection'] / 3600:.2f} h selection).")


def _label(row):
    """A grid row's scenario label, as its folder is named: scenario-setting[-Ntasks]."""
    scenario, setting, num_tasks = row[:3]
    return f"{scenario}-{setting}" + ("" if num_tasks is None else f"-{num_tasks}tasks")


def _records(outdir, labels):
    """(part, record) for every finished run's `result.json` ("test") and every
    selection's `selection.json` ("selection") under the scenarios `labels`."""
    for label in labels:
        for folder, subfolders, files in os.walk(os.path.join(outdir, label)):
            subfolders.sort()  # one order on every file system
            for name, part in (("result.json", "test"), ("selection.json", "selection")):
                if name in files:
                    with open(os.path.join(folder, name)) as f:
                        yield part, json.load(f)


def recorded_compute(outdir, summaries):
    """{"test", "selection"}: seconds in the records of every finished scenario's runs
    (each run's own wall time; each selection's, from its table), whichever sitting ran them."""
    total = {"test": 0.0, "selection": 0.0}
    for part, record in _records(outdir, summaries):
        # a selection's runs' own times (an earlier sitting's included), else its wall time
        seconds = (record["config"].get("wall_seconds") if part == "test"
                   else record.get("run_seconds", record.get("wall_seconds")))
        total[part] += seconds or 0.0
    return total


def recorded_provenance(outdir, summaries, root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """Which code and machines made the finished scenarios' test runs, from their records:
    {"commits": distinct commits, oldest first where git knows them; "dirty": how many
    records say "-dirty" (uncommitted edits to tracked files when the run started);
    "dirty_library": the files of `larq_engrams/` among those edits, where the records list
    them ("git_modified"); "dirty_unlisted": how many "-dirty" records predate that list;
    "library_changes": the files of `larq_engrams/` that differ between the oldest and
    newest commit (empty: one library throughout), None where git cannot tell; "machines":
    the distinct machines, in words}. `root`: the checkout whose history orders the commits."""
    found, dirty, machines = [], 0, []
    dirty_library, dirty_unlisted = set(), 0
    for part, record in _records(outdir, summaries):
        if part != "test":
            continue
        env = record.get("environment") or {}
        machine = (f"{env.get('processor', '?')}, {env.get('cpu_count', '?')} CPU cores, device "
                   f"{env.get('device', '?')}, TensorFlow {env.get('tensorflow', '?')}, Larq {env.get('larq', '?')}")
        if machine not in machines:
            machines.append(machine)
        commit = env.get("git_commit")
        if commit:
            if commit.endswith("-dirty"):
                dirty += 1
                modified = env.get("git_modified")
                if modified is None:
                    dirty_unlisted += 1
                else:
                    dirty_library.update(f for f in modified if f.startswith("larq_engrams/"))
            commit = commit.removesuffix("-dirty")
            if commit not in found:
                found.append(commit)

    def git(*args):
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):  # no git: the order and the changes stay unknown
            return None
        return proc.stdout.split() if proc.returncode == 0 else None

    history = git("rev-list", "--reverse", "HEAD") or []  # oldest first
    order = {commit: i for i, commit in enumerate(history)}
    found.sort(key=lambda c: order.get(c, len(order)))
    changes = None
    if found and all(c in order for c in found):
        changes = git("diff", "--name-only", found[0], found[-1], "--", "larq_engrams/")
    return {"commits": found, "dirty": dirty, "dirty_library": sorted(dirty_library),
            "dirty_unlisted": dirty_unlisted, "library_changes": changes, "machines": machines}


def provenance_note(command, provenance, compute):
    """Markdown lines under the table: the command, the code, the compute and the machine."""
    hours = {part: seconds / 3600 for part, seconds in compute.items()}
    shown = [c[:7] for c in provenance["commits"]]
    code = (f"runs recorded at {len(shown)} commits, {shown[0]} to {shown[-1]}" if len(shown) > 1
            else f"runs recorded at commit {shown[0]}" if shown else "no commit recorded")
    if provenance["dirty"]:
        dirty = provenance["dirty"]
        listed = dirty - provenance["dirty_unlisted"]
        edits = ("" if not listed else
                 f"; of the {listed} that list their files, edits to `larq_engrams/`: "
                 f"{', '.join(provenance['dirty_library']) or 'none'}")
        code += (f" ({dirty} record{'s' if dirty > 1 else ''} \"-dirty\": uncommitted edits to tracked files when "
                 f"the run started{edits})")
    changes = provenance["library_changes"]
    code += ("; `larq_engrams/` is the same at all of them" if changes == [] else
             f"; `larq_engrams/` differs between the first and last in: {', '.join(changes)}" if changes else "")
    # A grid is written over many sittings: name the last command, and where the others are.
    return [f"Command: `{command}` (the last to write this table; each run records its own "
            "command in its result.json).", "",
            f"Code: {code}. Compute, all sittings: {hours['test']:.2f} h of test runs and "
            f"{hours['selection']:.2f} h of selection runs (each run's own time, from its record). "
            f"Machine{'s' if len(provenance['machines']) > 1 else ''}: {'; '.join(provenance['machines']) or '?'}."]


def _finished_summary(folder):
    """The scenario summary an earlier command wrote in `folder` ({} if none)."""
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _wanted(names):
    return [m for m in names if FLAGS.methods is None or m in FLAGS.methods]


def _families(names):
    """[(family, [its methods among `names`, in grid order])], families in grid order."""
    family_of = {m: f for f, members in FAMILIES.items() for m in members}
    out = {}
    for name in names:
        out.setdefault(family_of.get(name, name), []).append(name)
    return list(out.items())


def choose_on_validation(base, label, family, members, grid, out, run):
    """The family's setting: the best point of `grid` by mean validation ACC over its
    methods (seeds --selection_seeds), or its fixed setting. The tables are copied to
    `<out>/selection/<family>/`."""
    if family in FIXED:
        return dict(FIXED[family])
    members = [m for m in members if m not in FOLLOWERS] or members
    copy = os.path.join(out, "selection", family)
    reused = _finished_selection(copy, members, grid)
    if reused is not None:
        print(f"    reusing the setting chosen for {family} on {label}: {reused} ({copy})", flush=True)
        return reused
    folder = os.path.join(FLAGS.selection_dir, label, family)
    print(f"choosing epochs and learning rate for {'+'.join(members)} on {label} (validation data)", flush=True)
    chosen = selection.select_on_validation(
        base, members, grid, [int(s) for s in FLAGS.selection_seeds], folder, command=" ".join(sys.argv),
        runner=lambda config, method, seed, outdir: run(config, method, seed, outdir, part="selection"))
    os.makedirs(copy, exist_ok=True)
    for name in ("selection.md", "selection.json", "chosen.json"):
        shutil.copyfile(os.path.join(folder, name), os.path.join(copy, name))
    print(f"    chosen for {family}: {chosen.rows[0]['label']}", flush=True)
    return chosen.chosen


def _finished_selection(folder, members, grid):
    """The setting chosen in an earlier sitting (its tables in `folder`, committed with
    the results) if it ranked the same grid for the same methods and seeds; else None,
    and the selection runs again."""
    try:
        with open(os.path.join(folder, "selection.json")) as f:
            table = json.load(f)
        with open(os.path.join(folder, "chosen.json")) as f:
            chosen = json.load(f)
    except FileNotFoundError:
        return None
    same = (table.get("methods") == list(members)
            and table.get("seeds") == [int(s) for s in FLAGS.selection_seeds]
            and sorted(map(_key, (row["setting"] for row in table.get("rows", [])))) == sorted(map(_key, grid)))
    return chosen if same else None


def _key(point):
    return json.dumps(point, sort_keys=True)


def grid_table(summaries, seeds, choices=None):
    """Markdown: ACC / BWT per method and scenario; the task-inference accuracy of the
    models that infer the task; and, for grids with chosen settings, what was chosen."""
    labels = list(summaries)
    names = []
    for label in labels:
        names += [m for m in summaries[label] if m not in names]
    header = ["| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    pct = lambda pair: format_mean_and_sem(pair, len(seeds))  # noqa: E731
    # Each column's own data: scenarios of one grid may come from different datasets.
    sources = [next(iter(summaries[label].values()))["source"] for label in labels]
    spread = f"mean ± s.e.m. over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    lines = [f"ACC / BWT in % ({spread})", ""] + header
    lines.append("| data | " + " | ".join(sources) + " |")
    for name in names:
        cells = []
        for label in labels:
            s = summaries[label].get(name)
            cells.append("—" if s is None else f"{pct(s['acc'])} / {100 * s['bwt'][0]:+.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    inferring = [n for n in names if any("task_inference" in summaries[label].get(n, {}) for label in labels)]
    if inferring:
        lines += ["", "Task-inference accuracy in % (test samples routed to their own task's engram, no "
                  "task id given):", ""] + header
        for name in inferring:
            cells = [pct(summaries[label][name]["task_inference"])
                     if "task_inference" in summaries[label].get(name, {}) else "—" for label in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if choices:
        families = []
        for label in labels:
            families += [f for f in choices.get(label, {}) if f not in families]
        lines += ["", "Settings chosen on validation data (epochs per task, learning rate), per method family:",
                  "", "| family | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for family in families:
            cells = []
            for label in labels:
                point = choices.get(label, {}).get(family)
                cells.append("—" if point is None else ", ".join(f"{k} {v}" for k, v in sorted(point.items())))
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_grid(summaries, path, key, ylabel, scale):
    """One panel per scenario (small multiples: a grid of 7 scenarios x 13 methods stays
    readable), bars per method with their s.e.m., coloured by method family; the upper
    reference (joint training) hatched."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labels = list(summaries)
    family_of = {m: f for f, members in FAMILIES.items() for m in members}
    colours = {family: f"C{i}" for i, family in enumerate(FAMILIES)}
    columns = min(4, len(labels))
    rows = -(-len(labels) // columns)
    most = max(len(summaries[label]) for label in labels)
    # "constrained" layout fits the rotated method names and titles at any size.
    fig = Figure(figsize=(columns * max(2.5, 0.32 * most + 0.8), rows * 3.0), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax, label in zip(axes, labels):
        names = list(summaries[label])
        pairs = [summaries[label][n][key] for n in names]
        pairs = [(np.nan, 0.0) if v is None else (tuple(v) if isinstance(v, (list, tuple)) else (v, 0.0))
                 for v in pairs]  # metrics are (mean, s.e.m.); memory peaks single numbers
        bars = ax.bar(np.arange(len(names)), [m * scale for m, _ in pairs], 0.8,
                      yerr=[e * scale for _, e in pairs], color=[colours.get(family_of.get(n), "C7") for n in names],
                      capsize=2)
        for bar, name in zip(bars, names):
            if name in REFERENCES:  # not a continual learner: marked apart
                bar.set_hatch("//")
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel(ylabel)
    handles = [Patch(color=colour, label=family) for family, colour in colours.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="upper reference (joint)"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, title="method family",
               title_fontsize=8)
    figure_to_png(fig, path)


if __name__ == "__main__":
    cli.run(main)
