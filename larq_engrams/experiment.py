"""One experiment = a scenario, a method, a seed and settings -> a saved `ContinualResult`.

Shared by `experiments/run.py` (one scenario, several methods and seeds) and
`experiments/reproduce.py` (the comparison grid), so that both produce the same files:

    <outdir>/<method>/seed_<s>/result.json, result.csv, accuracy_matrix.png, task_accuracies.png
    <logdir>/<method>/seed_<s>/  (TensorBoard)
"""
import dataclasses
import json
import os
import shutil
import time

import numpy as np

from larq_engrams import benchmarks, methods
from larq_engrams.callbacks import EngramTensorBoard
from larq_engrams.metrics import mean_and_sem
from larq_engrams.training import ContinualResult, ContinualTrainer

__all__ = ["ExperimentConfig", "SCENARIOS", "make_scenario", "run_experiment", "summarize", "summary_table"]

SCENARIOS = ("split_mnist", "split_fashion_mnist", "split_cifar10", "permuted_mnist", "core50_ni")
METRICS = ("acc", "bwt", "forgetting", "fwt", "avg_incremental_acc")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run besides the method and the seed."""

    scenario: str = "split_mnist"
    setting: str = "class"
    num_tasks: int = None  # permuted MNIST: how many (10); others: the first N (all)
    epochs: int = 1
    batch_size: int = 100
    source: str = "auto"
    data_dir: str = None
    engram_inference: str = "infer"
    hparams: methods.HyperParameters = methods.HyperParameters()
    # "validation": evaluate on held-out training data, never on the test split (for
    # choosing settings); "test": the one final evaluation.
    evaluate_on: str = "test"
    validation_fraction: float = 0.1

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"`scenario` must be one of {SCENARIOS}, got {self.scenario!r}.")
        if self.scenario in ("permuted_mnist", "core50_ni") and self.setting != "domain":
            raise ValueError(f"{self.scenario} is domain-incremental: use setting='domain'.")
        if self.evaluate_on not in benchmarks.EVALUATION_SPLITS:
            raise ValueError(f"`evaluate_on` must be one of {benchmarks.EVALUATION_SPLITS}, got {self.evaluate_on!r}.")
        if self.evaluate_on == "validation" and self.scenario == "core50_ni":
            raise ValueError("core50_ni has no validation split yet: use evaluate_on='test'.")

    @property
    def name(self):
        suffix = "-validation" if self.evaluate_on == "validation" else ""
        return f"{self.scenario}-{self.setting}{suffix}"


def make_scenario(config, seed):
    common = dict(batch_size=config.batch_size)
    if config.scenario != "core50_ni":
        common.update(evaluate_on=config.evaluate_on, validation_fraction=config.validation_fraction)
    if config.scenario == "permuted_mnist":
        return benchmarks.permuted_mnist(config.num_tasks or 10, seed=seed, source=config.source,
                                         data_dir=config.data_dir, **common)
    if config.scenario == "core50_ni":
        scenario = benchmarks.core50_ni(config.data_dir, **common)
    else:
        constructor = getattr(benchmarks, config.scenario)
        scenario = constructor(config.setting, seed=seed, source=config.source, data_dir=config.data_dir, **common)
    return scenario.take(config.num_tasks) if config.num_tasks else scenario


def run_experiment(config, method, seed, outdir, logdir=None, resume=True, verbose=1, command=None,
                   keep_checkpoints=True):
    """Runs `method` with `seed`; saves under `outdir/<method>/seed_<seed>/`.

    With `resume`, a finished run (its `result.json` exists) is loaded instead of run
    again, and an interrupted one continues from its per-task checkpoints (deleted once
    the run is finished unless `keep_checkpoints`).
    """
    run_dir = os.path.join(outdir, method, f"seed_{seed}")
    finished = os.path.join(run_dir, "result.json")
    if resume and os.path.exists(finished):
        return ContinualResult.from_json(finished)
    scenario = make_scenario(config, seed)
    hp = config.hparams.replace(seed=seed)
    setup = methods.build(method, scenario, hp)
    callbacks = list(setup.callbacks)
    if logdir is not None:
        callbacks.append(EngramTensorBoard(os.path.join(logdir, method, f"seed_{seed}")))
    trainer = ContinualTrainer(
        setup.model, setup.optimizer, epochs=config.epochs, engram_inference=config.engram_inference,
        callbacks=callbacks, checkpoint_dir=os.path.join(run_dir, "checkpoints") if resume else None,
        seed=seed, verbose=verbose,
    )
    started = time.perf_counter()
    result = trainer.fit(setup.scenario)
    result.config["method"] = {"name": method, "description": setup.description,
                               "hparams": dataclasses.asdict(hp)}
    result.config["experiment"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "hparams"}
    result.config["wall_seconds"] = time.perf_counter() - started
    result.config["command"] = command
    result.save(run_dir)
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return result


def summarize(results_by_method):
    """`{method: [ContinualResult per seed]}` -> JSON-serializable mean and s.e.m."""
    summary = {}
    for method, results in results_by_method.items():
        entry = {key: mean_and_sem([r.metrics[key] for r in results]) for key in METRICS}
        if all("task_inference" in r.metrics for r in results):  # engram models, no task id
            entry["task_inference"] = mean_and_sem([r.metrics["task_inference"] for r in results])
        entry["seeds"] = len(results)
        entry["peak_rss_bytes"] = max(r.memory.get("peak_rss_bytes") or 0 for r in results)
        gpu = [r.memory.get("peak_gpu_bytes") for r in results]
        entry["peak_gpu_bytes"] = max(gpu) if None not in gpu else None
        entry["train_seconds"] = float(np.mean([sum(r.task_seconds) for r in results]))
        entry["source"] = results[0].config["scenario"]["source"]
        summary[method] = entry
    return summary


def summary_table(summary, title):
    """A Markdown table of a `summarize` output."""
    any_entry = next(iter(summary.values()))
    lines = [
        f"{title}; data: {any_entry['source']}; seeds: {any_entry['seeds']} (mean ± s.e.m.)",
        "",
        "| method | ACC % | BWT % | forgetting % | task inference % | peak RSS MiB | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        fmt = lambda key: f"{100 * s[key][0]:.1f} ± {100 * s[key][1]:.1f}" if key in s else "—"  # noqa: E731
        lines.append(f"| {method} | {fmt('acc')} | {fmt('bwt')} | {fmt('forgetting')} | {fmt('task_inference')} | "
                     f"{s['peak_rss_bytes'] / 2**20:.0f} | {s['train_seconds']:.0f} |")
    return "\n".join(lines)


def write_summary(path_prefix, summary, title, extra=None):
    from larq_engrams.training import write_atomically

    write_atomically(path_prefix + ".json", json.dumps({"title": title, **(extra or {}), "methods": summary},
                                                        indent=2))
    table = summary_table(summary, title)
    write_atomically(path_prefix + ".md", table + "\n")
    return table
