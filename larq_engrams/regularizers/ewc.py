"""Elastic weight consolidation: EWC (Kirkpatrick et al. 2017) and online EWC
(Schwarz et al. 2018), on full-precision weights or on the hidden weights of binary
kernels."""
import tensorflow as tf

from larq_engrams.regularizers.base import ConsolidationPenalty, latent
from larq_engrams.protocol import model_inputs
from larq_engrams.task_inputs import class_mask_table, masked_logits, split_task_inputs

__all__ = ["EWC", "OnlineEWC", "empirical_fisher"]


def empirical_fisher(model, params, dataset, num_samples=200, mask_table=None):
    """F_i = mean over samples of (d log p(y|x) / d theta_i)^2, with the true labels y
    (the empirical Fisher), one sample at a time, model in inference mode.

    `dataset` yields batches of `(x, y)` or `((x, task_id), y)`; in the latter case
    `mask_table` (task x class 0/1) restricts the log-likelihood to the task's classes.
    """
    squares = [tf.zeros(p.shape, p.dtype) for p in params]

    @tf.function(reduce_retracing=True)
    def squared_gradients(x, y):
        x, task_ids = split_task_inputs(x)
        with tf.GradientTape() as tape:
            logits = model(model_inputs(model, x, task_ids), training=False)
            logits = masked_logits(logits, task_ids, mask_table)
            log_likelihood = -tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            log_likelihood = tf.reduce_sum(log_likelihood)
        return [tf.square(g) for g in tape.gradient(log_likelihood, params)]

    count = 0
    for x, y in dataset.unbatch().take(num_samples).batch(1):
        squares = [s + g for s, g in zip(squares, squared_gradients(x, y))]
        count += 1
    if count == 0:
        raise ValueError("empirical_fisher: the dataset is empty.")
    return [s / count for s in squares]


class _FisherPenalty(ConsolidationPenalty):
    def __init__(self, model, strength, num_samples=200, scenario=None):
        super().__init__(model, strength, scenario)
        self.num_samples = int(num_samples)

    def fisher(self, dataset):
        mask_table = None
        if self.scenario is not None and self.scenario.provides_task_id:
            mask_table = tf.constant(class_mask_table(self.scenario))
        return empirical_fisher(self._attached_model, self.penalized_variables, dataset, self.num_samples, mask_table)


class EWC(_FisherPenalty):
    r"""Elastic weight consolidation (Kirkpatrick et al. 2017), one penalty per past task:

    ```
    L_EWC = (lambda / 2) * sum_{t < current} sum_i F_i^t (theta_i - theta*_i^t)^2
    ```

    F^t is the empirical Fisher at the end of task t (`num_samples` samples), theta*^t
    the parameters then. Stored as three running sums, A = sum_t F^t,
    B = sum_t F^t theta*^t, C = sum_t F^t (theta*^t)^2, so that the penalty
    (lambda / 2) * sum_i (A_i theta_i^2 - 2 B_i theta_i + C_i) is exact and its state
    does not grow with the number of tasks.

    Args:
        model: the Keras model; the penalty is attached with `model.add_loss`.
        strength: lambda. Split MNIST defaults in the standard benchmark code
            (van de Ven et al., `param_values.py`): 1e5 task-IL, 1e10 domain-IL,
            1e9 class-IL; permuted MNIST: 100 (see `larq_engrams.methods`).
        num_samples: samples for the empirical Fisher.
        scenario: needed under plain `model.fit` (the trainer sets it).
    """

    def __init__(self, model, strength, num_samples=200, scenario=None):
        super().__init__(model, strength, num_samples, scenario)
        self.fisher_sum, self.weighted_anchor, self.weighted_square = self.state(), self.state(), self.state()

    def checkpoint_variables(self):
        return {"fisher_sum": self.fisher_sum, "weighted_anchor": self.weighted_anchor,
                "weighted_square": self.weighted_square}

    def penalty(self):
        total = tf.add_n([
            tf.reduce_sum(a * tf.square(latent(p)) - 2.0 * b * latent(p) + c)
            for p, a, b, c in zip(self.penalized_variables, self.fisher_sum, self.weighted_anchor, self.weighted_square)
        ])
        return 0.5 * self.strength * total

    def consolidate(self, task, dataset):
        for p, f, a, b, c in zip(self.penalized_variables, self.fisher(dataset), self.fisher_sum,
                                 self.weighted_anchor, self.weighted_square):
            theta = latent(p)
            a.assign_add(f)
            b.assign_add(f * theta)
            c.assign_add(f * tf.square(theta))


class OnlineEWC(_FisherPenalty):
    r"""Online EWC (Schwarz et al. 2018): one running Fisher, decayed by gamma:

    ```
    F~ <- gamma * F~ + F^t,   theta* <- theta (after task t)
    L = (lambda / 2) * sum_i F~_i (theta_i - theta*_i)^2
    ```

    Args:
        gamma: the decay; 1.0 in the standard benchmark code (van de Ven et al.).
        Others as `EWC`.
    """

    def __init__(self, model, strength, gamma=1.0, num_samples=200, scenario=None):
        super().__init__(model, strength, num_samples, scenario)
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"OnlineEWC: `gamma` must be in [0, 1], got {gamma!r}.")
        self.gamma = float(gamma)
        self.running_fisher, self.anchor = self.state(), self.state()

    def checkpoint_variables(self):
        return {"running_fisher": self.running_fisher, "anchor": self.anchor}

    def penalty(self):
        total = tf.add_n([
            tf.reduce_sum(f * tf.square(latent(p) - a))
            for p, f, a in zip(self.penalized_variables, self.running_fisher, self.anchor)
        ])
        return 0.5 * self.strength * total

    def consolidate(self, task, dataset):
        for p, f_new, f, a in zip(self.penalized_variables, self.fisher(dataset), self.running_fisher, self.anchor):
            f.assign(self.gamma * f + f_new)
            a.assign(latent(p))
