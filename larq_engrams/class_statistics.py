r"""Classifiers that keep only class statistics, and so cannot forget: nearest class mean
and streaming linear discriminant analysis (Hayes & Kanan 2020; Avalanche's
`StreamingLDA`). The baselines a user would pick instead of a network in class-IL.

For every class c seen so far, with f(x) = x (pixels) or fixed random ReLU features
(`features=M`, see `task_inference.InputDiscriminant`, a frozen feature extractor):

```
n_c, mu_c     = count and mean of f(x) over the class' training examples
NCM:  logit_c(x) = mu_c^T f(x) - 1/2 |mu_c|^2                    (= -1/2 |f(x) - mu_c|^2 + const)
SLDA: Sigma      = sum_c sum_{x in c} (f - mu_c)(f - mu_c)^T / sum_c n_c   shared within-class covariance
      P          = ((1 - lambda) Sigma + lambda (tr Sigma / M) I)^{-1}      shrunk toward the mean variance
      logit_c(x) = mu_c^T P f(x) - 1/2 mu_c^T P mu_c             (Gaussian log-likelihood + const)
```

With `task_groups=T` the statistics are kept per (task, class) group, as the engram
router keeps them, and logit_c(x) = max_t logit_{t,c}(x): in domain-IL, where every task
uses the same labels, this is the router alone (one class per group set is the
class-IL case, where the two coincide).

Classes never seen score -1e9, so a prediction is always a class seen so far. Training
is accumulation: a batch adds to the counts, sums and within-class scatter (float32,
merged batch by batch as in `InputDiscriminant.observe`), so the order of the data
changes nothing but rounding, and nothing learnt earlier is ever overwritten. One pass
over the data is all they need; more epochs count the data again (the means stay the
same; the shared covariance weighs the repeated task more).
"""
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_choice, check_positive_int, check_positive_ints
from larq_engrams.task_inference import DEFAULT_CONV, DEFAULT_PATCH_FLOOR, InputDiscriminant

__all__ = ["ClassStatisticsClassifier", "RULES"]

RULES = ("ncm", "slda")


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class ClassStatisticsClassifier(tf.keras.Model):
    """NCM (`rule="ncm"`) or streaming LDA (`rule="slda"`) on flattened inputs.

    `observe(x, y)` adds a batch to the statistics; calling the model returns the
    logits above, refreshing the discriminant first if data came in since (one M x M
    Cholesky solve for SLDA). `model.fit` works too: its `train_step` scores each batch
    before observing it (test-then-train accuracy), with the discriminant refreshed
    whenever the examples observed have doubled since its last refresh (about log2(n)
    solves for n examples, so the progress bar's accuracy is that of a discriminant
    that has seen at least half the data so far).

    Args:
        input_shape: the shape of one example (flattened inside).
        num_classes: the outputs.
        rule: "ncm" or "slda".
        shrinkage: SLDA's lambda in [0, 1] (0.1, as measured in the issue's anchors).
        features: None for the inputs themselves, or M fixed random ReLU features.
        seed: seeds the random features.
        feature_map: "dense" (relu(x R) on the flat inputs) or "conv" (random filters
            over image inputs; `task_inference.ConvGeometry`), `image_shape` saying how
            flat inputs are images; `conv_kernel_size`, `conv_pool` and
            `conv_patch_floor` its k, p and contrast floor eps.
        task_groups: 1 (one group per class), or the number of tasks: one group per
            (task, class), the task set by `begin_task` (the continual protocol's hook).
        class_covariance: SLDA with task groups: "shared" (each class's best group) or
            "task" (the best-scoring task's own class evidence, from its own covariance;
            `task_inference.InputDiscriminant`).
        shortlist: with task groups, the k tasks whose groups compete for an input
            after every task's mean group (`InputDiscriminant`, shortlist); None: all.
    """

    def __init__(self, input_shape, num_classes, rule="slda", shrinkage=0.1, features=None, seed=0, task_groups=1,
                 feature_map="dense", image_shape=None, conv_kernel_size=DEFAULT_CONV[0], conv_pool=DEFAULT_CONV[1],
                 class_covariance="shared", shortlist=None, conv_patch_floor=DEFAULT_PATCH_FLOOR, **kwargs):
        super().__init__(**kwargs)
        self.sample_shape = check_positive_ints("input_shape", input_shape, owner="ClassStatisticsClassifier")
        self.num_classes = int(num_classes)
        self.rule = check_choice("rule", rule, RULES, owner="ClassStatisticsClassifier")
        self.shrinkage, self.features, self.seed = float(shrinkage), features, int(seed)
        self.task_groups = check_positive_int("task_groups", task_groups, owner="ClassStatisticsClassifier")
        self.discriminant = InputDiscriminant(
            self.task_groups, self.num_classes, features=features, shrinkage=shrinkage, seed=seed,
            covariance="shared" if rule == "slda" else "identity", feature_map=feature_map,
            image_shape=(image_shape or self.sample_shape) if feature_map == "conv" else None,
            conv_kernel_size=conv_kernel_size, conv_pool=conv_pool, conv_patch_floor=conv_patch_floor,
            class_covariance=class_covariance,
            shortlist=shortlist, name="class_statistics")
        self.feature_map = feature_map
        self.image_shape = None if image_shape is None else tuple(int(v) for v in image_shape)
        self.discriminant.build((None, int(np.prod(self.sample_shape))))
        # Set by `observe`, cleared by the refresh that the next call makes.
        self.stale = tf.Variable(False, trainable=False, name="stale",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.task = tf.Variable(0, trainable=False, name="task", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # Examples observed at the last refresh (`train_step` refreshes when they have doubled).
        self.refreshed_count = tf.Variable(0.0, trainable=False, name="refreshed_count",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.build((None, *self.sample_shape))

    def begin_task(self, task):
        """The continual protocol's hook: later examples go to `task`'s groups (with
        `task_groups` > 1; one group set holds every task otherwise)."""
        if self.task_groups > 1:
            if not 0 <= int(task) < self.task_groups:
                raise ValueError(f"ClassStatisticsClassifier: task {task} is outside its {self.task_groups} "
                                 "task_groups.")
            self.task.assign(int(task))

    def _flat(self, x):
        return tf.reshape(tf.cast(x, tf.float32), (tf.shape(x)[0], -1))

    def observe(self, x, y):
        """Adds a batch of examples and their labels to the class statistics."""
        self.discriminant.observe(self._flat(x), y, self.task)
        self.stale.assign(True)

    def _refresh(self):
        self.discriminant.refresh()
        self.stale.assign(False)
        self.refreshed_count.assign(tf.reduce_sum(self.discriminant.counts))
        return tf.constant(True)

    def _logits(self, x):
        # Each class's best group over the task group sets, or the best task's own
        # evidence (empty groups score -1e9).
        return self.discriminant.predict_classes(self._flat(x))

    def stale_logits(self, x):
        """The logits of the discriminant as last refreshed (no refresh: cheap)."""
        return self._logits(x)

    def call(self, x, training=False):
        tf.cond(self.stale, self._refresh, lambda: tf.constant(False))
        return self._logits(x)

    def continual_train_step(self, x, y, loss_fn, optimizer, task_ids=None):
        """The continual protocol's step (`larq_engrams.protocol`): counts the batch; no
        loss, no gradient, the optimizer unused. Returns the logits of the
        discriminant as last refreshed (refreshing is a Cholesky solve, done when the
        model is next called, e.g. by the evaluation) and a loss of 0."""
        logits = self.stale_logits(x)
        self.observe(x, y)
        return logits, tf.constant(0.0)

    def train_step(self, data):
        x, y = data[0], data[1]
        logits = self.stale_logits(x)  # scored before it is observed; no Cholesky solve per batch
        self.observe(x, y)
        doubled = tf.reduce_sum(self.discriminant.counts) >= 2.0 * self.refreshed_count
        tf.cond(doubled, self._refresh, lambda: tf.constant(False))
        self.compiled_metrics.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}

    def state_bytes(self):
        """The continual protocol's `(learn, predict)` bytes: the class statistics, and the
        discriminant that predicts (`InputDiscriminant.state_bytes`)."""
        return self.discriminant.state_bytes()

    def get_config(self):
        return {"input_shape": self.sample_shape, "num_classes": self.num_classes, "rule": self.rule,
                "shrinkage": self.shrinkage, "features": self.features, "seed": self.seed,
                "task_groups": self.task_groups, "feature_map": self.feature_map,
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "conv_kernel_size": self.discriminant.conv_kernel_size, "conv_pool": self.discriminant.conv_pool,
                "conv_patch_floor": self.discriminant.conv_patch_floor,
                "class_covariance": self.discriminant.class_covariance, "shortlist": self.discriminant.shortlist,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        # Saved before the convolutional map normalized its patches.
        return cls(**{"conv_patch_floor": None, **config})
