r"""Task inference from input statistics: which engram should answer an input.

This is this package's own contribution: the engram paper does not say how an engram is
chosen without a task id. `InputDiscriminant` is a streaming linear discriminant
(Hayes & Kanan 2020's streaming LDA, applied to tasks) over fixed random features of
the inputs, for every (engram, class) group an engram was trained on:

```
f(x)          = relu(x R),  R in {-1, +1}^{D x M} / sqrt(D), seeded and never trained
n_g, mu_g     = count and mean feature of group g = (engram s, class c)
Sigma         = (sum_x f f^T - sum_g n_g mu_g mu_g^T) / sum_g n_g     shared within-group covariance
Sigma_lambda  = (1 - lambda) Sigma + lambda (tr Sigma / M) I           shrinkage toward the mean variance
P             = Sigma_lambda^{-1}
g_{s,c}(x)    = mu_{s,c}^T P f(x) - 1/2 mu_{s,c}^T P mu_{s,c}          Gaussian log-likelihood + const
score_s(x)    = max_{c trained by engram s} g_{s,c}(x)
```

`EngramModel` in "infer" mode (`confidence="input_lda"`, the default) lets the engram
with the highest score predict, among the classes it was trained on. With
`features=None` the discriminant works on the raw inputs (f(x) = x).

Why fixed features of the inputs: they are the one representation that later engrams
cannot change, so statistics taken when a task is seen stay exact for ever; they need
no replay (only sums: M^2 + groups x M numbers) and cannot forget; one covariance puts
every engram's score on one scale. The random ReLU expansion (as in RanPAC, McDonnell
et al. 2023) makes the linear discriminant non-linear in x, and its size M does not
depend on the input size. Measured on validation splits (784-1024-1024-10, 5 epochs per
task, seed 0; `experiments/task_inference_study.py`), the share of samples routed to
their own engram: Split MNIST / Split Fashion-MNIST class-IL 95.6 / 87.3 % with
M = 2048, 89.9 / 82.7 % on raw pixels, 71.3 / 52.6 % for Gaussians on each engram's own
first-layer pre-activations, 51.3 / 8.9 % for the BatchNorm excitation score.

The statistics depend on the inputs only, not on the weights: `EngramModel.fit` and
`ContinualTrainer` record a task's training inputs when it starts, so the engram being
trained already competes in "infer" evaluations during its own task.
"""
import tensorflow as tf

from larq_engrams.arguments import check_choice, check_positive_int

__all__ = ["InputDiscriminant", "MAX_FEATURES", "DEFAULT_FEATURES", "DEFAULT_SHRINKAGE", "EMPTY_GROUP_SCORE",
           "floored_log_softmax"]

# M x M float64 statistics: 4096 features take 134 MB.
MAX_FEATURES = 4096
# The router's defaults (`EngramModel`'s lda_features and lda_shrinkage), chosen on
# validation data (see `InputDiscriminant`); the router-alone baselines follow them.
DEFAULT_FEATURES = 2048
DEFAULT_SHRINKAGE = 0.01
EMPTY_GROUP_SCORE = -1e9  # the score of an (engram, class) group that has no data


def floored_log_softmax(logits, allowed, outside_mass=None):
    r"""Log-probabilities over every class that put almost all mass on `allowed` ones.

    ```
    p_c = (1 - eps) softmax_{allowed}(logits)_c     c allowed
    p_c = eps / (number of classes not allowed)     otherwise
    ```

    with eps = `outside_mass`, by default 1e-3 / C for C classes. Since eps < 1 / C,
    every allowed class keeps more probability than any other (an allowed one has at
    least (1 - eps) / C), so the argmax is the argmax among the allowed classes; and the
    values are finite, so a cross-entropy on them stays of normal size: a sample whose
    true class is not allowed costs -log(eps / n_out), about 11.3 nats at C = 10.
    Rows with every class allowed are a plain log_softmax.

    Args:
        logits: (..., C) float tensor.
        allowed: (..., C) bool tensor.
        outside_mass: eps in (0, 1 / C).
    """
    classes = logits.shape[-1]
    eps = 1e-3 / classes if outside_mass is None else float(outside_mass)
    inside = tf.nn.log_softmax(tf.where(allowed, logits, tf.fill(tf.shape(logits), tf.constant(
        EMPTY_GROUP_SCORE, logits.dtype))), axis=-1)
    outside_count = tf.reduce_sum(tf.cast(tf.logical_not(allowed), logits.dtype), axis=-1, keepdims=True)
    outside = tf.math.log(eps / tf.maximum(outside_count, 1.0))
    return tf.where(allowed, inside + tf.math.log(tf.constant(1.0 - eps, logits.dtype)), outside)


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class InputDiscriminant(tf.keras.layers.Layer):
    """Per-engram streaming linear discriminant on random features of flattened inputs
    (see the module docstring for the maths).

    State (non-trainable weights, saved with the model): the projection R (D, M),
    `counts` (tasks, classes), `sums` (tasks, classes, M) and `second_moment` (M, M) in
    float64, from which `refresh()` derives the discriminant `kernel` (tasks, classes,
    M) and `bias` (tasks, classes) in float32. At M = 2048 the statistics take 34 MB,
    whatever the network's width.

    Args:
        max_tasks: how many engrams.
        num_classes: the model's outputs.
        features: M, the number of random ReLU features; None for the raw inputs.
        shrinkage: lambda in [0, 1].
        seed: seeds R.
        covariance: "shared" (the discriminant above) or "identity" (P = I: nearest
            class mean, g_{s,c}(x) = mu^T f(x) - 1/2 |mu|^2; no M x M statistics).

    Defaults M = 2048, lambda = 0.01 were chosen on validation data (Split MNIST and
    Split Fashion-MNIST class-IL, 1024-1024, seed 0; task inference with M = 1024 /
    2048: 95.6 / 95.6 % and 85.9 / 87.3 %; raw pixels, lambda = 0.1 / 0.01: 89.9 / 88.9 %
    and 82.7 / 83.0 %; `experiments/task_inference_study.py`).
    """

    def __init__(self, max_tasks, num_classes, features=DEFAULT_FEATURES, shrinkage=DEFAULT_SHRINKAGE, seed=0,
                 covariance="shared",
                 **kwargs):
        super().__init__(**kwargs)
        self.covariance = check_choice("covariance", covariance, ("shared", "identity"), owner="InputDiscriminant")
        self.max_tasks = int(max_tasks)
        self.num_classes = int(num_classes)
        self.features = check_positive_int("features", features, owner="InputDiscriminant", allow_none=True)
        if not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"InputDiscriminant: `shrinkage` must be in [0, 1], got {shrinkage!r}.")
        self.shrinkage = float(shrinkage)
        self.seed = int(seed)

    def build(self, input_shape):
        inputs = int(input_shape[-1])
        features = inputs if self.features is None else self.features
        if features > MAX_FEATURES and self.covariance == "shared":
            raise ValueError(
                f"InputDiscriminant: {features} features need a {features}x{features} "
                f"covariance; at most {MAX_FEATURES} are supported. Use fewer random "
                f"features (`features`), or another confidence (e.g. 'excitation')."
            )
        tasks, classes = self.max_tasks, self.num_classes
        state = dict(trainable=False, initializer="zeros",
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.projection = None
        if self.features is not None:
            self.projection = self.add_weight(
                "projection", (inputs, features),
                **{**state, "initializer": _RandomSigns(self.seed, 1.0 / inputs ** 0.5)})
        self.counts = self.add_weight("counts", (tasks, classes), dtype=tf.float64, **state)
        self.sums = self.add_weight("sums", (tasks, classes, features), dtype=tf.float64, **state)
        self.second_moment = None
        if self.covariance == "shared":
            self.second_moment = self.add_weight(
                "second_moment", (features, features), dtype=tf.float64, **state)
        self.kernel = self.add_weight("kernel", (tasks, classes, features), **state)
        self.bias = self.add_weight(
            "bias", (tasks, classes), **{**state, "initializer": tf.keras.initializers.Constant(EMPTY_GROUP_SCORE)})
        super().build(input_shape)

    def transform(self, x):
        """f(x): relu(x R), or x itself without random features."""
        x = tf.cast(x, self.kernel.dtype)
        return x if self.projection is None else tf.nn.relu(tf.matmul(x, self.projection))

    def observe(self, x, y, task):
        """Adds a batch of flattened inputs `x` (their features) with labels `y` to engram `task`'s groups
        (in-graph; call `refresh()` after the last batch)."""
        # Batch products in float32 (the cost), running sums in float64 (the precision).
        x = self.transform(x)
        onehot = tf.one_hot(tf.cast(y, tf.int32), self.num_classes, dtype=x.dtype)
        row = tf.one_hot(tf.cast(task, tf.int32), self.max_tasks, dtype=tf.float64)
        self.counts.assign_add(row[:, None] * tf.cast(tf.reduce_sum(onehot, axis=0), tf.float64)[None, :])
        sums = tf.cast(tf.matmul(onehot, x, transpose_a=True), tf.float64)
        self.sums.assign_add(row[:, None, None] * sums[None])
        if self.second_moment is not None:
            self.second_moment.assign_add(tf.cast(tf.matmul(x, x, transpose_a=True), tf.float64))

    def refresh(self):
        """Recomputes the discriminant from the statistics (one M x M Cholesky solve;
        none for the identity covariance). Works eagerly and inside a tf.function."""
        counts = tf.reshape(self.counts, [-1])
        total = tf.maximum(tf.reduce_sum(counts), 1.0)  # no data yet: every group stays empty
        features = self.sums.shape[-1]
        means = tf.reshape(self.sums, [-1, features]) / tf.maximum(counts, 1.0)[:, None]
        if self.second_moment is None:
            self._set_discriminant(means, means, counts)
            return
        # Sigma_lambda built in one M x M buffer (no identity matrices, no scaled copies):
        # at M = 2048 each float64 copy is 34 MB, and the plain formula's temporaries
        # raised the peak RSS of a refresh by ~140 MiB (now ~40 MiB).
        weighted = means * tf.sqrt(counts)[:, None]  # sum_g n_g mu_g mu_g^T = weighted^T weighted
        variances = (tf.linalg.diag_part(self.second_moment) - tf.reduce_sum(weighted * weighted, axis=0)) / total
        mean_variance = tf.reduce_sum(variances) / features
        covariance = (self.second_moment - tf.matmul(weighted, weighted, transpose_a=True)) * (
            (1.0 - self.shrinkage) / total)
        # The diagonal: shrinkage toward the mean variance, and a tiny ridge so that a
        # constant input pixel (zero variance) with no shrinkage stays solvable.
        ridge = self.shrinkage * mean_variance + 1e-9 * tf.maximum(mean_variance, 1e-12)
        covariance = tf.linalg.set_diag(covariance, (1.0 - self.shrinkage) * variances + ridge)
        chol = tf.linalg.cholesky(covariance)
        self._set_discriminant(tf.transpose(tf.linalg.cholesky_solve(chol, tf.transpose(means))), means, counts)

    def _set_discriminant(self, kernel, means, counts):
        """kernel = mu^T P per group; bias = -1/2 mu^T P mu; empty groups score -1e9."""
        bias = -0.5 * tf.reduce_sum(kernel * means, axis=-1)
        bias = tf.where(counts > 0, bias, tf.constant(EMPTY_GROUP_SCORE, tf.float64))
        kernel = tf.where(counts[:, None] > 0, kernel, tf.zeros_like(kernel))
        self.kernel.assign(tf.cast(tf.reshape(kernel, self.kernel.shape), self.kernel.dtype))
        self.bias.assign(tf.cast(tf.reshape(bias, self.bias.shape), self.bias.dtype))

    def group_scores(self, x):
        """(batch, max_tasks, classes) g_{s,c}(x); groups without data score -1e9."""
        return tf.einsum("bd,tcd->btc", self.transform(x), self.kernel) + self.bias

    def call(self, x):
        """(batch, max_tasks) engram scores: the best group score of each engram."""
        return tf.reduce_max(self.group_scores(x), axis=-1)

    def observed_tasks(self):
        """A (max_tasks,) bool tensor: which engrams have statistics."""
        return tf.reduce_sum(self.counts, axis=-1) > 0

    def memory_bits(self):
        """`(inference, statistics)`: the bits this layer needs to score inputs, and the
        bits of the statistics it keeps only to learn further tasks.

        Inference: R = scale * signs at 1 bit per entry plus one float32 scale (no
        multiplications: x R adds and subtracts inputs), the float32 `kernel` and
        `bias`. Statistics: `counts`, `sums` and `second_moment` at their own
        precision (float64). Larq's `ModelProfile` knows neither and would count
        every one of these weights at 32 bits.
        """
        inference = sum(int(tf.size(v)) * 32 for v in (self.kernel, self.bias))
        if self.projection is not None:
            inference += int(tf.size(self.projection)) + 32
        statistics = sum(int(tf.size(v)) * 8 * v.dtype.size
                         for v in (self.counts, self.sums, self.second_moment) if v is not None)
        return inference, statistics

    def get_config(self):
        return {**super().get_config(), "max_tasks": self.max_tasks,
                "num_classes": self.num_classes, "features": self.features,
                "shrinkage": self.shrinkage, "seed": self.seed, "covariance": self.covariance}


class _RandomSigns(tf.keras.initializers.Initializer):
    """scale * sign(N(0, 1)) from a seeded stateless draw: the same R for a seed on
    every run and device."""

    def __init__(self, seed, scale):
        self.seed, self.scale = int(seed), float(scale)

    def __call__(self, shape, dtype=None, **kwargs):
        draws = tf.random.stateless_normal(shape, seed=[self.seed, 7919])
        return tf.cast(tf.sign(draws) * self.scale, dtype or tf.float32)

    def get_config(self):
        return {"seed": self.seed, "scale": self.scale}
