"""Choosing settings on validation data only.

`select_on_validation` runs every point of a grid of settings (epochs per task and any
field of `methods.HyperParameters`) for one method, or for a family of methods that
must share one setting, on scenarios whose evaluation split is held out of the
*training* data (`evaluate_on="validation"`: the test split is dropped before any
pipeline is built). It ranks the points by

    score(point) = mean over methods m and seeds s of ACC_val(point, m, s)

and writes, in its folder:

    selection.md     the ranked table, with the command
    selection.json   every run's validation ACC (and task inference)
    chosen.json      the best point, e.g. {"epochs": 5, "learning_rate": 0.001}
    point_<setting>/<method>/seed_<s>/   the runs (reused when asked again)

Used by `experiments/tune.py` (one method or a family) and `experiments/reproduce.py`
(the paper-scale grid: one setting per method family, then test runs once).
"""
import dataclasses
import itertools
import json
import os
import time

from larq_engrams import experiment, methods
from larq_engrams.training import write_atomically

__all__ = ["Selection", "apply_point", "parse_grid", "point_name", "select_on_validation"]

_HPARAMS = {f.name: f.type for f in dataclasses.fields(methods.HyperParameters)}


def parse_grid(text):
    """'a=1,2;b=x' -> [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}] (values typed by field).

    Names are `epochs` or fields of `methods.HyperParameters`; a ValueError names an
    unknown one."""
    axes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name != "epochs" and name not in _HPARAMS:
            raise ValueError(f"unknown setting {name!r}; use epochs or one of {sorted(_HPARAMS)}.")
        if not values.strip():
            raise ValueError(f"{name!r} has no values.")
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


def point_name(point):
    """'epochs=5_learning_rate=0.001' ('defaults' for the empty point): a folder name
    per setting, not per position, so a changed grid reuses what it can."""
    return "_".join(f"{k}={v}" for k, v in point.items()) or "defaults"


def apply_point(config, point):
    """`config` with the point's epochs and hyperparameters."""
    hparams = dataclasses.replace(config.hparams, **{k: v for k, v in point.items() if k != "epochs"})
    return dataclasses.replace(config, epochs=point.get("epochs", config.epochs), hparams=hparams)


@dataclasses.dataclass
class Selection:
    """What `select_on_validation` found: `rows` ranked best first, `chosen` the best
    point, `folder` where the tables are."""

    rows: list
    chosen: dict
    folder: str


def select_on_validation(config, method_names, grid, seeds, folder, command=None, verbose=0, runner=None):
    """Runs every point of `grid` for every method and seed on validation data; ranks
    the points by mean validation ACC; writes the tables in `folder`.

    Args:
        config: an `experiment.ExperimentConfig`; its `evaluate_on` is replaced by
            "validation" (whatever it was), and each point replaces epochs and
            hyperparameters.
        method_names: one method or a family that shares the chosen setting.
        grid: a list of points (`parse_grid`).
        seeds: each seed also draws its own validation split.
        folder: where the runs and tables go.
        runner: `runner(config, method, seed, outdir) -> ContinualResult`; by default
            `experiment.run_experiment` in this process.

    Returns:
        A `Selection`.
    """
    if not grid:
        raise ValueError("select_on_validation: the grid has no points.")
    method_names = [method_names] if isinstance(method_names, str) else list(method_names)
    config = dataclasses.replace(config, evaluate_on="validation")
    if runner is None:
        def runner(cfg, method, seed, outdir):
            return experiment.run_experiment(cfg, method, seed, outdir, logdir=None, verbose=verbose,
                                             command=command)
    started = time.perf_counter()
    rows, run_seconds = [], 0.0
    for i, point in enumerate(grid):
        point_config = apply_point(config, point)
        point_dir = os.path.join(folder, "point_" + point_name(point))
        accs = {m: [] for m in method_names}
        inference = []
        for method in method_names:
            for seed in seeds:
                result = runner(point_config, method, seed, point_dir)
                run_seconds += result.config.get("wall_seconds") or 0.0  # its own, whichever sitting ran it
                accs[method].append(result.metrics["acc"])
                if "task_inference" in result.metrics:
                    inference.append(result.metrics["task_inference"])
        per_method = {m: sum(a) / len(a) for m, a in accs.items()}
        mean = sum(sum(a) for a in accs.values()) / sum(len(a) for a in accs.values())
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "defaults"
        print(f"[{i + 1}/{len(grid)}] {label}: validation ACC {100 * mean:.1f}%", flush=True)
        rows.append({"setting": point, "label": label, "validation_acc": accs, "per_method": per_method,
                     "mean_validation_acc": mean, "task_inference": inference})
    rows.sort(key=lambda r: -r["mean_validation_acc"])
    os.makedirs(folder, exist_ok=True)
    write_atomically(os.path.join(folder, "selection.md"),
                     _table(rows, config, method_names, seeds, command) + "\n")
    write_atomically(os.path.join(folder, "selection.json"), json.dumps(
        {"command": command, "methods": method_names, "seeds": list(seeds), "rows": rows,
         "wall_seconds": time.perf_counter() - started, "run_seconds": run_seconds}, indent=1))
    write_atomically(os.path.join(folder, "chosen.json"), json.dumps(rows[0]["setting"], indent=1))
    return Selection(rows=rows, chosen=rows[0]["setting"], folder=folder)


def _table(rows, config, method_names, seeds, command):
    who = method_names[0] if len(method_names) == 1 else "the family " + ", ".join(method_names)
    setting = f"{config.scenario} ({config.setting})" + ("" if config.num_tasks is None else
                                                          f", {config.num_tasks} tasks")
    family = len(method_names) > 1
    lines = [f"# Selection for {who} on {setting}: validation ACC only", ""]
    if command:
        lines.append(f"Command: `{command}`")
    lines += [f"Seeds: {list(seeds)}; validation: {config.validation_fraction:g} of the training data, "
              "stratified by class, per seed; the test split was not read.", ""]
    if family:
        lines += ["One setting for the whole family, ranked by the mean validation ACC over its methods.", ""]
        head = "| rank | setting | validation ACC % (mean) | " + " | ".join(method_names) + " | task inference % |"
    else:
        head = "| rank | setting | validation ACC % (mean) | per seed | task inference % |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for rank, row in enumerate(rows, 1):
        ti = (f"{100 * sum(row['task_inference']) / len(row['task_inference']):.1f}"
              if row["task_inference"] else "—")
        if family:
            cells = " | ".join(f"{100 * row['per_method'][m]:.1f}" for m in method_names)
        else:
            cells = " ".join(f"{100 * a:.1f}" for a in row["validation_acc"][method_names[0]])
        lines.append(f"| {rank} | {row['label']} | {100 * row['mean_validation_acc']:.1f} | {cells} | {ti} |")
    lines += ["", f"Chosen: **{rows[0]['label']}** (highest mean validation ACC)."]
    return "\n".join(lines)
