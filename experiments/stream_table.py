"""The task-free streams' table: per scenario and method, ACC and boundary F1 with no
boundaries, with fuzzy ones and with the boundaries told (one pass, the same batches);
and the training time per example with no boundaries against the told stream's, from
pairs of runs made back to back on an otherwise idle machine (`timing/`).

Reads the runs of `experiments/run.py --boundaries=none|fuzzy` (folders
`<scenario>-stream-none`, `<scenario>-stream-fuzzy`) and of the same one-pass protocol
with boundaries given (`--boundaries=given --epochs=1 --name=<scenario>-one-pass-given`)
under --results (and the timing pairs `timing/<scenario>-none`, `timing/<scenario>-given`),
and writes `streams.md` there.

    python experiments/stream_table.py --results=results/issue47
"""
import glob
import json
import os

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np

from larq_engrams.metrics import format_mean_and_sem, mean_and_sem

FLAGS = flags.FLAGS
flags.DEFINE_string("results", "results/issue47", "Folder of the stream runs.")
SCENARIOS = ("split_mnist-class", "split_fashion_mnist-class", "permuted_mnist-domain")


def _runs(folder, method):
    out = []
    for path in sorted(glob.glob(os.path.join(folder, method, "seed_*", "result.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def _seconds_per_example(run, observe=False):
    """Training seconds per training example: the stream's own count, or the trainer's
    task seconds over the examples of a run with boundaries given (`observe`: with the
    router's pass over each task's data, which the trainer times apart; None if the
    run did not record it)."""
    stream = run["config"].get("stream")
    if stream is not None:
        return stream["seconds_per_example"]
    examples = sum(t["num_train"] for t in run["config"]["scenario"]["tasks"])
    if observe:
        return None if run.get("observe_seconds") is None else \
            (sum(run["task_seconds"]) + sum(run["observe_seconds"])) / examples
    return sum(run["task_seconds"]) / examples


def _cell(values, seeds):
    return format_mean_and_sem(mean_and_sem(values), seeds) if values else "—"


def main(argv):
    del argv
    lines = ["| scenario | method | boundaries | seeds | ACC % | boundary F1 |", "|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        given = {m: _runs(os.path.join(FLAGS.results, f"{scenario}-one-pass-given"), m) for m in ("engram_bnn",)}
        methods = sorted({os.path.basename(os.path.dirname(os.path.dirname(p))) for p in glob.glob(
            os.path.join(FLAGS.results, f"{scenario}-stream-*", "*", "seed_*", "result.json"))})
        for method in methods:
            told = given.get(method) or []
            rows = [("given", told)] if told else []
            rows += [(b, _runs(os.path.join(FLAGS.results, f"{scenario}-stream-{b}"), method)) for b in ("none", "fuzzy")]
            for boundaries, runs in rows:
                if not runs:
                    continue
                acc = [r["metrics"]["acc"] for r in runs]
                f1 = [r["metrics"]["boundary_f1"] for r in runs if "boundary_f1" in r["metrics"]]
                f1_cell = (f"{np.mean(f1):.2f} (min {min(f1):.2f})" if f1 else "—")
                lines.append(f"| {scenario} | {method} | {boundaries} | {len(runs)} | {_cell(acc, len(runs))} | "
                             f"{f1_cell} |")
    lines += ["", "Training time per example, engram_bnn, seed 0, runs made back to back on an idle machine. "
              "The stream's time includes the router's statistics; ContinualTrainer times the told run's pass "
              "that gives each task's data to the router apart, before the task's clock starts: the last "
              "columns add it (the same work as the stream's).", "",
              "| scenario | no boundaries, ms | told, ms | ratio | told with its router pass, ms | ratio | "
              "wall s, no boundaries / told |", "|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        pair = [_runs(os.path.join(FLAGS.results, "timing", f"{scenario}-{b}"), "engram_bnn") for b in ("none", "given")]
        if all(pair):
            none, told = (np.mean([_seconds_per_example(r) for r in runs]) * 1e3 for runs in pair)
            observed = [_seconds_per_example(r, observe=True) for r in pair[1]]
            with_router = None if None in observed else np.mean(observed) * 1e3
            walls = [np.mean([r["config"]["wall_seconds"] for r in runs]) for runs in pair]
            lines.append(f"| {scenario} | {none:.2f} | {told:.2f} | {none / told:.2f}x | " + (
                "— | — |" if with_router is None else f"{with_router:.2f} | {none / with_router:.2f}x |") +
                f" {walls[0]:.0f} / {walls[1]:.0f} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(FLAGS.results, "streams.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main)
