"""Per-task checkpoints of a continual run: what `ContinualTrainer(checkpoint_dir=...)`
writes after every task and resumes from.

A checkpoint is two files: TensorFlow's checkpoint of the trackable objects (model,
optimizer, callbacks' variables, the data's shuffle positions) and a JSON state file
(`trainer_state.json`: R so far, timings, memory, the callbacks' plain state) that names
it. The state file is replaced atomically once its checkpoint is complete, and only
then are older checkpoints removed: a run killed at any point resumes from the last
complete one. Under a multi-worker strategy every worker writes (variables read across
workers need all of them); the chief keeps its copy, the others' are removed at once.
"""
import json
import os
import shutil

from larq_engrams.results import write_atomically

__all__ = ["CheckpointError", "TaskCheckpoints", "STATE_FILE"]

STATE_FILE = "trainer_state.json"
_STATE_FORMAT = "larq_engrams.trainer_state/2"


class CheckpointError(ValueError):
    """A checkpoint or trainer state file that cannot be resumed from."""


class TaskCheckpoints:
    """The checkpoints in `folder` of a run under `strategy`.

    Args:
        folder: where they go (None: no checkpoints; every method is then a no-op).
        strategy: the run's `tf.distribute` strategy (which worker keeps them).
    """

    def __init__(self, folder, strategy):
        self.folder = folder
        self.strategy = strategy

    def save(self, task, objects, state):
        """Writes `objects` (a `tf.train.Checkpoint`) and `state` (JSON values) as the
        checkpoint after `task`."""
        if not self.folder:
            return
        os.makedirs(self.folder, exist_ok=True)
        chief = _is_chief(self.strategy)
        folder = self.folder if chief else os.path.join(
            self.folder, f".worker_{self.strategy.cluster_resolver.task_id}")
        prefix = objects.write(os.path.join(folder, f"after_task_{task}"))
        if not chief:
            shutil.rmtree(folder, ignore_errors=True)
            return
        state = {"format": _STATE_FORMAT, "completed": task + 1, "checkpoint": os.path.basename(prefix), **state}
        write_atomically(os.path.join(self.folder, STATE_FILE), json.dumps(state, indent=1))
        for file in os.listdir(self.folder):
            if file.startswith("after_task_") and not file.startswith(os.path.basename(prefix) + "."):
                os.remove(os.path.join(self.folder, file))

    def load_state(self, scenario_key, callback_classes):
        """The last state file, checked against this run (None if there is none):
        `CheckpointError` for a broken file, another scenario or other callbacks."""
        if not self.folder:
            return None
        path = os.path.join(self.folder, STATE_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                state = json.load(f)
            if state.get("format") != _STATE_FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {_STATE_FORMAT!r}")
            state["completed"], state["checkpoint"] = int(state["completed"]), str(state["checkpoint"])
            saved_callbacks = [entry["class"] for entry in state["callbacks"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{path} is not a trainer state file this version can resume from ({error}): it is "
                f"truncated, corrupt, or written by another program or version. {self._start_over}") from error
        if state["scenario"] != scenario_key:
            raise CheckpointError(
                f"{path} belongs to a different scenario ({state['scenario']}) than this run "
                f"({scenario_key}). {self._start_over}")
        if saved_callbacks != list(callback_classes):
            raise CheckpointError(
                f"{path} was written with the callbacks {saved_callbacks}, this run has "
                f"{list(callback_classes)}: it is another method's run. {self._start_over}")
        return state

    def restore(self, objects, state):
        """Reads the checkpoint that `state` names into `objects`."""
        checkpoint = os.path.join(self.folder, state["checkpoint"])
        try:
            objects.read(checkpoint).assert_existing_objects_matched()
        except Exception as error:  # TensorFlow raises many kinds for a broken file
            raise CheckpointError(
                f"cannot restore the checkpoint {checkpoint} named by {os.path.join(self.folder, STATE_FILE)}: "
                f"{str(error).splitlines()[0]}. It is missing, truncated, or holds another model. "
                f"{self._start_over}") from error

    @property
    def _start_over(self):
        return f"Delete the folder {self.folder} to start the run over, or give another checkpoint_dir."


def _is_chief(strategy):
    """Whether this process keeps the checkpoints: always, except on the workers of a
    multi-worker strategy other than the chief (or worker 0 without a chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
