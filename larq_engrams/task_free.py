r"""An engram model's own task boundaries in a stream (no task id, no boundary given).

Every incoming labelled batch (x, y) is first predicted by the active engram a, as
"infer" evaluation would once it picked a (its classes only; `logits_as_evaluated`).
Each example is then judged on its own, by the probability a gives its label (0 for a
class a never trained on), so that a task that arrives a few examples at a time (fuzzy
boundaries) is caught before the engram has learned it:

- **Test phase** (after the engram's warm-up): an example whose label a finds likely
  trains a at once; one whose label has a probability below `unlikely` (tau) is *held*
  (not trained). Over the last `window` examples of a
  the held ones are flagged; the binomial change point c of those flags (the start
  that maximises (m - c) KL(q_c || p~), q_c the held share from c on, p~ = max(p^,
  p_min)) splits off the recent run, whose k held of m are tested against a's own error
  rate (`novelty.PrequentialNovelty`): a boundary when P(K >= k) < alpha, K ~
  Binomial(m, p~ + delta), and k >= `confirm`. p^ is updated only with examples that
  leave the window, so a task that creeps in does not raise the rate it is tested
  against; delta asks for a rise of the error rate, not the drift of a network learning
  online. A held example that leaves the window without a boundary trains a then, in
  the step of the batch that releases it (a hard example of a's own task, or a novelty
  too thin to confirm).
- **Boundary** at c: the held examples from c on (only those with labels a never
  trained on, if there are any: in class-IL the others are a's own hard examples) go
  to the allocated engram that explains them (it predicts them, p(y | x) >= 1/2, about
  as often as its own task's: the largest p-value of their misses under its own test,
  if not novel: a task that comes back), else to a new engram (`begin_task` with the next free id); they train it first. The engram
  left, a, becomes the *previous* one.
- **Transition:** while a previous engram p is kept, each example that a would hold,
  or that p predicts (p(y | x) >= 1/2), goes to whichever of a and p gives its label the
  higher probability (ties: a), as a mixture of the two experts would assign it; the
  others stay with a (a new engram's own examples, which an old one scores near chance). The examples p takes
  train nothing (p is not active) but enter the router's statistics under p, and still
  count in a's rate (as examples a would hold: else a looks better than it is until p
  goes). p is dropped once it takes less than `floor` of a window of examples, or
  `warmup` + 2 `window` examples after the switch. With sharp boundaries it takes
  little; with fuzzy ones it takes the old task's tail instead of letting it into the
  new engram. If it takes 2 `confirm` examples in a row, its task has come back (a
  tail thins out instead; and a split that should not have been is undone): p is
  active again, and a is the previous one.
- **Warm-up** (the engram's first `warmup` examples): everything a takes trains it.

Cost: one inference pass of the active engram per batch, a second one while a previous
engram is kept, one per allocated engram at a boundary; one train step per batch (the
examples it releases join it); at most `window` examples held. The router's statistics take each trained batch under the engram that trains it, in
chunks of `router_chunk` examples (an M x M update each), and its discriminant is solved
when the stream is evaluated (`end_segment`). When every engram is in use
(`max_tasks`) a confirmed boundary is recorded, the held examples train the active
engram and its test starts again (`exhausted` counts such boundaries).
"""
import collections

import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_positive_int
from larq_engrams.novelty import PrequentialNovelty

__all__ = ["TaskFreeEngrams", "DEFAULTS", "change_point"]

_PREDICTS = float(np.log(0.5))  # an engram predicts a label it gives probability >= 1/2

# Chosen on validation data (results/issue47). router_chunk decides nothing (the router's
# statistics are sums; its discriminant is solved when the stream is evaluated): 1000, as
# `observe_task_data` takes a told task's data, since each chunk costs an M x M update.
DEFAULTS = {"alpha": 1e-3, "confirm": 30, "warmup": 100, "horizon": 200, "floor": 0.02, "effect": 0.1,
            "unlikely": 0.05, "window": 500, "router_chunk": 1000}


def change_point(flags, p):
    r"""The index c that maximises the binomial log-likelihood ratio of "flags[c:] have
    their own rate q_c" against "every flag has rate p": (m - c) KL(q_c || p), over the
    c where a flag is set (the first of a run of novel examples). Returns 0 if none is."""
    flags = np.asarray(flags, dtype=np.float64)
    starts = np.flatnonzero(flags)
    if starts.size == 0:
        return 0
    after = np.cumsum(flags[::-1])[::-1][starts]  # flags set from c on
    length = flags.size - starts
    q = np.clip(after / length, 1e-12, 1 - 1e-12)
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return int(starts[np.argmax(np.where(q > p, length * kl, -np.inf))])


def _merged(batches):
    """The examples of `batches` as one batch, `[(x, y)]`, or `[]` if there are none."""
    batches = [b for b in batches if len(b[1])]
    if len(batches) < 2:
        return batches
    return [(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))]


class _Chunk:
    """One batch under test: the active engram's examples' positions, which were held,
    the held examples themselves, the batch's last position, and (held, examples) of the
    whole batch as the active engram saw it, for its rate."""

    __slots__ = ("positions", "held", "x", "y", "last", "seen")

    def __init__(self, positions, held, x, y, last, seen):
        self.positions, self.held, self.x, self.y = positions, held, x[held], y[held]
        self.last, self.seen = last, seen


class TaskFreeEngrams:
    """The policy of the module docstring for one `EngramModel`.

    Args:
        model: the `EngramModel`, with its first engram active (`begin_task(0)`).
        alpha, warmup, horizon, floor, effect: the novelty test's (`PrequentialNovelty`);
            `floor` is also the share under which a previous engram is dropped.
        confirm: held examples a boundary needs in the window.
        unlikely: tau, the probability of its label under which the active engram holds
            an example.
        window: examples of the active engram the test looks back over.
        router_chunk: examples the router takes at a time (held until then: 3 MiB of
            float32 784-pixel images at 1000).
    """

    def __init__(self, model, alpha=DEFAULTS["alpha"], confirm=DEFAULTS["confirm"], warmup=DEFAULTS["warmup"],
                 horizon=DEFAULTS["horizon"], floor=DEFAULTS["floor"], effect=DEFAULTS["effect"],
                 unlikely=DEFAULTS["unlikely"], window=DEFAULTS["window"], router_chunk=DEFAULTS["router_chunk"]):
        if model.active_task is None:
            raise RuntimeError("TaskFreeEngrams: call `model.begin_task(0)` before the stream starts.")
        self.model = model
        self.test_args = {"alpha": alpha, "warmup": warmup, "horizon": horizon, "floor": floor, "effect": effect}
        self.confirm = check_positive_int("confirm", confirm, owner="TaskFreeEngrams")
        self.window = check_positive_int("window", window, owner="TaskFreeEngrams")
        if not 0.0 < float(unlikely) < 1.0:
            raise ValueError(f"TaskFreeEngrams: unlikely must be in (0, 1), got {unlikely!r}.")
        self.unlikely = float(unlikely)
        self._unlikely = float(np.log(unlikely))
        if self.window < self.confirm:
            raise ValueError(f"TaskFreeEngrams: window ({window}) must be at least confirm ({confirm}).")
        self.router_chunk = check_positive_int("router_chunk", router_chunk, owner="TaskFreeEngrams")
        self.tests = {model.active_task: self.new_test()}
        self.recent = collections.deque()  # _Chunk of the active engram, within the window
        self.previous = None
        self._shares = collections.deque()  # (examples, taken by the previous engram) per batch
        self._run = (0, None)  # examples in a row the previous engram took, from position
        self._since_switch = 0
        self.position = 0  # examples routed so far
        self.boundaries = []  # [{"at": example position, "engram": id, "new": bool}]
        self.exhausted = 0
        self.to_previous = 0
        self._router = []  # [(x, y, engram)] not yet in the router's statistics
        self._scores_fn = None

    def new_test(self):
        return PrequentialNovelty(**self.test_args)

    @property
    def held(self):
        """The held examples' chunks (those with any held example)."""
        return [c for c in self.recent if c.held.any()]

    # ------------------------------------------------------------------ the policy
    def route(self, x, y):
        """The batches to train now on the active engram, and whether the active engram
        changed since the last call (the trainer then starts a fresh optimizer)."""
        x, y = np.asarray(x), np.asarray(y)
        positions = self.position + np.arange(len(y))
        self.position += len(y)
        active = self.model.active_task
        likelihood = self.scores(x, y, active)
        unlikely = likelihood < self._unlikely  # held if a keeps it: a finds its label unlikely
        # a's rate counts every example it saw, those a previous engram takes too: they
        # are ones a would hold, and leaving them out would make a look better than it is.
        seen = (int(unlikely.sum()), len(y))
        test = self.tests[active]
        if self.previous is not None:
            x, y, positions, unlikely = self._split_with_previous(x, y, positions, unlikely, likelihood)
            if self._run[0] >= 2 * self.confirm:
                return self._return_to_previous(), True
        if not test.testing:
            test.update(*seen)
            return (self._trained([(x, y)], active) if len(y) else []), False
        self.recent.append(_Chunk(positions, unlikely, x, y, self.position - 1, seen))
        # Released examples train in the step of the batch that releases them: a step of
        # their own would cost a train step for one or two examples.
        batches = _merged(self._expire(test) + [(x[~unlikely], y[~unlikely])])
        held = np.concatenate([c.held for c in self.recent])
        if held.sum() < self.confirm:
            return self._trained(batches, active), False
        c = change_point(held, max(test.rate, test.floor))
        k, m = int(held[c:].sum()), held.size - c
        if k < self.confirm or not test.is_novel(k, m):
            return self._trained(batches, active), False
        return self._boundary(held, c, test, batches)

    def _split_with_previous(self, x, y, positions, unlikely, likelihood):
        """Gives the previous engram the examples it explains better (their label more
        probable under it) where the active one would hold them or it predicts them (the
        label's probability at least 1/2); they enter the router under it. Returns the
        active's share."""
        previous_likelihood = self.scores(x, y, self.previous)
        confident = previous_likelihood >= _PREDICTS
        mine = (~unlikely & ~confident) | (likelihood >= previous_likelihood)
        taken = int((~mine).sum())
        # The run of examples in a row the previous engram took (and where it started).
        if mine.all():
            self._run = (0, None)
        elif not mine.any():
            self._run = (self._run[0] + len(y), positions[0] if self._run[1] is None else self._run[1])
        else:
            tail = len(y) - 1 - int(np.flatnonzero(mine)[-1])
            self._run = (tail, positions[len(y) - tail] if tail else None)
        if taken:
            self._queue_for_router([(x[~mine], y[~mine])], self.previous)
            self.to_previous += taken
        self._shares.append((len(y), taken))
        self._since_switch += len(y)
        while sum(n for n, _ in self._shares) - self._shares[0][0] >= self.window:
            self._shares.popleft()
        seen, given = map(sum, zip(*self._shares))
        # A transition ends: the previous engram takes almost nothing any more, or the
        # active one has had its warm-up and two windows since (no fuzzy window is longer).
        if (seen >= self.window and given < self.test_args["floor"] * seen) or \
                self._since_switch >= self.test_args["warmup"] + 2 * self.window:
            self.previous, self._shares, self._run = None, collections.deque(), (0, None)
        return x[mine], y[mine], positions[mine], unlikely[mine]

    def _return_to_previous(self):
        """The previous engram took 2 `confirm` examples in a row: its task came back (a
        transition's tail thins out instead). It becomes active again; the active one
        becomes the previous one."""
        active, previous = self.model.active_task, self.previous
        self.boundaries.append({"at": int(self._run[1]), "engram": int(previous), "new": False})
        self.recent = collections.deque()  # held under the active engram: neither's, untrained
        self._flush_router()
        self.model.begin_task(previous)
        self.previous, self._shares, self._run = active, collections.deque(), (0, None)
        self._since_switch = 0
        return []

    def _expire(self, test):
        """Chunks that left the window: their held counts update p^, their held examples are
        released to the active engram."""
        released = []
        while self.recent and self.recent[0].last < self.position - self.window:
            chunk = self.recent.popleft()
            test.update(*chunk.seen)
            if len(chunk.y):
                released.append((chunk.x, chunk.y))
        return released

    def _boundary(self, held, c, test, batches):
        """A confirmed novelty: the held examples from the change point on go to their
        engram; the active engram's batches of this call train nothing (it is left)."""
        active = self.model.active_task
        positions = np.concatenate([c.positions for c in self.recent])
        k, m = int(held[c:].sum()), held.size - c
        start = int(positions[c])
        chunks, self.recent = list(self.recent), collections.deque()
        x = np.concatenate([c.x[c.positions[c.held] >= start] for c in chunks])
        y = np.concatenate([c.y[c.positions[c.held] >= start] for c in chunks])
        # Where the run has labels a never trained on (classes arrive with tasks), those
        # are the new task: the others are a's own hard examples and stay out of it.
        new_labels = self.model.engram_classes.numpy()[active][y] < 0.5
        if new_labels.any():
            x, y = x[new_labels], y[new_labels]
        target, new = self._destination(x, y, active)
        self.boundaries.append({"at": start, "engram": int(target), "new": bool(new), "held": k, "of": m,
                                "null_rate": test.null_rate})
        if target == active:  # no engram left: the active one goes on, its test starts again
            self.exhausted += 1
            self.tests[active] = self.new_test()
            return self._trained(_merged(batches + [(x, y)]), active), False
        self._queue_for_router(batches, active)  # the left engram's last examples
        self._flush_router()
        self.model.begin_task(target)
        if new:
            self.tests[target] = self.new_test()
        self.previous, self._shares, self._run = active, collections.deque(), (0, None)
        self._since_switch = 0
        return self._trained([(x, y)], target), True

    def take(self, x, y):
        """A batch whose engram the stream told (`begin_task` made it active): no test,
        queued for the router. Returns `[(x, y)]`."""
        self.position += len(y)
        return self._trained([(x, y)])

    def _destination(self, x, y, active):
        """(engram, is new) for the held examples: an allocated engram that explains
        them, else the next free one, else the active one (none free)."""
        best, best_p = None, -1.0
        for task, test in self.tests.items():
            if task == active or not test.testing:
                continue
            # It must predict them (p(y | x) >= 1/2) about as often as its own task's: an
            # engram that spreads its probability over every class on inputs it never saw
            # finds few labels unlikely, yet explains nothing.
            p = test.p_value(int((self.scores(x, y, task) < _PREDICTS).sum()), len(y))
            if p >= test.alpha and p > best_p:
                best, best_p = task, p
        if best is not None:
            return best, False
        free = [t for t in range(self.model.max_tasks) if t not in self.model.allocated_tasks]
        return (free[0], True) if free else (active, False)

    def _trained(self, batches, engram=None):
        """Queues `batches` for the router under `engram` (the active one: the caller
        may pass it, as reading it from the model's weights costs an eager op); returns
        them."""
        self._queue_for_router(batches, self.model.active_task if engram is None else engram)
        return batches

    def _queue_for_router(self, batches, engram):
        """The router takes examples under their engram, `router_chunk` at a time."""
        self._router.extend((np.asarray(x), np.asarray(y), int(engram)) for x, y in batches if len(y))
        if sum(len(b[1]) for b in self._router) >= self.router_chunk:
            self._flush_router()

    def scores(self, x, y, task):
        """For each example of `x`, the log-probability engram `task` gives its label
        (ranking its own classes only: 0 for a class it never trained on)."""
        if self._scores_fn is None:
            model = self.model

            def score(x, y, task):
                ids = tf.fill(tf.shape(y), task)
                logits = model.logits_as_evaluated(model((x, ids), training=False), task)
                return tf.gather(tf.nn.log_softmax(logits, axis=-1), y, batch_dims=1)

            self._scores_fn = tf.function(score, reduce_retracing=True)
        return self._scores_fn(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32),
                               tf.constant(int(task), tf.int32)).numpy()

    # -------------------------------------------------------------- bookkeeping
    def _flush_router(self):
        if self._router and self.model.task_discriminant is not None:
            for engram in sorted({b[2] for b in self._router}):
                x = np.concatenate([b[0] for b in self._router if b[2] == engram])
                y = np.concatenate([b[1] for b in self._router if b[2] == engram])
                self.model.observe_task_data(x, y, batch_size=max(len(y), 1), refresh=False, task=engram)
        self._router = []

    def end_segment(self):
        """Before an evaluation: the router takes what it has not yet and solves its
        discriminant (held examples stay held: the learner has not decided on them)."""
        self._flush_router()
        if self.model.task_discriminant is not None:
            self.model.task_discriminant.refresh()

    def finish(self):
        """At the stream's end: the held examples train the active engram (returned), as a
        novelty too short to confirm."""
        chunks, self.recent = list(self.recent), collections.deque()
        return self._trained(_merged([(c.x, c.y) for c in chunks]))

    def report(self):
        """What the learner decided: its boundaries (example positions), the engrams it
        used, the boundaries it could not give an engram, the examples a previous engram
        took in transitions."""
        return {"boundaries": list(self.boundaries), "engrams": list(self.model.allocated_tasks),
                "exhausted": self.exhausted, "to_previous": self.to_previous,
                "settings": {**self.test_args, "confirm": self.confirm, "window": self.window,
                             "unlikely": self.unlikely}}
