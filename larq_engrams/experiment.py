"""One experiment = a scenario, a method, a seed and settings -> a saved `ContinualResult`.

Shared by `experiments/run.py` (one scenario, several methods and seeds) and
`experiments/reproduce.py` (the comparison grid), so that both produce the same files:

    <outdir>/<method>/seed_<s>/run.json        the run's settings (written first)
    <outdir>/<method>/seed_<s>/result.json, result.csv, accuracy_matrix.png, task_accuracies.png
    <outdir>/<method>/seed_<s>/checkpoints/   per-task checkpoints while the run is unfinished
    <logdir>/<method>/seed_<s>/  (TensorBoard)

A folder is reused only for the same run: its settings (`run_settings`: method,
hyperparameters, scenario, data source, epochs, batch, seed, package version) must
equal the ones asked for, otherwise `run_experiment` stops with a `StaleRunError`
before training.
"""
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

import larq_engrams
from larq_engrams import benchmarks, methods, protocol
from larq_engrams.callbacks import EngramTensorBoard
from larq_engrams.metrics import format_mean_and_sem, mean_and_sem
from larq_engrams.run_lock import RunInProgressError, RunLock
from larq_engrams.training import ContinualResult, ContinualTrainer, StreamTrainer, write_atomically

__all__ = [
    "ChildRunError", "ExperimentConfig", "RunInProgressError", "SCENARIOS", "StaleRunError", "collect_results",
    "data_source", "evaluation_schedule", "finished_run",
    "make_scenario", "rebuilt_state_bytes", "run_child", "run_experiment", "run_in_fresh_process", "run_settings",
    "set_log_level",
    "summarize",
    "summary_table",
]

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
    jit_compile: object = "auto"  # ContinualTrainer's: True, False or "auto"
    # "batch": BatchNorm normalizes each mixed-task test batch by its own statistics
    # (Laborieux et al.'s evaluation; `TaskEvaluator`); "moving": the standard one.
    batchnorm_evaluation: str = "moving"
    # The accuracy matrix's schedule (`evaluation_schedule`): None picks by the length.
    evaluate_every: int = None
    past_tasks: int = None
    # Split benchmarks: None (0..9 in order) or "random" (shuffled by the run's seed).
    class_order: str = None
    # "given": tasks told, `epochs` per task (`ContinualTrainer`); "none" or "fuzzy": one
    # pass over a task-free stream (`benchmarks.Stream`, `StreamTrainer`), `transition`
    # examples mixed around each boundary with "fuzzy" (None: 10 % of a task).
    boundaries: str = "given"
    transition: int = None

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"`scenario` must be one of {SCENARIOS}, got {self.scenario!r}.")
        if self.scenario in ("permuted_mnist", "core50_ni") and self.setting != "domain":
            raise ValueError(f"{self.scenario} is domain-incremental: use setting='domain'.")
        if self.evaluate_on not in benchmarks.EVALUATION_SPLITS:
            raise ValueError(f"`evaluate_on` must be one of {benchmarks.EVALUATION_SPLITS}, got {self.evaluate_on!r}.")
        if self.boundaries not in benchmarks.BOUNDARIES:
            raise ValueError(f"`boundaries` must be one of {benchmarks.BOUNDARIES}, got {self.boundaries!r}.")
        if self.transition is not None and self.boundaries != "fuzzy":
            raise ValueError("`transition` is the mixed window of boundaries='fuzzy'.")
        if self.boundaries != "given" and (self.epochs != 1 or self.setting == "task"):
            raise ValueError("a task-free stream (boundaries 'none' or 'fuzzy') is one pass (epochs=1) of a class- "
                             "or domain-incremental scenario.")
        if self.evaluate_on == "validation" and self.scenario == "core50_ni":
            raise ValueError("core50_ni has no validation split yet: use evaluate_on='test'.")

    @classmethod
    def from_dict(cls, fields):
        """The inverse of `dataclasses.asdict(config)` (as read back from JSON)."""
        fields = dict(fields)
        hparams = dict(fields.pop("hparams", {}))
        for name in ("hidden", "router_conv"):  # tuples, read back from JSON as lists
            if hparams.get(name) is not None:
                hparams[name] = tuple(hparams[name])
        return cls(**fields, hparams=methods.HyperParameters(**hparams))

    @property
    def name(self):
        suffix = "-validation" if self.evaluate_on == "validation" else ""
        stream = f"-stream-{self.boundaries}" if self.boundaries != "given" else ""
        return f"{self.scenario}-{self.setting}{stream}{suffix}"


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
        scenario = constructor(config.setting, class_order=config.class_order, seed=seed, source=config.source,
                               data_dir=config.data_dir, **common)
    return scenario.take(config.num_tasks) if config.num_tasks else scenario


def rebuilt_state_bytes(settings):
    """`protocol.state_bytes` of the method a run's `settings` (its run.json's) name, built
    afresh for its scenario by the code in use: for runs saved before results recorded it.
    The count follows the scenario's shapes and the settings, not the data or training,
    so it equals what the run kept wherever the method's state has not changed since."""
    config = ExperimentConfig.from_dict({**settings["experiment"], "hparams": settings["hparams"]})
    setup = methods.build(settings["method"], make_scenario(config, 0), config.hparams)
    return protocol.state_bytes(setup.model, setup.callbacks)


# The data set each scenario reads (core50_ni reads its own folder).
_SCENARIO_DATASETS = {"split_mnist": "mnist", "permuted_mnist": "mnist", "split_fashion_mnist": "fashion_mnist",
                      "split_cifar10": "cifar10"}


def data_source(config, seed):
    """`make_scenario(config, seed).source`, found without reading any data
    (`benchmarks.resolve_source`): what a run's settings record as its data."""
    if config.scenario == "core50_ni":
        return f"local:{config.data_dir}"
    source = benchmarks.resolve_source(_SCENARIO_DATASETS[config.scenario], config.source, config.data_dir)
    if config.evaluate_on == "validation":
        source = benchmarks.validation_source(source, config.validation_fraction, seed)
    return source


class StaleRunError(ValueError):
    """A results folder holds a run with other settings, or files that cannot be read."""


# Experiment settings added after results were first saved, with their defaults: left
# out of `run_settings` while they hold the default, so that earlier results (which ran
# with that default) stay reusable instead of turning stale. (Hyperparameters need no such
# list: a run records those its method reads, and a field a saved run lacks is compared
# at its default: `_comparable`.)
_LATER_SETTINGS = {"batchnorm_evaluation": "moving", "evaluate_every": None, "past_tasks": None, "class_order": None,
                   "boundaries": "given", "transition": None}


def evaluation_schedule(num_tasks, evaluate_every=None, past_tasks=None):
    """`(evaluate_every, past_tasks)` for `ContinualTrainer`; None picks by the sequence's
    length: the full accuracy matrix up to 50 tasks (every row, every past task), and
    beyond, about 20 scheduled rows of 20 sampled past tasks each (the last row whole)."""
    long = num_tasks > methods.LONG_SEQUENCE
    every = evaluate_every or (max(1, num_tasks // 20) if long else 1)
    return every, past_tasks if past_tasks is not None else (20 if long else None)


# Scenarios whose inputs are not images with their pixels in place: the router's "auto"
# feature map is dense there (`task_inference.resolve_feature_map`).
_FLAT_SCENARIOS = ("permuted_mnist",)


def _router_hyperparameters(config, hparams):
    """`hparams` with the convolutional map's contrast floor as the run uses it: None
    where the router's map is dense (no patches to normalize), so that a run does not
    differ from one recorded before the floor existed by a setting it never read."""
    choice = config.hparams.router_features
    conv = choice == "conv" or (choice == "auto" and config.scenario not in _FLAT_SCENARIOS)
    if "router_patch_floor" in hparams and not conv:
        hparams = {**hparams, "router_patch_floor": None}
    return hparams


def run_settings(config, method, seed, source):
    """What makes two runs the same run (JSON values): the method, the hyperparameters it reads
    (as the run uses them), the experiment's settings, the data source actually read, the
    seed and the package version."""
    settings = {
        "method": method,
        "seed": int(seed),
        "hparams": _router_hyperparameters(
            config, methods.method_hyperparameters(method, config.hparams.replace(seed=seed))),
        "experiment": {k: v for k, v in dataclasses.asdict(config).items()
                       if k != "hparams" and not (k in _LATER_SETTINGS and v == _LATER_SETTINGS[k])},
        "source": source,
        "larq_engrams": larq_engrams.__version__,
    }
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back


def _settings_of_result(result):
    """`run_settings` of a finished run, also of one saved before `run.json` existed."""
    if "settings" in result.config:
        return result.config["settings"]
    method = result.config.get("method", {})
    return {"method": method.get("name"), "seed": method.get("hparams", {}).get("seed"),
            "hparams": method.get("hparams"), "experiment": result.config.get("experiment"),
            "source": result.config.get("scenario", {}).get("source"),
            "larq_engrams": result.environment.get("larq_engrams")}


# Hyperparameters whose default changed after runs that did not record them: such a run
# ran with the old value.
_BEFORE_RECORDED = {"router_features": "dense", "router_patch_floor": None, "protect_engrams": False,
                    "engram_fraction": 0.2}


def _comparable(saved, wanted):
    """`saved` with its hyperparameters cut to those `wanted` records (runs saved before
    hyperparameters were per method recorded all of them), a missing one at its default."""
    defaults = json.loads(json.dumps(dataclasses.asdict(methods.HyperParameters()), default=str))
    defaults.update(_BEFORE_RECORDED)
    hparams = saved.get("hparams") or {}
    return {**saved, "hparams": {k: hparams.get(k, defaults.get(k)) for k in wanted.get("hparams", {})}}


def _differences(saved, wanted, prefix=""):
    out = []
    for key in sorted(set(saved or {}) | set(wanted or {})):
        a, b = (saved or {}).get(key), (wanted or {}).get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
    return out


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise StaleRunError(
            f"{path} ({what}) cannot be read: {error}. It is truncated or corrupt: delete its folder "
            f"{os.path.dirname(path)} to run it again.") from error


def _load_result(path):
    """A saved `ContinualResult`, or `StaleRunError` naming the file if it cannot be read."""
    data = _read_json(path, "a finished run's result")
    try:
        return ContinualResult.from_dict(data)
    except TypeError as error:
        raise StaleRunError(f"{path} is not a result file of this package ({error}); delete "
                            f"{os.path.dirname(path)} to run it again.") from error


def _reuse(run_dir, settings):
    """The finished result in `run_dir` if its settings equal `settings` (printing one
    line that says so), None if there is none; `StaleRunError` if the folder holds a run
    with other settings."""
    finished, started = os.path.join(run_dir, "result.json"), os.path.join(run_dir, "run.json")
    saved, result = None, None
    if os.path.exists(finished):
        result = _load_result(finished)
        saved = _settings_of_result(result)
    elif os.path.exists(started):
        saved = _read_json(started, "an unfinished run's settings").get("settings")
    if saved is not None:
        differences = _differences(_comparable(saved, settings), settings)
        if differences:
            raise StaleRunError(
                f"{run_dir} holds a run with other settings ({'; '.join(differences)}). Nothing was run. "
                f"Give another --name or --outdir, delete that folder, or pass --noresume to overwrite it.")
    if result is not None:
        print(f"Reusing the finished run in {run_dir} (same settings; --noresume runs it again).")
    return result


def finished_run(config, method, seed, outdir):
    """The finished run of exactly these settings under `outdir` (printing one line
    that says it is reused), or None if there is none yet; `StaleRunError` if the
    folder holds a run with other settings or files that cannot be read. Reads no
    data (`data_source`)."""
    return _reuse(os.path.join(outdir, method, f"seed_{seed}"),
                  run_settings(config, method, seed, data_source(config, seed)))


# Experiments this process has run: the second one's peak RSS includes what the first
# left behind (TensorFlow's allocators and caches keep memory), so it is marked shared.
_RUNS_IN_THIS_PROCESS = 0


def run_experiment(config, method, seed, outdir, logdir=None, resume=True, verbose=1, command=None,
                   keep_checkpoints=False):
    """Runs `method` with `seed`; saves under `outdir/<method>/seed_<seed>/`.

    With `resume`, a finished run of the same settings (`run_settings`) is loaded
    instead of run again, and an interrupted one continues from its per-task
    checkpoints (deleted once the run is finished unless `keep_checkpoints`); each
    reuse prints one line. The result's `memory["runs_before_in_process"]` says how
    many experiments this process ran before this one: its peak RSS is its own only
    when that is 0 (`run_in_fresh_process` makes sure of it). A folder holding another
    run's settings, or files that cannot be read, raises `StaleRunError` before any
    training. Without `resume` the folder is overwritten. Training holds the run's
    `RunLock`: while another process trains the same run, this call raises
    `RunInProgressError` and changes nothing.
    """
    run_dir = os.path.join(outdir, method, f"seed_{seed}")
    settings = run_settings(config, method, seed, data_source(config, seed))
    if resume:
        finished = _reuse(run_dir, settings)
        if finished is not None:
            return finished
    with RunLock(run_dir):  # another process training this run: RunInProgressError, nothing touched
        return _train(config, method, seed, run_dir, settings, logdir, resume, verbose, command, keep_checkpoints)


def _train(config, method, seed, run_dir, settings, logdir, resume, verbose, command, keep_checkpoints):
    """`run_experiment`'s training, under the run's lock."""
    if resume:
        finished = _reuse(run_dir, settings)  # finished by another process since the first look
        if finished is not None:
            return finished
        if os.path.exists(os.path.join(run_dir, "checkpoints", "trainer_state.json")):
            print(f"Resuming the unfinished run in {run_dir} from its last task checkpoint.")
    elif os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # overwritten: no file of the old run may be mixed in
    scenario = make_scenario(config, seed)
    if scenario.source != settings["source"]:
        raise RuntimeError(f"data source {scenario.source!r} read, {settings['source']!r} expected: "
                           "benchmarks.resolve_source and the scenario disagree (a bug).")
    write_atomically(os.path.join(run_dir, "run.json"),
                     json.dumps({"settings": settings, "command": command}, indent=1))
    hp = config.hparams.replace(seed=seed)
    setup = methods.build(method, scenario, hp)
    callbacks = list(setup.callbacks)
    if logdir is not None:
        callbacks.append(EngramTensorBoard(os.path.join(logdir, method, f"seed_{seed}")))
    if config.boundaries != "given":
        return _train_stream(config, method, seed, run_dir, settings, hp, setup, callbacks, verbose, command)
    trainer = ContinualTrainer(
        setup.model, setup.optimizer, epochs=config.epochs, engram_inference=config.engram_inference,
        callbacks=callbacks, checkpoint_dir=os.path.join(run_dir, "checkpoints") if resume else None,
        jit_compile=config.jit_compile, seed=seed, verbose=verbose, batchnorm_evaluation=config.batchnorm_evaluation,
        **dict(zip(("evaluate_every", "past_tasks"),
                   evaluation_schedule(setup.scenario.num_tasks, config.evaluate_every, config.past_tasks))),
    )
    runs_before = _count_run()
    started = time.perf_counter()
    result = trainer.fit(setup.scenario)
    _finish(result, config, method, hp, setup, settings, started, runs_before, command, run_dir)
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return result


def _count_run():
    """How many experiments this process ran before this one (and counts this one)."""
    global _RUNS_IN_THIS_PROCESS
    runs_before, _RUNS_IN_THIS_PROCESS = _RUNS_IN_THIS_PROCESS, _RUNS_IN_THIS_PROCESS + 1
    return runs_before


def _train_stream(config, method, seed, run_dir, settings, hp, setup, callbacks, verbose, command):
    """A task-free stream's run: one pass of `StreamTrainer` (no per-task checkpoints:
    an interrupted stream runs again whole)."""
    runs_before = _count_run()
    stream = benchmarks.Stream(setup.scenario, config.boundaries, config.batch_size, config.transition, seed=seed)
    trainer = StreamTrainer(setup.model, setup.optimizer, engram_inference=config.engram_inference,
                            callbacks=callbacks, jit_compile=config.jit_compile, seed=seed, verbose=verbose)
    started = time.perf_counter()
    result = trainer.fit(stream)
    _finish(result, config, method, hp, setup, settings, started, runs_before, command, run_dir)
    return result


def _finish(result, config, method, hp, setup, settings, started, runs_before, command, run_dir):
    result.memory["runs_before_in_process"] = runs_before
    result.config["method"] = {"name": method, "description": setup.description,
                               "hparams": dataclasses.asdict(hp)}
    result.config["experiment"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "hparams"}
    result.config["settings"] = settings
    result.config["wall_seconds"] = time.perf_counter() - started
    result.config["command"] = command
    result.save(run_dir)


# The child's exit status when another process holds the run's lock (EX_TEMPFAIL).
_EXIT_RUN_IN_PROGRESS = 75


class ChildRunError(RuntimeError):
    """An experiment run in a fresh process failed (its own error went to stderr)."""


def run_in_fresh_process(config, method, seed, outdir, logdir=None, resume=True, verbose=0, command=None,
                         keep_checkpoints=False, log_level="warning"):
    """`run_experiment` in a new Python process, so that the result's peak memory is
    the run's own (in one process the resident set only grows from run to run).

    The child is `python -m larq_engrams.experiment SPEC` (SPEC: this call's arguments
    as JSON), with the Python loggers set by `log_level` (`set_log_level`). Its output
    goes straight to this process' terminal. With `resume`, a finished run of the same
    settings is reused without starting a process. The other arguments are
    `run_experiment`'s.
    """
    if resume:
        reused = finished_run(config, method, seed, outdir)  # same settings, or StaleRunError
        if reused is not None:
            return reused
    spec = {"config": dataclasses.asdict(config), "method": method, "seed": seed, "outdir": outdir,
            "logdir": logdir, "resume": resume, "verbose": verbose, "command": command,
            "keep_checkpoints": keep_checkpoints, "log_level": log_level}
    sys.stdout.flush()
    code = subprocess.call([sys.executable, "-m", "larq_engrams.experiment", json.dumps(spec)])
    if code == _EXIT_RUN_IN_PROGRESS:
        raise RunInProgressError(f"{config.name} {method} seed {seed}: another process is training it "
                                 f"(the child's line above names it)")
    if code != 0:
        raise ChildRunError(f"{config.name} {method} seed {seed}: its process exited with status {code} "
                            f"(its error is above).")
    return _load_result(os.path.join(outdir, method, f"seed_{seed}", "result.json"))


def run_child(spec_json):
    """The child side of `run_in_fresh_process`."""
    spec = json.loads(spec_json)
    set_log_level(spec.get("log_level", "warning"))
    return run_experiment(ExperimentConfig.from_dict(spec["config"]), spec["method"], spec["seed"], spec["outdir"],
                          spec["logdir"], resume=spec["resume"], verbose=spec["verbose"], command=spec["command"],
                          keep_checkpoints=spec["keep_checkpoints"])


LOG_LEVELS = ("debug", "info", "warning", "error")


def set_log_level(level):
    """Python loggers for `level` (one of `LOG_LEVELS`): the package's at `level`; the
    libraries' (TensorFlow, absl, TFDS, ...) at ERROR unless `level` is "info" or
    "debug", so an experiment's terminal carries its own progress and results."""
    value = getattr(logging, level.upper())
    libraries = value if level in ("debug", "info") else max(value, logging.ERROR)
    absl_logging.set_verbosity(level)  # absl's own scale: by name (an int there is not logging's)
    logging.getLogger("larq_engrams").setLevel(value)
    for name in ("tensorflow", "absl", "tensorflow_datasets", "h5py", "matplotlib"):
        logging.getLogger(name).setLevel(libraries)
    tf.autograph.set_verbosity(0)


def collect_results(outdir):
    """`{method: [ContinualResult per seed]}` of every finished run under `outdir`
    (`<method>/seed_<s>/result.json`), so a summary holds every method run into a
    folder, not only the last command's."""
    out = {}
    if not os.path.isdir(outdir):
        return out
    for method in sorted(os.listdir(outdir)):
        folder = os.path.join(outdir, method)
        seeds = sorted((d for d in os.listdir(folder) if d.startswith("seed_")) if os.path.isdir(folder) else [],
                       key=lambda d: int(d[5:]) if d[5:].isdigit() else -1)
        results = [_load_result(os.path.join(folder, d, "result.json"))
                   for d in seeds if os.path.exists(os.path.join(folder, d, "result.json"))]
        if results:
            out[method] = results
    return out


def summarize(results_by_method):
    """`{method: [ContinualResult per seed]}` -> JSON-serializable mean and s.e.m."""
    summary = {}
    for method, results in results_by_method.items():
        entry = {key: mean_and_sem([r.metrics[key] for r in results]) for key in METRICS}
        if all("task_inference" in r.metrics for r in results):  # engram models, no task id
            entry["task_inference"] = mean_and_sem([r.metrics["task_inference"] for r in results])
        if all("boundary_f1" in r.metrics for r in results):  # a stream's learner with its own boundaries
            entry["boundary_f1"] = mean_and_sem([r.metrics["boundary_f1"] for r in results])
        entry["seeds"] = len(results)
        entry["peak_rss_bytes"] = max(r.memory.get("peak_rss_bytes") or 0 for r in results)
        # True: every seed ran in its own process; False: some shared one with earlier
        # experiments; None: not recorded (results saved before the count existed).
        before = [r.memory.get("runs_before_in_process") for r in results]
        entry["peak_rss_own_process"] = None if None in before else not any(before)
        gpu = [r.memory.get("peak_gpu_bytes") for r in results]
        entry["peak_gpu_bytes"] = max(gpu) if None not in gpu else None
        entry["train_seconds"] = float(np.mean([sum(r.task_seconds) for r in results]))
        # What the method keeps besides its weights (protocol.state_bytes): the same for
        # every seed (it follows the shapes, not the data); None for runs saved before.
        kept = [r.memory.get("state_bytes") for r in results]
        entry["state_bytes"] = None if None in kept else {
            part: max(k[part] for k in kept) for part in ("learn", "predict")}
        entry["source"] = results[0].config["scenario"]["source"]
        trainer = results[0].config.get("trainer", {})
        entry["epochs"] = trainer.get("epochs")
        entry["hidden"] = results[0].config.get("method", {}).get("hparams", {}).get("hidden")
        entry["learning_rate"] = results[0].config.get("method", {}).get("hparams", {}).get("learning_rate")
        if results[0].config.get("model", {}).get("class") == "ClassStatisticsClassifier":
            # ncm, slda: no hidden layers and no optimizer, whatever was set
            entry["hidden"] = entry["learning_rate"] = None
        summary[method] = entry
    return summary


def summary_table(summary, title):
    """A Markdown table of a `summarize` output."""
    any_entry = next(iter(summary.values()))
    seeds = any_entry["seeds"]
    boundaries = any("boundary_f1" in s for s in summary.values())  # a stream: the learners' own boundaries
    lines = [
        f"{title}; data: {any_entry['source']}; "
        + (f"seeds: {seeds} (mean ± s.e.m.)" if seeds > 1 else "one seed (no spread measured)"),
        "",
        "| method | ACC % | BWT % | forgetting % | task inference % | " + ("boundary F1 | " if boundaries else "")
        + "epochs | lr | hidden | kept MiB (learn / predict) | peak RSS MiB (own process) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if boundaries else ""),
    ]
    for method, s in summary.items():
        fmt = lambda key: format_mean_and_sem(s[key], s["seeds"]) if key in s else "—"  # noqa: E731
        hidden = "-".join(map(str, s.get("hidden") or [])) or "—"
        mib = f"{s['peak_rss_bytes'] / 2**20:.0f}"
        rss = {True: mib, False: "— (shared process)", None: f"{mib} (process not recorded)"}[
            s.get("peak_rss_own_process")]
        kept = s.get("state_bytes")
        kept = "—" if kept is None else f"{kept['learn'] / 2**20:.2f} / {kept['predict'] / 2**20:.2f}"
        f1 = ""
        if boundaries:
            f1 = (f"{s['boundary_f1'][0]:.2f}" + (f" ± {s['boundary_f1'][1]:.2f}" if s["seeds"] > 1 else "")
                  if "boundary_f1" in s else "—") + " | "
        lines.append(f"| {method} | {fmt('acc')} | {fmt('bwt')} | {fmt('forgetting')} | {fmt('task_inference')} | {f1}"
                     f"{s.get('epochs') or '—'} | {s.get('learning_rate') or '—'} | {hidden} | {kept} | {rss} | "
                     f"{s['train_seconds']:.0f} |")
    return "\n".join(lines)


def write_summary(path_prefix, summary, title, extra=None):
    write_atomically(path_prefix + ".json", json.dumps({"title": title, **(extra or {}), "methods": summary},
                                                        indent=2))
    table = summary_table(summary, title)
    write_atomically(path_prefix + ".md", table + "\n")
    return table


if __name__ == "__main__":  # the child process of `run_in_fresh_process`
    try:
        run_child(sys.argv[1])
    except RunInProgressError as error:  # told apart by its status, so the parent can skip the run
        print(error, file=sys.stderr)
        sys.exit(_EXIT_RUN_IN_PROGRESS)
    except benchmarks.DataSourceError as error:  # one line: what was expected and how to get it
        sys.exit(f"error: {error}")
