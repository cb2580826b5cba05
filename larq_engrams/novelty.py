r"""Are these examples new to the network that would train on them? A prequential
binomial test.

In a stream without task boundaries, the active engram judges each incoming example
before it trains on it ("test, then train"). A *miss* is an example it would not
learn from as its own (`larq_engrams.task_free`: the probability it gives the label is
below tau). Within a task its miss rate settles near some p; at a boundary it jumps (new
classes always miss an engram restricted to its own, and a new input distribution, such
as a new pixel permutation, mostly does). For k misses among n examples:

```
p-value = P(K >= k),  K ~ Binomial(n, p0),   p0 = max(p^, p_min) + delta
novel   <=> p-value < alpha
```

with p^ the engram's running miss rate: an exponential average over its examples with
a horizon of H examples (each example's weight decays by 1 - 1/H per later example;
n examples move it by 1 - (1 - 1/H)^n towards their rate), started once the engram has
seen `warmup / 2` examples and tested from `warmup` on (while it learns, its rate is
high and falling: no test). The floor p_min keeps a few unlucky examples of a nearly
perfect engram from counting as novel, and the effect delta asks for a rise in the
rate, not only a significant one: a binarized network trained online drifts (its rate
over a few hundred examples can double), while a new task's examples miss far more
often.

Under the null hypothesis (the examples come from the engram's task, misses independent
with rate p <= p0) they are called novel with probability at most alpha; the learner
(`larq_engrams.task_free`) also asks for `confirm` misses in the run it tests.
"""
import math

from larq_engrams.arguments import check_positive_int

__all__ = ["PrequentialNovelty", "binomial_tail"]


def binomial_tail(k, n, p):
    """P(K >= k) for K ~ Binomial(n, p), summed in log space (exact for the batch sizes
    of a stream)."""
    k, n, p = int(k), int(n), float(p)
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


class PrequentialNovelty:
    """The test of the module docstring for one engram (`reset` when another starts).

    Args:
        alpha: the test's level (a batch is novel when its p-value is below it).
        horizon: H, the running error rate's horizon in examples.
        warmup: examples an engram trains on before its batches are tested.
        floor: p_min.
        effect: delta, the smallest rise of the error rate that counts as novelty.
    """

    def __init__(self, alpha=1e-3, horizon=200, warmup=100, floor=0.02, effect=0.0):
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"PrequentialNovelty: alpha must be in (0, 1), got {alpha!r}.")
        if not 0.0 < float(floor) < 1.0:
            raise ValueError(f"PrequentialNovelty: floor must be in (0, 1), got {floor!r}.")
        if not 0.0 <= float(effect) < 1.0:
            raise ValueError(f"PrequentialNovelty: effect must be in [0, 1), got {effect!r}.")
        self.alpha, self.floor, self.effect = float(alpha), float(floor), float(effect)
        self.horizon = check_positive_int("horizon", horizon, owner="PrequentialNovelty")
        self.warmup = int(warmup)
        if self.warmup < 0:
            raise ValueError(f"PrequentialNovelty: warmup must be >= 0, got {warmup!r}.")
        self.reset()

    def reset(self):
        """A new engram: no examples seen, no error rate yet."""
        self.seen = 0
        self.rate = None

    @property
    def testing(self):
        return self.seen >= self.warmup and self.rate is not None

    def p_value(self, errors, n):
        """P(K >= errors) under p0 (1.0 while it warms up)."""
        if not self.testing:
            return 1.0
        return binomial_tail(errors, n, self.null_rate)

    @property
    def null_rate(self):
        """p0 = max(p^, p_min) + delta (at most 1)."""
        return min(max(self.rate, self.floor) + self.effect, 1.0)

    def is_novel(self, errors, n):
        return self.p_value(errors, n) < self.alpha

    def update(self, errors, n):
        """The engram trained on a batch with `errors` of `n` wrong before its step."""
        n = int(n)
        if n <= 0:
            return
        self.seen += n
        if self.seen >= self.warmup / 2:
            observed = errors / n
            if self.rate is None:
                self.rate = observed
            else:
                keep = (1.0 - 1.0 / self.horizon) ** n
                self.rate = keep * self.rate + (1.0 - keep) * observed

    def get_config(self):
        return {"alpha": self.alpha, "horizon": self.horizon, "warmup": self.warmup, "floor": self.floor,
                "effect": self.effect}
