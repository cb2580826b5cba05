r"""Task inference from input statistics: which engram should answer an input.

This is this package's own contribution: the engram paper does not say how an engram is
chosen without a task id. `InputDiscriminant` is a streaming linear discriminant
(Hayes & Kanan 2020's streaming LDA, applied to tasks) over fixed random features of
the inputs, for every (engram, class) group an engram was trained on:

```
f(x)          = relu(x R),  R in {-1, +1}^{D x M} / sqrt(D), seeded and never trained
n_g, mu_g     = count and mean feature of group g = (engram s, class c)
Sigma         = sum_g sum_{x in g} (f - mu_g)(f - mu_g)^T / sum_g n_g  shared within-group covariance
Sigma_lambda  = (1 - lambda) Sigma + lambda (tr Sigma / M) I           shrinkage toward the mean variance
P             = Sigma_lambda^{-1}
g_{s,c}(x)    = mu_{s,c}^T P f(x) - 1/2 mu_{s,c}^T P mu_{s,c}          Gaussian log-likelihood + const
score_s(x)    = max_{c trained by engram s} g_{s,c}(x)
```

`EngramModel` in "infer" mode (`confidence="input_lda"`, the default) lets the engram
with the highest score predict, among the classes it was trained on.

Scoring every group costs K C M multiply-adds per input for K engrams and C classes,
so routing grows with the task sequence. With a `shortlist` of k engrams, an input is
first scored against each engram's mean group (the groups are linear in f, so their mean
is one more linear score), and only the k best engrams' groups are scored:

```
a_s(x)        = (1 / |C_s|) sum_{c in C_s} g_{s,c}(x) = kbar_s^T f(x) + bbar_s    C_s: engram s's classes with data
S(x)          = the k engrams with the highest a_s(x)   (every engram while K <= k)
s*(x)         = argmax_{s in S(x)} score_s(x)
```

K M + k C M multiply-adds instead of K C M: at M = 768, C = 10, k = 16 the groups'
part grows by M per engram instead of C M (`scoring_multiply_adds`). Where the engrams'
inputs differ as a whole (a permutation per task) the right engram's mean group stands
out; where tasks share their inputs and differ in labels (class-IL), a_s is a coarser
cue, so S(x) is only used beyond k engrams.

With `class_covariance="task"` the class evidence inside the chosen engram s* comes from
the task's own covariance, frozen when its data was seen (the routing stays as above):

```
Sigma_s       = sum_{c in s} sum_{x in (s, c)} (f - mu_{s,c})(f - mu_{s,c})^T / n_s   task s's within-class covariance
P_s           = ((1 - lambda) Sigma_s + lambda (tr Sigma_s / M) I)^{-1}
h_{s,c}(x)    = mu_{s,c}^T P_s f(x) - 1/2 mu_{s,c}^T P_s mu_{s,c}
```

One covariance shared by many tasks averages their different feature correlations
(permuted inputs give each task its own), so the shared discriminant's class evidence
gets worse as tasks are added (Permuted MNIST, M = 1280, validation: 94.1 % on the first
task alone, 87.4 % over 50); h keeps each task's. It costs C M + C floats per task and,
while a task is observed, a second packed M x M scatter. With
`features=None` the discriminant works on the raw inputs (f(x) = x).

Why fixed features of the inputs: they are the one representation that later engrams
cannot change, so statistics taken when a task is seen stay exact for ever; they need
no replay (only sums: M (M + 1) / 2 + groups x M numbers) and cannot forget; one covariance puts
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
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_choice, check_positive_int
from larq_engrams.capacity import add_engram_rows_weight, grow_rows, rows_of
from larq_engrams.protocol import variable_bytes
from larq_engrams.subnetwork import StackedEngramSubnetworks
from larq_engrams.task_inputs import split_task_inputs

__all__ = ["ConvGeometry", "EngramTaskInference", "FEATURE_MAPS", "InputDiscriminant", "conv_image_shape",
           "scoring_multiply_adds",
           "resolve_feature_map", "features_within_budget", "MAX_FEATURES", "DEFAULT_CONV", "DEFAULT_FEATURES", "DEFAULT_PATCH_FLOOR",
           "check_patch_floor", "DEFAULT_SHRINKAGE",
           "ROUTER_BUDGET", "CLASS_COVARIANCES", "DEFAULT_SHORTLIST",
           "EMPTY_GROUP_SCORE", "floored_log_softmax", "pack_symmetric", "packed_symmetric_shape", "sign_bytes", "unpack_sign_bits",
           "unpack_symmetric"]

# The packed M x M float32 scatter: 4096 features take 34 MB (and a refresh's float64 solve 134 MB more).
MAX_FEATURES = 4096
# The router's defaults (`EngramModel`'s lda_features and lda_shrinkage), chosen on
# validation data (see `InputDiscriminant`); the router-alone baselines follow them.
DEFAULT_FEATURES = 2048
DEFAULT_CONV = (5, 4)  # the convolutional map's filter size k and pooling p (chosen on validation: results/issue43)
DEFAULT_PATCH_FLOOR = 0.01  # the convolutional map's contrast floor eps (`ConvGeometry`; chosen on validation: results/issue43)
DEFAULT_SHRINKAGE = 0.01
# The shortlist k the methods give a long sequence's router (`methods.router_shortlist`),
# chosen on validation: results/issue44/validation/shortlist.
DEFAULT_SHORTLIST = 16
CLASS_COVARIANCES = ("shared", "task")  # whose covariance gives the class evidence inside an engram
# The router's state (learn + predict) that a long task sequence's default M keeps within
# at its end (issue 44: router and engrams <= 16 MiB at 100 tasks; `features_within_budget`).
ROUTER_BUDGET = 15 * 2 ** 20
EMPTY_GROUP_SCORE = -1e9  # the score of an (engram, class) group that has no data
FEATURE_MAPS = ("dense", "conv")  # relu(x R) on flat inputs; or random filters over images


def scoring_multiply_adds(engrams, classes, features, shortlist=None, task_evidence=False):
    """Multiply-adds to score one input's features f(x) (M of them) against the groups
    of `engrams`, each with data for `classes` classes: K C M for every group, or
    K M + k C M with a `shortlist` of k < K (module docstring); plus C M for the chosen
    task's own class evidence. (Computing f(x) adds D M for the dense map.)"""
    groups = engrams * classes * features
    if shortlist is not None and engrams > shortlist:
        groups = engrams * features + shortlist * classes * features
    return groups + (classes * features if task_evidence else 0)


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

    State (non-trainable weights, saved with the model): R's sign bits
    `projection_bits` (D, M / 32) int32, and in float32 `counts` (tasks, classes),
    `sums` (tasks, classes, M) and the within-group `scatter`, stored once as a
    symmetric matrix (`pack_symmetric`: (M + 1, M / 2)), from which `refresh()`
    derives the discriminant `kernel` (tasks, classes, M) and `bias` (tasks, classes).
    At M = 2048, D = 784, 5 tasks and 10 classes they take 8.98 MiB, whatever the
    network's width: R 0.19 MiB, the scatter 8.0 MiB, sums and kernel 0.39 MiB each.

    Args:
        max_tasks: how many engrams.
        num_classes: the model's outputs.
        features: M, the number of random ReLU features; None for the raw inputs.
        shrinkage: lambda in [0, 1].
        seed: seeds R.
        covariance: "shared" (the discriminant above) or "identity" (P = I: nearest
            class mean, g_{s,c}(x) = mu^T f(x) - 1/2 |mu|^2; no M x M statistics).
        feature_map, image_shape: "dense" (relu(x R)) or "conv" (`ConvGeometry`, on
            inputs that are images of `image_shape`).
        conv_kernel_size, conv_pool: the convolutional map's k and p.
        conv_patch_floor: its contrast floor eps (`ConvGeometry`); None: the patches
            are not normalized (the map before it was chosen).
        class_covariance: "shared" (the class evidence inside an engram is its groups'
            g_{s,c}) or "task" (h_{s,c}, from the task's own covariance; see the module
            docstring). "task" adds `class_kernel` (tasks, classes, M), `class_bias`
            and, for the task being observed, `task_scatter` (packed like `scatter`),
            `scatter_task` and `scatter_count`.
        shortlist: k, the engrams whose groups are scored for an input after every
            engram's mean group (`route`); None scores every group.

    Defaults M = 2048, lambda = 0.01 were chosen on validation data (Split MNIST and
    Split Fashion-MNIST class-IL, 1024-1024, seed 0; task inference with M = 1024 /
    2048: 95.6 / 95.6 % and 85.9 / 87.3 %; raw pixels, lambda = 0.1 / 0.01: 89.9 / 88.9 %
    and 82.7 / 83.0 %; `experiments/task_inference_study.py`).
    """

    def __init__(self, max_tasks, num_classes, features=DEFAULT_FEATURES, shrinkage=DEFAULT_SHRINKAGE, seed=0,
                 covariance="shared", feature_map="dense", image_shape=None, conv_kernel_size=DEFAULT_CONV[0],
                 conv_pool=DEFAULT_CONV[1], class_covariance="shared", shortlist=None,
                 conv_patch_floor=DEFAULT_PATCH_FLOOR, **kwargs):
        super().__init__(**kwargs)
        self.shortlist = check_positive_int("shortlist", shortlist, owner="InputDiscriminant", allow_none=True)
        self.covariance = check_choice("covariance", covariance, ("shared", "identity"), owner="InputDiscriminant")
        self.class_covariance = check_choice("class_covariance", class_covariance, CLASS_COVARIANCES,
                                             owner="InputDiscriminant")
        if self.class_covariance == "task" and self.covariance != "shared":
            raise ValueError("InputDiscriminant: class_covariance='task' needs covariance='shared' (a task's "
                             "covariance is estimated like the shared one).")
        self.feature_map = check_choice("feature_map", feature_map, FEATURE_MAPS, owner="InputDiscriminant")
        self.image_shape = None if image_shape is None else conv_image_shape(image_shape)
        if self.feature_map == "conv" and (self.image_shape is None or features is None):
            raise ValueError("InputDiscriminant: feature_map='conv' needs the inputs' `image_shape` (H, W) or "
                             "(H, W, C) and a number of `features`.")
        self._max_tasks = int(max_tasks)
        self.num_classes = int(num_classes)
        self.features = check_positive_int("features", features, owner="InputDiscriminant", allow_none=True)
        if not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"InputDiscriminant: `shrinkage` must be in [0, 1], got {shrinkage!r}.")
        self.shrinkage = float(shrinkage)
        self.seed = int(seed)
        self.conv_kernel_size = check_positive_int("conv_kernel_size", conv_kernel_size, owner="InputDiscriminant")
        self.conv_pool = check_positive_int("conv_pool", conv_pool, owner="InputDiscriminant")
        self.conv_patch_floor = check_patch_floor(conv_patch_floor)

    def build(self, input_shape):
        inputs = int(input_shape[-1])
        features = inputs if self.features is None else self.features
        self.conv_geometry = None
        if self.feature_map == "conv":
            self.conv_geometry = ConvGeometry.for_budget(self.image_shape, features, self.conv_kernel_size,
                                                         self.conv_pool, patch_floor=self.conv_patch_floor)
            if int(np.prod(self.image_shape)) != inputs:
                raise ValueError(f"InputDiscriminant: image_shape {self.image_shape} holds "
                                 f"{int(np.prod(self.image_shape))} values, the inputs {inputs}.")
            features = self.conv_geometry.features
        if features > MAX_FEATURES and self.covariance == "shared":
            raise ValueError(
                f"InputDiscriminant: {features} features need a {features}x{features} "
                f"covariance; at most {MAX_FEATURES} are supported. Use fewer random "
                f"features (`features`), or another confidence (e.g. 'excitation')."
            )
        tasks, classes = self.max_tasks, self.num_classes
        state = dict(trainable=False, initializer="zeros",
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.projection_bits = None
        if self.conv_geometry is not None:
            # The filters' signs, (k k C) x F, 32 to an int32 word.
            rows, filters = self.conv_geometry.patch_size, self.conv_geometry.filters
            self.projection_bits = self.add_weight(
                "projection_bits", (rows, -(-filters // 32)), dtype=tf.int32,
                **{**state, "initializer": _RandomSignBits(self.seed, filters)})
            self.projection_scale = 1.0 / rows ** 0.5
        elif self.features is not None:
            # R's signs, 32 to an int32 word (1 = negative): D x M / 8 bytes.
            self.projection_bits = self.add_weight(
                "projection_bits", (inputs, -(-features // 32)), dtype=tf.int32,
                **{**state, "initializer": _RandomSignBits(self.seed, features)})
            self.projection_scale = 1.0 / inputs ** 0.5
        # One row of groups per engram: they grow with the engram bank (`grow`).
        self.counts = add_engram_rows_weight(self, "counts", tasks, (classes,), **state)
        self.sums = add_engram_rows_weight(self, "sums", tasks, (classes, features), **state)
        self.scatter = None
        if self.covariance == "shared":
            self.scatter = self.add_weight("scatter", packed_symmetric_shape(features), **state)
        self.kernel = add_engram_rows_weight(self, "kernel", tasks, (classes, features), **state)
        empty = {**state, "initializer": tf.keras.initializers.Constant(EMPTY_GROUP_SCORE)}
        self.bias = add_engram_rows_weight(self, "bias", tasks, (classes,), **empty)
        self.task_scatter = self.class_kernel = self.class_bias = None
        if self.class_covariance == "task":
            self.task_scatter = self.add_weight("task_scatter", packed_symmetric_shape(features), **state)
            self.scatter_task = self.add_weight("scatter_task", (), dtype=tf.int32, **{
                **state, "initializer": tf.keras.initializers.Constant(-1)})
            self.scatter_count = self.add_weight("scatter_count", (), **state)
            self.class_kernel = add_engram_rows_weight(self, "class_kernel", tasks, (classes, features), **state)
            self.class_bias = add_engram_rows_weight(self, "class_bias", tasks, (classes,), **empty)
        super().build(input_shape)

    @property
    def max_tasks(self):
        """The engrams it has groups for (rows; `grow` adds more); while a graph is
        traced, the last count read eagerly."""
        if self.built and tf.executing_eagerly():
            self._max_tasks = rows_of(self.counts)
        return self._max_tasks

    def grow(self, max_tasks):
        """Groups for engrams up to `max_tasks`, empty (their score -1e9 until observed)."""
        for variable in (self.counts, self.sums, self.kernel, self.class_kernel):
            if variable is not None:
                grow_rows(variable, int(max_tasks))
        for variable in (self.bias, self.class_bias):
            if variable is not None:
                grow_rows(variable, int(max_tasks), fill=EMPTY_GROUP_SCORE)

    @property
    def num_features(self):
        """M: the width of f(x)."""
        return int(self.sums.shape[-1])

    def projection(self):
        """R = scale * signs, float32, unpacked from its sign bits: (D, M) for the dense
        map, the (k k C, F) filters for the convolutional one (None without random
        features)."""
        if self.projection_bits is None:
            return None
        columns = self.num_features if self.conv_geometry is None else self.conv_geometry.filters
        return unpack_sign_bits(self.projection_bits, columns) * self.projection_scale

    def transform(self, x):
        """f(x): relu(x R); with the convolutional map, pool(relu(conv(x, R))); or x
        itself without random features."""
        x = tf.cast(x, self.kernel.dtype)
        if self.projection_bits is None:
            return x
        if self.conv_geometry is not None:
            return self.conv_geometry.features_of(x, self.projection())
        return tf.nn.relu(tf.matmul(x, self.projection()))

    def observe(self, x, y, task):
        r"""Adds a batch of flattened inputs `x` (their features) with labels `y` to engram
        `task`'s groups (in-graph; call `refresh()` after the last batch).

        The within-group scatter is merged batch by batch (Chan, Golub & LeVeque 1979):
        with the batch's group counts m_g, means nu_g and scatter about them W_b,

        ```
        W <- W + W_b + sum_g (n_g m_g / (n_g + m_g)) (mu_g - nu_g)(mu_g - nu_g)^T
        ```

        so the statistics never subtract two large second moments, and float32 holds
        them as well as float64 held the raw sums of f f^T. With class_covariance="task"
        the same increment goes to `task_scatter`, which starts again from zero when
        `task` differs from the task it holds, once that task's evidence is computed (a
        task observed again after another gets its covariance from its new data only).
        """
        x = self.transform(x)
        onehot = tf.one_hot(tf.cast(y, tf.int32), self.num_classes, dtype=x.dtype)
        row = tf.one_hot(tf.cast(task, tf.int32), tf.shape(self.counts)[0], dtype=x.dtype)
        batch_counts = tf.reduce_sum(onehot, axis=0)  # m_g
        batch_sums = tf.matmul(onehot, x, transpose_a=True)  # m_g nu_g
        if self.scatter is not None:
            counts = tf.tensordot(row, self.counts, 1)  # n_g of this task's groups
            means = tf.tensordot(row, self.sums, 1) / tf.maximum(counts, 1.0)[:, None]
            batch_means = batch_sums / tf.maximum(batch_counts, 1.0)[:, None]
            centered = x - tf.matmul(onehot, batch_means)
            weight = counts * batch_counts / tf.maximum(counts + batch_counts, 1.0)
            shift = (means - batch_means) * tf.sqrt(weight)[:, None]
            increment = pack_symmetric(
                tf.matmul(centered, centered, transpose_a=True) + tf.matmul(shift, shift, transpose_a=True))
            self.scatter.assign_add(increment)
            if self.task_scatter is not None:
                task = tf.cast(task, tf.int32)
                # A new task starts: the one held gets its evidence first (a stream may not refresh between).
                tf.cond(tf.logical_and(tf.not_equal(task, self.scatter_task), self._holds_task()),
                        self._refresh_task_evidence, lambda: tf.constant(False))
                keep = tf.cast(tf.equal(task, self.scatter_task), increment.dtype)  # 0: a new task starts
                self.task_scatter.assign(keep * self.task_scatter + increment)
                self.scatter_count.assign(keep * self.scatter_count + tf.reduce_sum(batch_counts))
                self.scatter_task.assign(task)
        self.counts.assign_add(row[:, None] * batch_counts[None, :])
        self.sums.assign_add(row[:, None, None] * batch_sums[None])

    def refresh(self):
        """Recomputes the discriminant from the statistics (one M x M Cholesky solve, in
        float64; none for the identity covariance; with class_covariance="task" a second
        one for the task being observed). Works eagerly and inside a tf.function."""
        counts = tf.cast(tf.reshape(self.counts, [-1]), tf.float64)
        features = self.num_features
        means = tf.cast(tf.reshape(self.sums, [-1, features]), tf.float64) / tf.maximum(counts, 1.0)[:, None]
        if self.scatter is None:
            self._set_discriminant(means, means, counts)
            return
        self._set_discriminant(self._solve(self.scatter, tf.reduce_sum(counts), means), means, counts)
        if self.task_scatter is not None:
            tf.cond(self._holds_task(), self._refresh_task_evidence, lambda: tf.constant(False))

    def _holds_task(self):
        return tf.logical_and(self.scatter_task >= 0, self.scatter_count > 0)

    def _refresh_task_evidence(self):
        """class_kernel / class_bias of the task in `task_scatter`, from its own covariance."""
        task = self.scatter_task
        counts = tf.cast(tf.gather(self.counts, task), tf.float64)
        means = tf.cast(tf.gather(self.sums, task), tf.float64) / tf.maximum(counts, 1.0)[:, None]
        kernel = self._solve(self.task_scatter, tf.cast(self.scatter_count, tf.float64), means)
        bias = tf.where(counts > 0, -0.5 * tf.reduce_sum(kernel * means, axis=-1), EMPTY_GROUP_SCORE)
        kernel = tf.where(counts[:, None] > 0, kernel, tf.zeros_like(kernel))
        self.class_kernel.scatter_nd_update([[task]], tf.cast(kernel, self.class_kernel.dtype)[None])
        self.class_bias.scatter_nd_update([[task]], tf.cast(bias, self.class_bias.dtype)[None])
        return tf.constant(True)

    def _solve(self, packed_scatter, total, means):
        """mu^T P for each row of `means` (float64), P the inverse of the shrunk
        covariance of `packed_scatter` over `total` examples."""
        features = self.num_features
        total = tf.maximum(tf.cast(total, tf.float64), 1.0)  # no data yet: every group stays empty
        # Sigma_lambda from the unpacked scatter, scaled once (no identity matrix): the
        # float64 M x M copies live only during this refresh.
        scatter = tf.cast(unpack_symmetric(packed_scatter, features), tf.float64)
        variances = tf.linalg.diag_part(scatter) / total
        mean_variance = tf.reduce_sum(variances) / features
        # The diagonal: shrinkage toward the mean variance, and a tiny ridge so that a
        # constant input pixel (zero variance) with no shrinkage stays solvable.
        ridge = self.shrinkage * mean_variance + 1e-9 * tf.maximum(mean_variance, 1e-12)
        covariance = tf.linalg.set_diag(scatter * ((1.0 - self.shrinkage) / total),
                                        (1.0 - self.shrinkage) * variances + ridge)
        chol = tf.linalg.cholesky(covariance)
        return tf.transpose(tf.linalg.cholesky_solve(chol, tf.transpose(means)))

    def _set_discriminant(self, kernel, means, counts):
        """kernel = mu^T P per group; bias = -1/2 mu^T P mu; empty groups score -1e9."""
        bias = -0.5 * tf.reduce_sum(kernel * means, axis=-1)
        bias = tf.where(counts > 0, bias, tf.constant(EMPTY_GROUP_SCORE, tf.float64))
        kernel = tf.where(counts[:, None] > 0, kernel, tf.zeros_like(kernel))
        self.kernel.assign(tf.cast(tf.reshape(kernel, tf.shape(self.kernel)), self.kernel.dtype))
        self.bias.assign(tf.cast(tf.reshape(bias, tf.shape(self.bias)), self.bias.dtype))

    def group_scores(self, x):
        """(batch, max_tasks, classes) g_{s,c}(x); groups without data score -1e9."""
        return self.feature_group_scores(self.transform(x))

    def feature_group_scores(self, features):
        """`group_scores` of features f(x) already computed (`transform`)."""
        return tf.einsum("bd,tcd->btc", features, self.kernel) + self.bias

    def class_evidence(self, features, tasks):
        """(batch, classes): the class evidence inside engram tasks[i] for sample i, from
        its features f(x): h_{s,c} with class_covariance="task", else its groups' g_{s,c}."""
        tasks = tf.cast(tasks, tf.int32)
        if self.class_kernel is None:
            return tf.gather(self.feature_group_scores(features), tasks, batch_dims=1)
        kernel = tf.gather(self.class_kernel, tasks)  # (batch, classes, M): one task's C rows per sample
        return tf.einsum("bd,bcd->bc", features, kernel) + tf.gather(self.class_bias, tasks)

    def engram_means(self, tasks=None):
        """`(kbar, bbar)`: each engram's mean group over its classes with data, (K, M)
        and (K,), for the engram rows `tasks` (all by default); -1e9 for one without data."""
        kernel, bias = self.kernel, self.bias
        if tasks is not None:
            kernel, bias = tf.gather(kernel, tasks), tf.gather(bias, tasks)
        has = tf.cast(bias > EMPTY_GROUP_SCORE / 2, kernel.dtype)  # (K, C)
        count = tf.reduce_sum(has, axis=-1)
        mean_kernel = tf.einsum("tc,tcm->tm", has, kernel) / tf.maximum(count, 1.0)[:, None]
        mean_bias = tf.where(count > 0, tf.reduce_sum(has * bias, axis=-1) / tf.maximum(count, 1.0),
                             tf.constant(EMPTY_GROUP_SCORE, kernel.dtype))
        return mean_kernel, mean_bias

    def shortlisted(self, features, tasks=None):
        """(batch, K) bool: S(x), the engrams among the rows `tasks` (all by default)
        whose groups compete for each input, from its features f(x): the k with the
        best mean group a_s(x) (module docstring); None without a `shortlist`."""
        if self.shortlist is None:
            return None
        mean_kernel, mean_bias = self.engram_means(tasks)
        means = tf.matmul(features, mean_kernel, transpose_b=True) + mean_bias  # a_s(x)
        kth = tf.math.top_k(means, tf.minimum(self.shortlist, tf.shape(means)[1])).values[:, -1:]
        return means >= kth

    def route(self, features, scores, tasks=None):
        """(batch,) int32: s*(x), the index among the engram rows `tasks` (all by
        default) of the engram that answers each input, from its features and the
        engrams' scores (batch, K) (each one's best group), within `shortlisted`."""
        keep = self.shortlisted(features, tasks)
        if keep is not None:
            scores = tf.where(keep, scores, tf.constant(EMPTY_GROUP_SCORE, scores.dtype))
        return tf.argmax(scores, axis=1, output_type=tf.int32)

    def predict_classes(self, x):
        """(batch, classes): the router alone. "shared": each class's best group over
        the tasks (the shortlisted ones, with a `shortlist`); "task": the routed task's
        own class evidence h."""
        features = self.transform(x)
        groups = self.feature_group_scores(features)
        keep = self.shortlisted(features)
        if keep is not None:
            groups = tf.where(keep[:, :, None], groups, tf.constant(EMPTY_GROUP_SCORE, groups.dtype))
        if self.class_kernel is None:
            return tf.reduce_max(groups, axis=1)
        best = tf.argmax(tf.reduce_max(groups, axis=-1), axis=1, output_type=tf.int32)
        return self.class_evidence(features, best)

    def call(self, x):
        """(batch, max_tasks) engram scores: the best group score of each engram."""
        return tf.reduce_max(self.group_scores(x), axis=-1)

    def observed_tasks(self):
        """A (max_tasks,) bool tensor: which engrams have statistics."""
        return tf.reduce_sum(self.counts, axis=-1) > 0

    def memory_bits(self):
        """`(inference, statistics)`: the bits this layer holds to score inputs, and the
        bits of the statistics it keeps only to learn further tasks, as held in memory.

        Inference: R's sign bits (1 bit per entry; its scale is a constant of D), the
        float32 `kernel` and `bias` (and `class_kernel`, `class_bias`). Statistics:
        `counts`, `sums` and the packed `scatter` (M (M + 1) / 2 numbers, plus M / 2
        padding for odd M; and `task_scatter`), float32.
        Larq's `ModelProfile` knows none of these and would count every weight at 32 bits.
        """
        inference = [v for v in (self.kernel, self.bias, self.class_kernel, self.class_bias, self.projection_bits)
                     if v is not None]
        statistics = [v for v in (self.counts, self.sums, self.scatter, self.task_scatter) if v is not None]
        return 8 * variable_bytes(inference), 8 * variable_bytes(statistics)

    def state_bytes(self):
        """The continual protocol's `(learn, predict)` bytes of a model built on this
        discriminant: its statistics, and what scores inputs (`memory_bits`)."""
        inference, statistics = self.memory_bits()
        return statistics // 8, inference // 8

    def get_config(self):
        return {**super().get_config(), "max_tasks": self.max_tasks,
                "num_classes": self.num_classes, "features": self.features,
                "shrinkage": self.shrinkage, "seed": self.seed, "covariance": self.covariance,
                "feature_map": self.feature_map,
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "conv_kernel_size": self.conv_kernel_size, "conv_pool": self.conv_pool,
                "conv_patch_floor": self.conv_patch_floor,
                "class_covariance": self.class_covariance, "shortlist": self.shortlist}

    @classmethod
    def from_config(cls, config):
        # Saved before the convolutional map normalized its patches.
        return cls(**{"conv_patch_floor": None, **config})


def features_within_budget(max_tasks, num_classes, inputs, budget=ROUTER_BUDGET, feature_map="dense",
                           image_shape=None, step=256, class_covariance="shared"):
    """The largest M <= DEFAULT_FEATURES, a multiple of `step`, whose router with room for
    `max_tasks` tasks keeps at most `budget` bytes (`state_bytes`, learn + predict); `step`
    if none does. Its bytes grow as M^2 / 2 (the scatter) + 2 T C M (sums and kernel)
    floats (with class_covariance="task" M^2 + 3 T C M), so a long sequence trades
    features for tasks (on validation, more features score higher: results/issue44)."""
    for features in range(DEFAULT_FEATURES, step - 1, -step):
        router = InputDiscriminant(max_tasks, num_classes, features, feature_map=feature_map, image_shape=image_shape,
                                   class_covariance=class_covariance)
        router.build((None, int(inputs)))
        if sum(router.state_bytes()) <= budget:
            return features
    return step


def resolve_feature_map(choice, image_shape):
    """`(feature_map, image_shape)` for a router: "auto" is "conv" where there is an image
    shape (pixels in their places) and "dense" elsewhere; "conv" without one is a
    one-line ValueError. The image shape is kept only for "conv"."""
    choice = check_choice("router_features", choice, (*FEATURE_MAPS, "auto"))
    if choice == "auto":
        choice = "dense" if image_shape is None else "conv"
    if choice == "conv" and image_shape is None:
        raise ValueError("router_features='conv' needs image inputs: give their `image_shape` (H, W) for flattened "
                         "images whose pixels keep their places (not permuted), or use 'dense' or 'auto'.")
    return choice, (tuple(int(v) for v in image_shape) if choice == "conv" else None)


def conv_image_shape(shape):
    """(H, W, C) from an input shape (H, W) or (H, W, C); a one-line ValueError else."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"the convolutional feature map needs images, (H, W) or (H, W, C); got inputs of shape "
                         f"{shape}. Use feature_map='dense' for flat inputs.")
    return shape


class ConvGeometry:
    r"""The convolutional random feature map (Coates & Ng 2011, with fixed random
    filters instead of learned ones): F random sign filters of k x k x C, each slid over
    the image (valid positions), ReLU, then p x p average pooling. With a `patch_floor`
    eps each k x k x C patch u is first normalized for contrast (Coates & Ng's
    preprocessing, per patch):

    ```
    n(u)  = (u - mean(u)) / sqrt(var(u) + eps)                  mean and var over u's k k C values
    f(x)  = flatten(avgpool_p(relu(conv_k(n(x), R))))           R in {-1, +1}^{k k C x F} / sqrt(k k C)
    M     = F * floor((H - k + 1) / p) * floor((W - k + 1) / p)
    ```

    computed as (u R - mean(u) 1^T R) / sqrt(var(u) + eps), with the means from one more
    convolution. Unlike relu(x R) over the flat pixels, each feature sees one
    neighbourhood, and the pooling keeps its response when the pattern moves by a few
    pixels; the normalization makes a filter's response depend on the shape of the
    patch, not its brightness or contrast (eps, in the squared units of the inputs,
    keeps flat patches from amplifying noise; a flat patch gives 0). At 28 x 28, k = 5,
    p = 4: 36 pooled positions, so a budget of 2048 features gives F = 56 filters and
    M = 2016, from 1,400 sign bits instead of 784 x 2048.

    The normalization and eps = 0.01 (on pixels scaled to [0, 1]) were chosen on
    validation (the router alone, class-IL, 3 seeds: Split Fashion-MNIST 90.2 against
    87.9 % without, Split MNIST 98.3 against 98.2 %; eps = 0.1 / 1: 89.8 / 89.4 % and
    98.5 / 98.3 %, the best mean of the two at 0.01; results/issue43).
    """

    def __init__(self, image_shape, filters, kernel_size=DEFAULT_CONV[0], pool=DEFAULT_CONV[1], patch_floor=None):
        self.image_shape = conv_image_shape(image_shape)
        self.filters, self.kernel_size, self.pool = int(filters), int(kernel_size), int(pool)
        self.patch_floor = check_patch_floor(patch_floor)
        height, width, channels = self.image_shape
        self.grid = ((height - self.kernel_size + 1) // self.pool, (width - self.kernel_size + 1) // self.pool)
        if min(self.grid) < 1 or self.filters < 1:
            raise ValueError(f"ConvGeometry: {self.kernel_size} x {self.kernel_size} filters pooled by {self.pool} "
                             f"leave no feature on a {height} x {width} image.")
        self.patch_size = self.kernel_size * self.kernel_size * channels
        self.features = self.filters * self.grid[0] * self.grid[1]

    @classmethod
    def for_budget(cls, image_shape, features, kernel_size=DEFAULT_CONV[0], pool=DEFAULT_CONV[1], min_filters=32,
                   patch_floor=None):
        """As many filters as fit in `features`; on large images the pooling doubles
        until at least `min_filters` fit (or one pooled position is left), so that a
        budget is not spent on a few filters at many positions."""
        while True:
            positions = cls(image_shape, 1, kernel_size, pool).features
            if int(features) // positions >= min_filters or positions == 1:
                return cls(image_shape, max(1, int(features) // positions), kernel_size, pool, patch_floor)
            pool *= 2

    def features_of(self, x, filters):
        """f(x) for flat inputs `x` (batch, H W C) and `filters` (k k C, F)."""
        height, width, channels = self.image_shape
        k, p = self.kernel_size, self.pool
        images = tf.reshape(x, [-1, height, width, channels])
        z = tf.nn.conv2d(images, tf.reshape(filters, [k, k, channels, self.filters]), 1, "VALID")
        if self.patch_floor is not None:  # n(u) R = (u R - mean(u) 1^T R) / sqrt(var(u) + eps)
            average = tf.fill([k, k, channels, 1], tf.constant(1.0 / self.patch_size, x.dtype))
            mean = tf.nn.conv2d(images, average, 1, "VALID")
            variance = tf.nn.relu(tf.nn.conv2d(images * images, average, 1, "VALID") - mean * mean)
            z = (z - mean * tf.reduce_sum(filters, axis=0)) * tf.math.rsqrt(variance + self.patch_floor)
        z = tf.nn.relu(z)
        z = z[:, : self.grid[0] * p, : self.grid[1] * p]  # whole pooling windows only
        return tf.reshape(tf.nn.avg_pool2d(z, p, p, "VALID"), [-1, self.features])


def check_patch_floor(patch_floor):
    """The convolutional map's contrast floor eps as a float > 0, or None (no patch
    normalization); a one-line ValueError otherwise."""
    if patch_floor is None:
        return None
    if not float(patch_floor) > 0.0:
        raise ValueError(f"`patch_floor` must be > 0 (or None: no patch normalization), got {patch_floor!r}.")
    return float(patch_floor)


def packed_symmetric_shape(size):
    """The (M + 1, M / 2) shape that holds a symmetric M x M matrix once (M rounded up
    to even)."""
    half = -(-int(size) // 2)
    return (2 * half + 1, half)


def pack_symmetric(matrix):
    """A symmetric (M, M) matrix stored once, as a (M + 1, M / 2) one (rectangular full
    packed storage; M padded to even with a zero row and column).

    With A = [[A11, A21^T], [A21, A22]] in K x K blocks (K = M / 2): the top (K + 1) x K
    rows hold tril(A11) shifted one row down and triu(A22), which do not overlap; the
    last K rows hold A21. K (K + 1) + K^2 = M (M + 1) / 2 numbers.
    """
    size = int(matrix.shape[-1])
    half = -(-size // 2)
    if 2 * half != size:
        matrix = tf.pad(matrix, [[0, 1], [0, 1]])
    a11, a21, a22 = matrix[:half, :half], matrix[half:, :half], matrix[half:, half:]
    top = (tf.pad(tf.linalg.band_part(a11, -1, 0), [[1, 0], [0, 0]])
           + tf.pad(tf.linalg.band_part(a22, 0, -1), [[0, 1], [0, 0]]))
    return tf.concat([top, a21], axis=0)


def unpack_symmetric(packed, size):
    """The (size, size) matrix of `pack_symmetric`."""
    half = int(packed.shape[-1])
    top, a21 = packed[:half + 1], packed[half + 1:]
    lower, upper = tf.linalg.band_part(top[1:], -1, 0), tf.linalg.band_part(top[:half], 0, -1)
    a11 = lower + tf.transpose(tf.linalg.set_diag(lower, tf.zeros([half], lower.dtype)))
    a22 = upper + tf.transpose(tf.linalg.set_diag(upper, tf.zeros([half], upper.dtype)))
    full = tf.concat([tf.concat([a11, tf.transpose(a21)], axis=1), tf.concat([a21, a22], axis=1)], axis=0)
    return full[:size, :size]


def unpack_sign_bits(words, columns):
    """The +-1 float32 (rows, columns) matrix of sign bits packed 32 to an int32 word along
    the columns, bit j of word k for column 32 k + j, 1 = negative. (int32, not uint8:
    every device and every `tf.distribute` collective takes it.) Read as little-endian
    bytes, a row is `larq_engrams.runtime.pack_signs`' format (`sign_bytes`)."""
    shifts = tf.range(32, dtype=tf.int32)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words[..., None], shifts), 1)
    bits = tf.reshape(bits, [tf.shape(words)[0], -1])[:, :columns]
    return 1.0 - 2.0 * tf.cast(bits, tf.float32)


def sign_bytes(words, columns):
    """The packed sign words as bytes, 8 columns to a byte, little bit order (NumPy)."""
    return np.ascontiguousarray(np.asarray(words).astype("<i4")).view(np.uint8)[:, :-(-columns // 8)]


class _RandomSignBits(tf.keras.initializers.Initializer):
    """The sign bits of a seeded stateless N(0, 1) draw of (D, M): the same R for a seed
    on every run and device, packed 32 to an int32 word (see `unpack_sign_bits`)."""

    def __init__(self, seed, columns):
        self.seed, self.columns = int(seed), int(columns)

    def __call__(self, shape, dtype=None, **kwargs):
        rows, width = shape
        negative = tf.random.stateless_normal((rows, self.columns), seed=[self.seed, 7919]) < 0
        negative = tf.pad(tf.cast(negative, tf.int32), [[0, 0], [0, 32 * width - self.columns]])
        negative = tf.reshape(negative, [rows, width, 32])
        words = tf.zeros([rows, width], tf.int32)
        for bit in range(32):  # OR, not a sum: bit 31 is the sign bit of an int32
            words = tf.bitwise.bitwise_or(words, tf.bitwise.left_shift(negative[..., bit], bit))
        return words

    def get_config(self):
        return {"seed": self.seed, "columns": self.columns}


class EngramTaskInference:
    """An `EngramModel`'s "infer" mode: which engram answers an input, and its output.

    The confidence measure (`model.confidence`) picks one engram per sample among the
    allocated ones: "input_lda" (the router, `InputDiscriminant`: the best group score
    g_{s,c}(x) over the engram's classes), "excitation" (the summed BatchNorm deviation
    of its units), "max_softmax" or "entropy" (of its network's output). With
    "input_lda" the choice needs no network, so only the chosen engram's network runs
    for each sample; the others run every engram's network on the batch (stacked
    sub-networks, or the masked network on a tiled batch). The output is the chosen
    engram's product of experts with the router's class evidence, restricted to the
    engram's classes (`floored_log_softmax`; docs/method.md, section 3). With the
    router's `shortlist`, TensorFlow still scores every group of a batch (one matrix
    product, faster here than a gather per input) and lets only the shortlisted engrams
    compete, so it routes as the runtime and the C export, which score the shortlist only.

    It holds no state of its own: the router's statistics, the engram classes and the
    weights are the model's (saved with it).
    """

    def __init__(self, model):
        self.model = model
        self._observe_step = None

    def observe(self, data, y=None, batch_size=1000, refresh=True, task=None):
        """Adds the inputs of the active engram's task (or of engram `task`'s) to the
        router's statistics (its class sums and the shared second moment), in batches of
        `batch_size`, then refreshes the discriminant (`refresh=False`: not yet, e.g. a
        stream that adds small chunks and refreshes once before it is evaluated). The
        statistics depend on the inputs only, so any time during the task will do."""
        model = self.model
        if model.task_discriminant is None:
            return
        if task is None and model.active_task is None:
            raise RuntimeError("EngramModel: no active task. Call `model.begin_task(t)` first.")
        task = model.engram_layers[0].active_task if task is None else tf.constant(int(task), tf.int32)
        if not isinstance(data, tf.data.Dataset):
            if y is None:
                raise ValueError("observe_task_data: give `y` with array inputs.")
            data = tf.data.Dataset.from_tensor_slices((data, y)).batch(batch_size)
        elif int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                "observe_task_data: the dataset repeats for ever; pass one pass over the "
                "task's training data (e.g. the dataset before `.repeat()`).")
        elif any(spec.shape.rank == 0 for spec in tf.nest.flatten(data.element_spec)):
            raise ValueError("observe_task_data: the dataset yields single examples; pass it batched "
                             "(e.g. `dataset.batch(100)`).")
        else:
            # In batches of `batch_size` whatever the dataset's own: each batch costs an
            # M x M scatter update, which small training batches (e.g. 100) make slow.
            data = data.unbatch().batch(batch_size)
        if self._observe_step is None:
            def observe(x, y, task):
                x, _ = split_task_inputs(x)
                model.task_discriminant.observe(model.flatten(x), y, task)
            self._observe_step = tf.function(observe, reduce_retracing=True)
        for batch in data:
            x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(batch)
            if y is None:
                raise ValueError("observe_task_data: the dataset must yield labels.")
            self._observe_step(x, y, task)
        if refresh:
            model.task_discriminant.refresh()

    def __call__(self, x):
        """`(outputs, chosen engram per sample)` for a batch of inputs."""
        model = self.model
        tasks = list(model.inference_tasks())
        if not tasks:
            raise RuntimeError("EngramModel: 'infer' mode needs at least one allocated engram.")
        x = model.flatten(x)
        confidence = model.confidence
        if confidence == "input_lda":
            # The router alone picks the engram, so only the chosen engram's network
            # runs for each sample: one sub-network per sample instead of K.
            features, groups = self.group_scores(x, tasks, with_features=True)  # (K, batch, classes)
            best = model.task_discriminant.route(features, tf.transpose(tf.reduce_max(groups, axis=-1)), tasks)
            chosen_tasks = tf.gather(tf.constant(tasks, tf.int32), best)
            if model.execution == "sparse":
                # (A SavedModel export gets no cache: it is transient state.)
                chosen = StackedEngramSubnetworks(model, tasks).chosen(x, best, cache=model.inference_block_cache())
            else:
                chosen = model.masked_forward(x, False, chosen_tasks)
        else:
            logits, score = self._every_engram(x, tasks)  # (K, batch, classes), (K, batch)
            best = tf.argmax(score, axis=0, output_type=tf.int32)  # (batch,)
            chosen = tf.gather(tf.transpose(logits, [1, 0, 2]), best, batch_dims=1)
            chosen_tasks = tf.gather(tf.constant(tasks, tf.int32), best)
        poe = confidence == "input_lda" and model.lda_weight > 0
        if not (model.restrict_to_engram_classes or poe):
            return chosen, chosen_tasks  # the chosen engram's own logits
        log_probs = tf.nn.log_softmax(chosen, axis=-1)
        if poe:
            # Product of experts: the network's posterior times the discriminant's
            # posterior over the groups the engram has data for, to the power w.
            discriminant = model.task_discriminant
            if discriminant.class_kernel is None:  # the chosen engram's groups
                lda = tf.gather(tf.transpose(groups, [1, 0, 2]), best, batch_dims=1)
            else:  # its task's own class evidence
                lda = discriminant.class_evidence(features, chosen_tasks)
            lda = tf.cast(lda, chosen.dtype)
            log_probs += model.lda_weight * floored_log_softmax(lda, lda > EMPTY_GROUP_SCORE / 2)
        if not model.restrict_to_engram_classes:
            return tf.nn.log_softmax(log_probs, axis=-1), chosen_tasks
        known = tf.gather(model.engram_classes, chosen_tasks) > 0  # (batch, classes)
        # Engrams with no recorded classes (e.g. trained outside train_step) predict freely.
        known = tf.logical_or(known, tf.logical_not(tf.reduce_any(known, axis=-1, keepdims=True)))
        return floored_log_softmax(log_probs, known), chosen_tasks

    def _every_engram(self, x, tasks):
        """Every engram's logits (K, batch, classes) and its confidence score (K,
        batch), for the confidences that need each engram's network output."""
        model = self.model
        confidence, batch, k = model.confidence, tf.shape(x)[0], len(tasks)
        if model.execution == "sparse":  # the engrams' sub-networks, stacked
            stacked = StackedEngramSubnetworks(model, tasks)
            # A SavedModel export must not capture the cache: it is transient state.
            cache = model.inference_block_cache()
            if confidence == "excitation":
                return stacked(x, with_excitation=True, cache=cache)
            logits = stacked(x, cache=cache)
        else:
            tiled = tf.tile(x, [k, 1])  # row j*batch + i: sample i under engram tasks[j]
            ids = tf.repeat(tf.constant(tasks, tf.int32), batch)
            if confidence == "excitation":
                logits, score = self._masked_with_excitation(tiled, ids)
                return tf.reshape(logits, [k, batch, model.num_classes]), tf.reshape(score, [k, batch])
            logits = tf.reshape(model.masked_forward(tiled, False, ids), [k, batch, model.num_classes])
        probs = tf.nn.softmax(logits, axis=-1)
        if confidence == "max_softmax":
            return logits, tf.reduce_max(probs, axis=-1)
        return logits, tf.reduce_sum(probs * tf.math.log(probs + 1e-12), axis=-1)  # "entropy": -entropy

    def group_scores(self, x, tasks, with_features=False):
        """(K, batch, classes) router scores g_{s,c}(x) of the engrams `tasks` (and
        first the features f(x), with `with_features`)."""
        discriminant = self.model.task_discriminant
        observed = tf.gather(discriminant.observed_tasks(), tasks)
        check = tf.debugging.Assert(tf.reduce_all(observed), [
            "EngramModel: confidence 'input_lda' needs the input statistics of every engram: "
            "call `model.observe_task_data(train_data)` for each task trained outside "
            "`fit` / `ContinualTrainer` (engrams without statistics:", tf.constant(tasks),
            tf.logical_not(observed), ")"])
        with tf.control_dependencies([check]):
            features = discriminant.transform(x)
            groups = tf.transpose(tf.gather(discriminant.feature_group_scores(features), tasks, axis=1), [1, 0, 2])
        return (features, groups) if with_features else groups

    def _masked_with_excitation(self, x, task_ids):
        """Logits and the excitation on the masked network: the sum over layers of each
        engram's deviation from its units' resting (moving) statistics."""
        model = self.model
        h, total = x, 0.0
        for layer in model.engram_layers:
            h, deviation = layer.call_with_deviation(h, task_ids)
            total += deviation
        return model.classifier_norm(model.classifier(h), training=False), total
