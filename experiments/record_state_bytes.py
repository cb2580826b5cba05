"""Records the bytes each method keeps in grid runs saved before results held them.

Every run now records `memory["state_bytes"]` (`protocol.state_bytes`: what a method
keeps besides its network's weights, to learn further tasks and to predict;
docs/method.md, section 7). For a run saved before that, this script builds the method
of its run.json afresh for its scenario, counts the same thing on the live objects, and
writes it into the run's result.json with `memory["state_bytes_rebuilt_at"]` (the
commit of the code that counted), so a table can say which counts the run made itself.
The count follows the scenario's shapes and the settings, not the data: it is what the
run kept wherever the method's state has not changed since. Runs that recorded their
own count are left as they are, and so are engram models' runs: their router's state
shrank (float64 statistics to the lean router) after runs stopped lacking the count, so a
rebuilt count would not be what such a run kept; those runs are re-run instead.

    python experiments/record_state_bytes.py --grid_dir=results/paper
"""
import json
import os

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import experiment
from larq_engrams.training import environment, write_atomically

# Methods whose kept state changed since runs without a recorded count were made.
RERUN_NOT_REBUILT = ("engram", "engram_bnn")

FLAGS = flags.FLAGS
flags.DEFINE_string("grid_dir", "results/paper", "A grid's --outdir: <scenario>/<method>/seed_<s>/ runs.")


def _runs_without_bytes(grid_dir):
    """{(scenario, method): [result.json paths that lack state_bytes]}."""
    missing = {}
    for root, _, files in sorted(os.walk(grid_dir)):
        if "result.json" not in files or "run.json" not in files:
            continue
        path = os.path.join(root, "result.json")
        with open(path) as f:
            if json.load(f).get("memory", {}).get("state_bytes") is None:
                method_folder = os.path.dirname(root)
                if os.path.basename(method_folder) in RERUN_NOT_REBUILT:
                    print(f"skipped (re-run it to record its bytes): {path}")
                    continue
                missing.setdefault((os.path.dirname(method_folder), os.path.basename(method_folder)), []).append(path)
    return missing


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    missing = _runs_without_bytes(FLAGS.grid_dir)
    commit = environment()["git_commit"]
    for number, ((scenario, method), paths) in enumerate(sorted(missing.items()), 1):
        with open(os.path.join(os.path.dirname(paths[0]), "run.json")) as f:
            kept = experiment.rebuilt_state_bytes(json.load(f)["settings"])  # the same for every seed
        for path in paths:
            with open(path) as f:
                result = json.load(f)
            result["memory"].update(state_bytes=kept, state_bytes_rebuilt_at=commit)
            write_atomically(path, json.dumps(result, indent=2))
        print(f"[{number}/{len(missing)}] {os.path.relpath(scenario, FLAGS.grid_dir)} {method}: "
              f"{kept['learn'] / 2**20:.2f} MiB to learn, {kept['predict'] / 2**20:.2f} MiB to predict "
              f"({len(paths)} runs)", flush=True)
    print(f"{sum(map(len, missing.values()))} runs given their bytes.")


if __name__ == "__main__":
    cli.run(main)
