r"""An engram model's own task boundaries in a stream (no task id, no boundary given).

For every incoming labelled batch (x, y) the active engram first predicts it, as "infer"
evaluation would once it picked that engram (its classes only; `logits_as_evaluated`),
and its errors k of n go to the engram's novelty test (`novelty.PrequentialNovelty`):

- not novel: the batch trains the active engram (with any batches held before it);
- novel: the batch is held. Once the held batches reach `confirm` examples, all novel
  in a row, a boundary is declared at the first of them. The held examples then go to
  the allocated engram that explains them (the largest p-value of their pooled errors
  under its own test, if that one is not novel: a task that comes back), else to a new
  engram (`begin_task` with the next free id). They train it first.
- a batch that is not novel while others are held releases them: all train the active
  engram (a false alarm, no boundary).

So the decision costs one inference pass of the active engram per batch (and one per
allocated engram at a boundary), and holding at most `confirm + batch` examples. The
router's statistics take each trained batch under the engram that trains it, in chunks
of `router_chunk` examples (an M x M update each), and its discriminant is solved when
the stream is evaluated (`end_segment`). When every engram is in use (`max_tasks`), a
confirmed boundary is still recorded but the examples keep training the active engram
(`exhausted` counts such boundaries).
"""
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_positive_int
from larq_engrams.novelty import PrequentialNovelty

__all__ = ["TaskFreeEngrams", "DEFAULTS"]

# alpha, confirm, warmup, horizon, floor: chosen on validation data (results/issue47).
DEFAULTS = {"alpha": 1e-3, "confirm": 30, "warmup": 100, "horizon": 200, "floor": 0.02, "router_chunk": 200}


class TaskFreeEngrams:
    """The policy of the module docstring for one `EngramModel`.

    Args:
        model: the `EngramModel`, with its first engram active (`begin_task(0)`).
        alpha, warmup, horizon, floor: the novelty test's (`PrequentialNovelty`).
        confirm: examples a novelty must hold over before a boundary is declared.
        router_chunk: examples the router takes at a time.
    """

    def __init__(self, model, alpha=DEFAULTS["alpha"], confirm=DEFAULTS["confirm"], warmup=DEFAULTS["warmup"],
                 horizon=DEFAULTS["horizon"], floor=DEFAULTS["floor"], router_chunk=DEFAULTS["router_chunk"]):
        if model.active_task is None:
            raise RuntimeError("TaskFreeEngrams: call `model.begin_task(0)` before the stream starts.")
        self.model = model
        self.test_args = {"alpha": alpha, "warmup": warmup, "horizon": horizon, "floor": floor}
        self.confirm = check_positive_int("confirm", confirm, owner="TaskFreeEngrams")
        self.router_chunk = check_positive_int("router_chunk", router_chunk, owner="TaskFreeEngrams")
        self.tests = {model.active_task: self.new_test()}
        self.held = []  # [(x, y, errors under the active engram)]
        self.position = 0  # examples routed so far (held ones included)
        self.boundaries = []  # [{"at": example position, "engram": id, "new": bool}]
        self.exhausted = 0
        self._router = []  # [(x, y)] not yet in the router's statistics
        self._errors_fn = None

    # ------------------------------------------------------------------ the policy
    def route(self, x, y):
        """The batches to train now on the active engram, and whether the active engram
        changed since the last call (the trainer then starts a fresh optimizer)."""
        model = self.model
        x, y = np.asarray(x), np.asarray(y)
        active = model.active_task
        errors = self.errors(x, y, active)
        self.position += len(y)
        test = self.tests[active]
        if not test.is_novel(errors, len(y)):
            batches = [(hx, hy) for hx, hy, _ in self.held] + [(x, y)]
            known = [e for *_, e in self.held] + [errors]  # all under the active engram
            self.held = []
            return self._trained(batches, known), False
        self.held.append((x, y, errors))
        held = sum(len(hy) for _, hy, _ in self.held)
        if held < self.confirm:
            return [], False
        batches = [(hx, hy) for hx, hy, _ in self.held]
        self.held = []
        start = self.position - held
        target, new = self._destination(batches, active)
        self.boundaries.append({"at": int(start), "engram": int(target), "new": bool(new)})
        if target == active:  # no engram left: the active one goes on, its test starts again
            self.exhausted += 1
            self.tests[active] = self.new_test()
            return self._trained(batches), False
        self._flush_router()
        model.begin_task(target)
        if new:
            self.tests[target] = self.new_test()
        return self._trained(batches), True

    def new_test(self):
        return PrequentialNovelty(**self.test_args)

    def take(self, x, y):
        """A batch whose engram the stream told (`begin_task` made it active): no test,
        queued for the router. Returns `[(x, y)]`."""
        self.position += len(y)
        self._queue_for_router([(x, y)])
        return [(x, y)]

    def _destination(self, batches, active):
        """(engram, is new) for the held examples: an allocated engram that explains
        them, else the next free one, else the active one (none free)."""
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        best, best_p = None, -1.0
        for task, test in self.tests.items():
            if task == active or not test.testing:
                continue
            p = test.p_value(self.errors(x, y, task), len(y))
            if p >= test.alpha and p > best_p:
                best, best_p = task, p
        if best is not None:
            return best, False
        free = [t for t in range(self.model.max_tasks) if t not in self.model.allocated_tasks]
        return (free[0], True) if free else (active, False)

    def _trained(self, batches, errors=None):
        """Counts `batches` in the active engram's test (their errors under it before
        its step: `errors`, or measured now) and queues them for the router; returns them."""
        active = self.model.active_task
        test = self.tests[active]
        for i, (x, y) in enumerate(batches):
            test.update(errors[i] if errors is not None else self.errors(x, y, active), len(y))
        self._queue_for_router(batches)
        return batches

    def _queue_for_router(self, batches):
        """The router takes trained batches under the active engram, `router_chunk`
        examples at a time."""
        self._router.extend((np.asarray(x), np.asarray(y)) for x, y in batches)
        if sum(len(b[1]) for b in self._router) >= self.router_chunk:
            self._flush_router()

    def errors(self, x, y, task):
        """How many of `x` engram `task` gets wrong, ranking its own classes only."""
        if self._errors_fn is None:
            model = self.model

            def count(x, y, task):
                ids = tf.fill(tf.shape(y), task)
                logits = model.logits_as_evaluated(model((x, ids), training=False), task)
                wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
                return tf.reduce_sum(tf.cast(wrong, tf.int32))

            self._errors_fn = tf.function(count, reduce_retracing=True)
        return int(self._errors_fn(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32),
                                   tf.constant(int(task), tf.int32)))

    # -------------------------------------------------------------- bookkeeping
    def _flush_router(self):
        if self._router and self.model.task_discriminant is not None:
            x = np.concatenate([b[0] for b in self._router])
            y = np.concatenate([b[1] for b in self._router])
            self.model.observe_task_data(x, y, batch_size=max(len(y), 1), refresh=False)
        self._router = []

    def end_segment(self):
        """Before an evaluation: the router takes what it has not yet and solves its
        discriminant (held batches stay held: the learner has not decided on them)."""
        self._flush_router()
        if self.model.task_discriminant is not None:
            self.model.task_discriminant.refresh()

    def finish(self):
        """At the stream's end: held batches train the active engram (returned), as a
        novelty too short to confirm."""
        held, self.held = self.held, []
        return self._trained([(hx, hy) for hx, hy, _ in held], [e for *_, e in held]) if held else []

    def report(self):
        """What the learner decided: its boundaries (example positions), the engrams it
        used, the boundaries it could not give an engram."""
        return {"boundaries": list(self.boundaries), "engrams": list(self.model.allocated_tasks),
                "exhausted": self.exhausted, "settings": {**self.test_args, "confirm": self.confirm}}
