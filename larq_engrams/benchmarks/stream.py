r"""Task-free streams: a scenario's training data as one stream of labelled batches, with
no task id and no boundary given to the learner.

The tasks follow each other in the scenario's order. Each task's training examples are
taken in one shuffled pass of its pipeline (`Task.train`), so a stream sees every
training example once. With `boundaries`:

- "given": today's protocol, for comparison: the learner is told where tasks begin
  (`StreamBatch.task` is the true task; a trainer may call `begin_task`).
- "none": sharp boundaries the learner is not told (`StreamBatch.task` is None).
- "fuzzy": around each boundary the last `transition / 2` examples of task t and the
  first `transition / 2` of task t + 1 are mixed, the share of task t + 1 rising
  linearly over the window: in the window's original order (t's examples, then t+1's),
  example i gets the key `(i + 1/2) / w + u_i`, u_i ~ U(-1/2, 1/2), and the window is
  sorted by key (w = the window's length). Nothing is told either.

The true boundary of tasks t and t + 1 (for evaluation and for scoring a learner's own
boundaries) is the position of the first example of t + 1 with sharp boundaries, and
the middle of the window with fuzzy ones. A trainer evaluates R[t] when the stream
passes the true end of task t (`Stream.task_ends`, in batches).
"""
import dataclasses

import numpy as np

from larq_engrams.arguments import check_choice, check_positive_int
from larq_engrams.task_inputs import split_task_inputs

__all__ = ["BOUNDARIES", "Stream", "StreamBatch", "boundary_scores"]

BOUNDARIES = ("given", "none", "fuzzy")


@dataclasses.dataclass(frozen=True)
class StreamBatch:
    """One batch of a stream: inputs `x`, labels `y` (NumPy), the true task of each
    example (`true_tasks`, for the experimenter only), and `task`, the task id the
    learner is told (only with `boundaries="given"`, else None)."""

    x: np.ndarray
    y: np.ndarray
    true_tasks: np.ndarray
    task: int = None


class Stream:
    """A `Scenario`'s training data as one stream (module docstring).

    Args:
        scenario: a class- or domain-incremental `Scenario` (task-IL gives task ids).
        boundaries: "given", "none" or "fuzzy".
        batch_size: examples per batch (the last batch may be smaller).
        transition: with "fuzzy", the length in examples of the mixed window around each
            boundary (default: 10 % of the shorter of the two tasks).
        seed: seeds the fuzzy mixing.
    """

    def __init__(self, scenario, boundaries="none", batch_size=10, transition=None, seed=0):
        self.boundaries = check_choice("boundaries", boundaries, BOUNDARIES, owner="Stream")
        self.batch_size = check_positive_int("batch_size", batch_size, owner="Stream")
        if scenario.provides_task_id:
            raise ValueError("Stream: a task-incremental scenario gives the task id; make the stream of its "
                             "class- or domain-incremental version.")
        self.scenario = scenario
        xs, ys = [], []
        for task in scenario:
            x_parts, y_parts = [], []
            for x, y in task.train:  # one shuffled pass of the task's pipeline
                x_parts.append(split_task_inputs(x)[0].numpy())
                y_parts.append(y.numpy())
            xs.append(np.concatenate(x_parts))
            ys.append(np.concatenate(y_parts))
        sizes = [len(y) for y in ys]
        self.x, self.y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
        self.true_tasks = np.repeat(np.arange(len(sizes)), sizes)
        starts = np.cumsum([0, *sizes])
        order = np.arange(len(self.y))
        self.transition = 0
        boundaries_at = starts[1:-1].astype(float)  # the first example of each next task
        if self.boundaries == "fuzzy":
            self.transition = int(transition if transition is not None else max(2, min(sizes) // 10))
            check_positive_int("transition", self.transition, owner="Stream")
            rng = np.random.default_rng(seed)
            for start in starts[1:-1]:
                half = min(self.transition // 2, int(start), int(len(order) - start))
                window = np.arange(start - half, start + half)
                keys = (np.arange(len(window)) + 0.5) / len(window) + rng.uniform(-0.5, 0.5, len(window))
                order[window] = order[window][np.argsort(keys, kind="stable")]
        self.order = order
        self.true_boundaries = boundaries_at  # in examples from the stream's start
        self.num_examples = len(order)
        self.num_batches = -(-self.num_examples // self.batch_size)
        # R[t] after the batch that contains the true end of task t (the last: the stream's end).
        ends = [*boundaries_at, self.num_examples]
        self.task_ends = [int(max(0, np.ceil(e / self.batch_size) - 1)) for e in ends]

    @property
    def num_tasks(self):
        return self.scenario.num_tasks

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        for b in range(self.num_batches):
            rows = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            tasks = self.true_tasks[rows]
            told = int(np.bincount(tasks).argmax()) if self.boundaries == "given" else None
            yield StreamBatch(self.x[rows], self.y[rows], tasks, told)

    def describe(self):
        return {"boundaries": self.boundaries, "batch_size": self.batch_size, "transition": self.transition,
                "examples": self.num_examples, "true_boundaries": [float(b) for b in self.true_boundaries]}


def boundary_scores(detected, true_boundaries, tolerance):
    """Precision, recall and F1 of detected boundaries (positions in examples) against
    the true ones: a detection matches an unmatched true boundary within `tolerance`
    examples (greedily, nearest first); every other detection is a false split, every
    unmatched true boundary a missed one (a merge). With no true boundary and no
    detection, all three are 1."""
    detected, truth = sorted(float(d) for d in detected), [float(t) for t in true_boundaries]
    pairs = sorted((abs(d - t), i, j) for i, d in enumerate(detected) for j, t in enumerate(truth)
                   if abs(d - t) <= tolerance)
    used_d, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
    matched = len(used_d)
    precision = matched / len(detected) if detected else float(not truth)
    recall = matched / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "detected": len(detected), "true": len(truth),
            "matched": matched}
